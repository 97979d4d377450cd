"""``consortium app``: real ``consortium`` processes build, sign, verify and refuse bundles."""

from __future__ import annotations

import hashlib
import io
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from consortium.apps.bundle import MANIFEST_NAME, SIGNATURE_NAME, write_zip
from consortium.apps.publisher_keys import generate_key, load_private_key
from consortium.apps.signing import build_bundle, sign_bundle

EXE = str(Path(sys.executable).parent / "consortium")
TOML = """[app]
name = "cli-demo"
version = "0.3.0"
server = "demo_app:server_app"
client = "demo_app:client_app"
"""


def consortium(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "app", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def ok(cwd: Path, *args: str) -> str:
    done = consortium(cwd, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def refused(cwd: Path, *args: str, code: int = 11) -> str:
    """The one-line reason of a command that must fail with ``code``."""
    done = consortium(cwd, *args)
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def rezip(path: Path, change: Callable[[dict[str, bytes]], None]) -> None:
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as zf:
        content = {info.filename: zf.read(info) for info in zf.infolist()}
    change(content)
    path.write_bytes(write_zip(content.items()))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with an app, a publisher key, a trusted folder and a signed bundle."""
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "consortium.toml").write_text(TOML)
    (app / "demo_app.py").write_text("server_app = client_app = None\n")
    (app / "pkg" / "model.py").write_text("WEIGHTS = [1, 2, 3]\n")
    # set up in-process (each `consortium` process costs a second); the tests run the CLI
    generate_key(tmp_path / "publisher.key")
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "publisher.pub").write_bytes((tmp_path / "publisher.pub").read_bytes())
    key = load_private_key(tmp_path / "publisher.key")
    (tmp_path / "app.cab").write_bytes(sign_bundle(build_bundle(app), key))
    return tmp_path


def test_help_lists_the_commands(tmp_path: Path) -> None:
    out = ok(tmp_path, "--help")
    for word in ("build", "keygen", "sign", "verify", "CONSORTIUM_PUBLISHER_PASSPHRASE"):
        assert word in out


def test_keygen_build_sign_verify(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "consortium.toml").write_text(TOML)
    out = ok(tmp_path, "keygen", "--out", "publisher.key")
    assert "private key publisher.key" in out and "public key  publisher.pub" in out
    fingerprint = out.split("fingerprint ")[1].strip()
    assert stat.S_IMODE((tmp_path / "publisher.key").stat().st_mode) == 0o600

    out = ok(tmp_path, "build", "app", "-o", "app.cab")
    assert out.startswith("built cli-demo 0.3.0 -> app.cab (")
    unsigned = (tmp_path / "app.cab").read_bytes()
    assert f"sha256 {hashlib.sha256(unsigned).hexdigest()}" in out

    out = ok(tmp_path, "sign", "app.cab", "--key", "publisher.key", "-o", "signed.cab")
    assert f"signed signed.cab with {fingerprint}" in out
    assert (tmp_path / "app.cab").read_bytes() == unsigned  # -o leaves the input alone
    digest = hashlib.sha256((tmp_path / "signed.cab").read_bytes()).hexdigest()

    out = ok(tmp_path, "verify", "signed.cab", "--trusted", "publisher.pub", "--sha256", digest)
    assert out.splitlines() == [
        "app       cli-demo",
        "version   0.3.0",
        f"sha256    {digest}",
        f"publisher {fingerprint} (publisher.pub)",
        "files     1",
        "verified",
    ]


def test_build_is_reproducible(work: Path) -> None:
    ok(work, "build", "app", "-o", "again.cab")
    ok(work, "build", "app", "-o", "again2.cab")
    assert (work / "again.cab").read_bytes() == (work / "again2.cab").read_bytes()


def test_keygen_refuses_to_overwrite(work: Path) -> None:
    line = refused(work, "keygen", "--out", "publisher.key", code=2)
    assert "publisher.key already exists; refusing to overwrite a key" in line


def test_an_unsigned_bundle_is_refused(work: Path) -> None:
    ok(work, "build", "app", "-o", "unsigned.cab")
    line = refused(work, "verify", "unsigned.cab", "--trusted", "trusted")
    assert "refused (unsigned): it has no BUNDLE.sig" in line


def test_a_bundle_signed_by_an_untrusted_key_is_refused(work: Path) -> None:
    ok(work, "keygen", "--out", "stranger.key")
    ok(work, "sign", "app.cab", "--key", "stranger.key")
    line = refused(work, "verify", "app.cab", "--trusted", "trusted")
    assert "refused (untrusted-key): it is signed by sha256:" in line


def test_an_edited_manifest_is_a_bad_signature(work: Path) -> None:
    def bump(content: dict[str, bytes]) -> None:
        content[MANIFEST_NAME] = content[MANIFEST_NAME].replace(b"0.3.0", b"0.3.1")

    rezip(work / "app.cab", bump)
    line = refused(work, "verify", "app.cab", "--trusted", "trusted")
    assert "refused (bad-signature): the signature by sha256:" in line


def test_one_changed_byte_is_refused(work: Path) -> None:
    def flip(content: dict[str, bytes]) -> None:
        content["pkg/model.py"] = content["pkg/model.py"].replace(b"1", b"9")

    rezip(work / "app.cab", flip)
    line = refused(work, "verify", "app.cab", "--trusted", "trusted")
    assert "refused (file-mismatch): 'pkg/model.py' has sha256" in line


def test_added_and_missing_files_are_refused(work: Path) -> None:
    signed = (work / "app.cab").read_bytes()
    rezip(work / "app.cab", lambda c: c.update({"evil.py": b"import os\n"}))
    line = refused(work, "verify", "app.cab", "--trusted", "trusted")
    assert "refused (unlisted-file): 'evil.py' is in the bundle but not the manifest" in line
    (work / "app.cab").write_bytes(signed)

    def remove(content: dict[str, bytes]) -> None:
        del content["demo_app.py"]

    rezip(work / "app.cab", remove)
    line = refused(work, "verify", "app.cab", "--trusted", "trusted")
    assert "refused (missing-file): 'demo_app.py' is in the manifest but not the bundle" in line


def test_a_bundle_other_than_the_pinned_one_is_refused(work: Path) -> None:
    line = refused(work, "verify", "app.cab", "--trusted", "trusted", "--sha256", "0" * 64)
    assert "refused (not-pinned): its sha256 is" in line and f"not the pinned {'0' * 64}" in line


def test_a_zip_bomb_and_a_path_traversal_are_refused(work: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("consortium.toml", TOML)
        zf.writestr("zeros.bin", bytes(300 * 1024 * 1024))  # about 300 KiB compressed
    (work / "bomb.cab").write_bytes(buffer.getvalue())
    line = refused(work, "verify", "bomb.cab", "--trusted", "trusted")
    assert "refused (too-large): 'zeros.bin' expands to 314572800 bytes" in line

    traversal = write_zip([("consortium.toml", TOML.encode()), ("../../evil.py", b"x")])
    (work / "traversal.cab").write_bytes(traversal)
    line = refused(work, "verify", "traversal.cab", "--trusted", "trusted")
    assert "refused (unsafe-path): entry '../../evil.py'" in line
    line = refused(work, "sign", "traversal.cab", "--key", "publisher.key")
    assert "unsafe-path" in line


def test_sign_keeps_the_signature_last_and_unique(work: Path) -> None:
    ok(work, "sign", "app.cab", "--key", "publisher.key")
    with zipfile.ZipFile(work / "app.cab") as zf:
        names = zf.namelist()
    assert names[0] == MANIFEST_NAME and names[-1] == SIGNATURE_NAME
    assert names.count(SIGNATURE_NAME) == 1


def test_a_missing_trusted_folder_is_a_usage_error(work: Path) -> None:
    done = consortium(work, "verify", "app.cab", "--trusted", "nowhere")
    assert done.returncode == 2 and "nowhere" in done.stderr
