"""Signed bundles: reproducible builds, keys, and every reason verification refuses one."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from consortium.apps.bundle import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleLimits,
    BundleRejected,
    extract_bundle,
    make_bundle,
    write_zip,
)
from consortium.apps.publisher_keys import (
    PrivateKey,
    PublicKey,
    generate_key,
    load_private_key,
    load_public_key,
    load_trusted_keys,
)
from consortium.apps.signing import build_bundle, sign_bundle, verify_bundle
from consortium.core.errors import ConfigError, SecurityError

TOML = """[app]
name = "signed-demo"
version = "2.1.0"
server = "demo_app:server_app"
client = "demo_app:client_app"
"""


def make_app(root: Path) -> Path:
    """A small app folder: manifest, code in a package, some data, and junk to skip."""
    (root / "pkg").mkdir(parents=True)
    (root / "consortium.toml").write_text(TOML)
    (root / "demo_app.py").write_text("server_app = client_app = None\n")
    (root / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 4)
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "demo_app.cpython-311.pyc").write_bytes(b"junk")
    (root / "old.cab").write_bytes(b"an earlier build")
    return root


def keypair(folder: Path, name: str = "publisher") -> tuple[PrivateKey, PublicKey]:
    folder.mkdir(parents=True, exist_ok=True)
    public = generate_key(folder / f"{name}.key")
    return load_private_key(folder / f"{name}.key"), public


def entries(bundle: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def rezip(bundle: bytes, change: Callable[[dict[str, bytes]], None]) -> bytes:
    """The bundle's entries, changed in place by ``change``, zipped again (valid CRCs)."""
    content = entries(bundle)
    change(content)
    return write_zip(content.items())


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return make_app(tmp_path / "app")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[PrivateKey, PublicKey]:
    return keypair(tmp_path / "keys")


@pytest.fixture
def signed(app_dir: Path, keys: tuple[PrivateKey, PublicKey]) -> bytes:
    return sign_bundle(build_bundle(app_dir), keys[0])


def refused(reason: str, call: Callable[[], object]) -> str:
    with pytest.raises(BundleRejected) as info:
        call()
    assert info.value.reason == reason, str(info.value)
    assert isinstance(info.value, SecurityError) and info.value.exit_code == 11
    assert "\n" not in str(info.value)
    return str(info.value)


# --- building ---------------------------------------------------------------------------


def test_the_same_folder_gives_the_same_bytes_wherever_and_whenever(
    app_dir: Path, tmp_path: Path
) -> None:
    first = build_bundle(app_dir)
    copy = make_app(tmp_path / "elsewhere" / "copy")
    for path in copy.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
        if path.is_file():
            path.chmod(0o600)
    assert build_bundle(copy) == first == build_bundle(app_dir)
    assert make_bundle(app_dir) == first


def test_the_archive_is_sorted_with_fixed_metadata_and_a_manifest_of_every_file(
    app_dir: Path,
) -> None:
    bundle = build_bundle(app_dir)
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        infos = zf.infolist()
        names = [info.filename for info in infos]
        assert names == [MANIFEST_NAME, "consortium.toml", "demo_app.py", "pkg/__init__.py",
                         "pkg/data.bin"]  # fmt: skip
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.external_attr >> 16 == stat.S_IFREG | 0o644
            assert info.create_system == 3 and info.extra == b"" and info.comment == b""
        manifest = json.loads(zf.read(MANIFEST_NAME))
    assert manifest["format"] == "consortium-bundle/1"
    assert manifest["app"] == {"name": "signed-demo", "version": "2.1.0"}
    data = (app_dir / "pkg" / "data.bin").read_bytes()
    assert {"path": "pkg/data.bin", "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()} in manifest["files"]  # fmt: skip
    assert len(manifest["files"]) == 4


def test_build_refuses_keys_links_and_reserved_names(app_dir: Path, tmp_path: Path) -> None:
    (app_dir / "publisher.key").write_text("secret")
    with pytest.raises(ConfigError, match="looks like a private key"):
        build_bundle(app_dir)
    (app_dir / "publisher.key").unlink()
    (app_dir / "link.py").symlink_to(tmp_path / "outside.py")
    with pytest.raises(ConfigError, match="symbolic link"):
        build_bundle(app_dir)
    (app_dir / "link.py").unlink()
    (app_dir / SIGNATURE_NAME).write_text("{}")
    with pytest.raises(ConfigError, match="reserved name"):
        build_bundle(app_dir)


def test_build_needs_an_app_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"consortium\.toml"):
        build_bundle(tmp_path)


# --- keys -------------------------------------------------------------------------------


def test_generate_key_writes_a_private_key_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    public = generate_key(tmp_path / "publisher.key")
    assert stat.S_IMODE((tmp_path / "publisher.key").stat().st_mode) == 0o600
    assert (tmp_path / "publisher.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert load_public_key(tmp_path / "publisher.pub").fingerprint == public.fingerprint
    assert load_private_key(tmp_path / "publisher.key").public.raw == public.raw
    assert public.fingerprint.startswith("sha256:") and len(public.fingerprint) == 71
    with pytest.raises(ConfigError, match="already exists"):
        generate_key(tmp_path / "publisher.key")
    (tmp_path / "other.pub").write_text("x")
    with pytest.raises(ConfigError, match=r"other\.pub already exists"):
        generate_key(tmp_path / "other.key")
    assert not (tmp_path / "other.key").exists()


def test_a_private_key_others_can_read_is_refused(tmp_path: Path) -> None:
    generate_key(tmp_path / "publisher.key")
    (tmp_path / "publisher.key").chmod(0o644)
    with pytest.raises(SecurityError, match="readable by other users"):
        load_private_key(tmp_path / "publisher.key")


def test_an_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    generate_key(tmp_path / "p.key", passphrase=b"correct horse")
    assert b"ENCRYPTED" in (tmp_path / "p.key").read_bytes()
    load_private_key(tmp_path / "p.key", passphrase=b"correct horse")
    with pytest.raises(ConfigError, match="not a readable private key"):
        load_private_key(tmp_path / "p.key")


def test_trusted_keys_come_from_a_folder_of_pub_files(tmp_path: Path) -> None:
    keypair(tmp_path / "a", "alice")
    keypair(tmp_path / "a", "bob")
    assert [Path(k.source).name for k in load_trusted_keys(tmp_path / "a")] == [
        "alice.pub",
        "bob.pub",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no trusted publisher keys"):
        load_trusted_keys(tmp_path / "empty")


# --- signing and verifying --------------------------------------------------------------


def test_a_signed_bundle_verifies_and_says_what_it_is(
    signed: bytes, keys: tuple[PrivateKey, PublicKey], tmp_path: Path
) -> None:
    _, public = keys
    other = keypair(tmp_path / "other")[1]
    verified = verify_bundle(
        signed, [other, public], pinned_sha256=hashlib.sha256(signed).hexdigest()
    )
    assert (verified.app_name, verified.app_version) == ("signed-demo", "2.1.0")
    assert verified.sha256 == hashlib.sha256(signed).hexdigest()
    assert verified.publisher == public.fingerprint
    assert [f.path for f in verified.files] == ["consortium.toml", "demo_app.py",
                                                "pkg/__init__.py", "pkg/data.bin"]  # fmt: skip
    names = list(entries(signed))
    assert names[0] == MANIFEST_NAME and names[-1] == SIGNATURE_NAME


def test_signing_is_deterministic_and_resigning_replaces_the_signature(
    app_dir: Path, signed: bytes, keys: tuple[PrivateKey, PublicKey], tmp_path: Path
) -> None:
    assert sign_bundle(build_bundle(app_dir), keys[0]) == signed
    assert sign_bundle(signed, keys[0]) == signed
    other_private, other_public = keypair(tmp_path / "other")
    resigned = sign_bundle(signed, other_private)
    assert list(entries(resigned)).count(SIGNATURE_NAME) == 1
    assert verify_bundle(resigned, [other_public]).publisher == other_public.fingerprint
    refused("untrusted-key", lambda: verify_bundle(resigned, [keys[1]]))


def test_an_unsigned_bundle_is_refused(app_dir: Path, keys: tuple[PrivateKey, PublicKey]) -> None:
    message = refused("unsigned", lambda: verify_bundle(build_bundle(app_dir), [keys[1]]))
    assert "no BUNDLE.sig" in message
    legacy = write_zip([("consortium.toml", TOML.encode())])
    assert "no BUNDLE.json" in refused("unsigned", lambda: verify_bundle(legacy, [keys[1]]))


def test_a_bundle_signed_by_an_untrusted_key_is_refused(
    signed: bytes, keys: tuple[PrivateKey, PublicKey], tmp_path: Path
) -> None:
    stranger = keypair(tmp_path / "stranger")[1]
    message = refused("untrusted-key", lambda: verify_bundle(signed, [stranger]))
    assert keys[1].fingerprint in message and "not one of the 1 trusted keys" in message


def test_an_edited_manifest_breaks_the_signature(
    signed: bytes, keys: tuple[PrivateKey, PublicKey]
) -> None:
    def bump(content: dict[str, bytes]) -> None:
        content[MANIFEST_NAME] = content[MANIFEST_NAME].replace(b"2.1.0", b"2.1.1")

    message = refused("bad-signature", lambda: verify_bundle(rezip(signed, bump), [keys[1]]))
    assert "does not match BUNDLE.json" in message

    def garble(content: dict[str, bytes]) -> None:
        content[SIGNATURE_NAME] = b'{"algorithm": "rsa"}'

    refused("bad-signature", lambda: verify_bundle(rezip(signed, garble), [keys[1]]))


def test_one_changed_byte_in_a_file_is_refused(
    signed: bytes, keys: tuple[PrivateKey, PublicKey]
) -> None:
    def flip(content: dict[str, bytes]) -> None:
        data = bytearray(content["pkg/data.bin"])
        data[100] ^= 0x01
        content["pkg/data.bin"] = bytes(data)

    message = refused("file-mismatch", lambda: verify_bundle(rezip(signed, flip), [keys[1]]))
    assert "'pkg/data.bin' has sha256" in message and "the manifest says" in message


def test_a_changed_byte_anywhere_in_the_archive_never_changes_what_verifies(
    signed: bytes, keys: tuple[PrivateKey, PublicKey]
) -> None:
    """Bytes of the zip container outside the files (a header's version field) are not
    signed: such a change still verifies, with identical content; pinning refuses it."""
    original = verify_bundle(signed, [keys[1]])
    refusals = 0
    for offset in range(len(signed)):
        damaged = bytearray(signed)
        damaged[offset] ^= 0x01
        try:
            verified = verify_bundle(bytes(damaged), [keys[1]])
        except SecurityError:
            refusals += 1
            continue
        assert verified.files == original.files and verified.app_name == original.app_name
        with pytest.raises(BundleRejected, match="not-pinned"):
            verify_bundle(bytes(damaged), [keys[1]], pinned_sha256=original.sha256)
    assert refusals > len(signed) // 2  # every byte of file data, names and manifest


def test_added_and_missing_files_are_refused(
    signed: bytes, keys: tuple[PrivateKey, PublicKey]
) -> None:
    def add(content: dict[str, bytes]) -> None:
        content["pkg/evil.py"] = b"import os\n"

    def remove(content: dict[str, bytes]) -> None:
        del content["demo_app.py"]

    message = refused("unlisted-file", lambda: verify_bundle(rezip(signed, add), [keys[1]]))
    assert "'pkg/evil.py' is in the bundle but not the manifest" in message
    message = refused("missing-file", lambda: verify_bundle(rezip(signed, remove), [keys[1]]))
    assert "'demo_app.py' is in the manifest but not the bundle" in message


def test_a_bundle_that_is_not_the_pinned_one_is_refused(
    app_dir: Path, signed: bytes, keys: tuple[PrivateKey, PublicKey]
) -> None:
    (app_dir / "demo_app.py").write_text("server_app = client_app = 'v2'\n")
    newer = sign_bundle(build_bundle(app_dir), keys[0])
    verify_bundle(newer, [keys[1]])  # validly signed: only the pin refuses it
    pin = hashlib.sha256(signed).hexdigest()
    message = refused("not-pinned", lambda: verify_bundle(newer, [keys[1]], pinned_sha256=pin))
    assert f"not the pinned {pin}" in message
    assert verify_bundle(signed, [keys[1]], pinned_sha256=pin.upper()).sha256 == pin
    with pytest.raises(ConfigError, match="64 hex digits"):
        verify_bundle(signed, [keys[1]], pinned_sha256="abc")


def test_verifying_writes_nothing_and_extracting_a_verified_bundle_gives_the_folder(
    signed: bytes, app_dir: Path, tmp_path: Path
) -> None:
    target = extract_bundle(signed, tmp_path / "out" / "app")
    for rel in ("consortium.toml", "demo_app.py", "pkg/__init__.py", "pkg/data.bin"):
        assert (target / rel).read_bytes() == (app_dir / rel).read_bytes()
        assert stat.S_IMODE((target / rel).stat().st_mode) == 0o644
    assert not (target / "__pycache__").exists() and not (target / "old.cab").exists()


def test_a_100_mib_app_builds_signs_verifies_and_extracts(
    tmp_path: Path, keys: tuple[PrivateKey, PublicKey]
) -> None:
    app = make_app(tmp_path / "big")
    data = os.urandom(100 * 1024 * 1024)  # incompressible
    (app / "pkg" / "weights.bin").write_bytes(data)
    bundle = sign_bundle(build_bundle(app), keys[0])
    assert len(bundle) > 100 * 1024 * 1024
    verified = verify_bundle(bundle, [keys[1]])
    assert "pkg/weights.bin" in [f.path for f in verified.files]
    target = extract_bundle(bundle, tmp_path / "out")
    assert hashlib.sha256((target / "pkg" / "weights.bin").read_bytes()).digest() == (
        hashlib.sha256(data).digest()
    )


def test_build_refuses_a_folder_over_the_limits(app_dir: Path) -> None:
    with pytest.raises(ConfigError, match="4 files, over the limit of 3"):
        build_bundle(app_dir, BundleLimits(max_files=3))
    with pytest.raises(ConfigError, match="over the 1000 bytes per-file limit"):
        build_bundle(app_dir, BundleLimits(max_file_bytes=1000))
    with pytest.raises(ConfigError, match="over the 1100 bytes limit"):
        build_bundle(app_dir, BundleLimits(max_total_bytes=1100))


def test_generate_key_creates_its_folder_private_to_its_owner(tmp_path: Path) -> None:
    generate_key(tmp_path / "publisher" / "publisher.key")
    assert stat.S_IMODE((tmp_path / "publisher").stat().st_mode) == 0o700
    assert (tmp_path / "publisher" / "publisher.pub").exists()
