"""Bundle limits: hostile archives are refused in memory, before anything reaches the disk."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from consortium.apps.bundle import (
    DEFAULT_LIMITS,
    MIB,
    BundleLimits,
    BundleRejected,
    extract_bundle,
    scan_bundle,
    write_zip,
)

TOML = b'[app]\nname = "x"\nversion = "1"\nserver = "a:b"\nclient = "a:c"\n'


def raw_zip(*members: tuple[str, bytes, int]) -> bytes:
    """A zip whose entries have exactly the given names and Unix mode bits."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buffer.getvalue()


def declare_size(bundle: bytes, name: str, size: int) -> bytes:
    """Rewrite the uncompressed size the central directory declares for ``name``."""
    data = bytearray(bundle)
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        (length,) = struct.unpack_from("<H", data, at + 28)
        if data[at + 46 : at + 46 + length] == name.encode():
            struct.pack_into("<I", data, at + 24, size)
            return bytes(data)
        at += 4
    raise AssertionError(f"{name} not in the central directory")


def refused_without_writing(bundle: bytes, target: Path, reason: str, limits: BundleLimits) -> str:
    with pytest.raises(BundleRejected) as info:
        extract_bundle(bundle, target, limits)
    assert info.value.reason == reason, str(info.value)
    assert not target.exists(), "a refused bundle must not create its target"
    return str(info.value)


def test_the_defaults_are_documented_values() -> None:
    documented = BundleLimits(
        max_bundle_bytes=256 * MIB,
        max_total_bytes=1024 * MIB,
        max_files=10_000,
        max_file_bytes=256 * MIB,
        max_path_depth=32,
        max_path_length=1024,
    )
    assert documented == DEFAULT_LIMITS


def test_a_zip_bomb_of_zeros_over_the_uncompressed_limit_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("consortium.toml", TOML)
        for part in range(5):  # 5 x 240 MiB of zeros, about 1 MiB compressed each
            with zf.open(f"zeros{part}.bin", "w") as member:
                block = bytes(16 * MIB)
                for _ in range(15):
                    member.write(block)
    bomb = buffer.getvalue()
    assert len(bomb) < 10 * MIB
    message = refused_without_writing(bomb, tmp_path / "out", "too-large", DEFAULT_LIMITS)
    assert "the files expand to more than the 1024 MiB limit" in message


def test_a_member_declaring_gigabytes_is_refused_from_its_declaration(tmp_path: Path) -> None:
    bundle = declare_size(raw_zip(("consortium.toml", TOML, 0o100644)), "consortium.toml",
                          0xFFFFFFFE)  # fmt: skip
    message = refused_without_writing(bundle, tmp_path / "out", "too-large", DEFAULT_LIMITS)
    assert "'consortium.toml' expands to 4294967294 bytes" in message


def test_a_member_that_lies_about_its_size_is_stopped_at_the_declared_size(
    tmp_path: Path,
) -> None:
    bundle = raw_zip(("consortium.toml", TOML, 0o100644), ("data.bin", bytes(10 * MIB), 0o100644))
    lying = declare_size(bundle, "data.bin", 10)
    with pytest.raises(BundleRejected, match=r"'data\.bin' does not match its declared size"):
        extract_bundle(lying, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name",
    [
        "/etc/cron.d/evil",
        "../evil.py",
        "app/../../evil.py",
        "..\\evil.py",
        "C:/evil.py",
        "a//b",
        "./a.py",
    ],
)
def test_unsafe_paths_are_refused(tmp_path: Path, name: str) -> None:
    bundle = raw_zip(("consortium.toml", TOML, 0o100644), (name, b"x", 0o100644))
    message = refused_without_writing(bundle, tmp_path / "out", "unsafe-path", DEFAULT_LIMITS)
    assert repr(name) in message


@pytest.mark.parametrize(
    ("mode", "what"),
    [
        (stat.S_IFLNK | 0o777, "symbolic link"),
        (stat.S_IFCHR | 0o666, "not a regular file"),
        (stat.S_IFBLK | 0o666, "not a regular file"),
        (stat.S_IFIFO | 0o666, "not a regular file"),
        (stat.S_IFSOCK | 0o666, "not a regular file"),
    ],
)
def test_links_and_devices_are_refused(tmp_path: Path, mode: int, what: str) -> None:
    bundle = raw_zip(("consortium.toml", TOML, 0o100644), ("link", b"/etc/passwd", mode))
    message = refused_without_writing(bundle, tmp_path / "out", "unsafe-entry", DEFAULT_LIMITS)
    assert what in message


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(
    ("names", "what"),
    [
        (["a.py", "a.py"], "appears twice"),
        (["A.py", "a.py"], "appears twice"),
        (["a", "a/b.py"], "is both a file and a folder"),
    ],
)
def test_duplicate_names_are_refused(tmp_path: Path, names: list[str], what: str) -> None:
    members = [("consortium.toml", TOML, 0o100644)] + [(n, b"x", 0o100644) for n in names]
    message = refused_without_writing(
        raw_zip(*members), tmp_path / "out", "duplicate", DEFAULT_LIMITS
    )
    assert what in message


def test_count_size_and_path_limits(tmp_path: Path) -> None:
    files = [("consortium.toml", TOML)] + [(f"f{i}.py", b"x" * 100) for i in range(5)]
    bundle = write_zip(files)
    out = tmp_path / "out"
    assert "6 entries, over the limit of 5" in refused_without_writing(
        bundle, out, "too-large", BundleLimits(max_files=5)
    )
    assert "over the 99 bytes per-file limit" in refused_without_writing(
        bundle, out, "too-large", BundleLimits(max_file_bytes=99)
    )
    assert "expand to more than the 300 bytes limit" in refused_without_writing(
        bundle, out, "too-large", BundleLimits(max_total_bytes=300)
    )
    assert f"the bundle is {len(bundle)} bytes" in refused_without_writing(
        bundle, out, "too-large", BundleLimits(max_bundle_bytes=len(bundle) - 1)
    )
    deep = write_zip([("consortium.toml", TOML), ("a/b/c/d.py", b"")])
    assert "4 levels deep, over the limit of 3" in refused_without_writing(
        deep, out, "unsafe-path", BundleLimits(max_path_depth=3)
    )
    assert "over the limit of 5" in refused_without_writing(
        deep, out, "unsafe-path", BundleLimits(max_path_length=5)
    )
    long = write_zip([("consortium.toml", TOML), ("x" * 256, b"")])
    assert "component over 255 bytes" in refused_without_writing(
        long, out, "unsafe-path", DEFAULT_LIMITS
    )


def test_encrypted_and_exotic_entries_are_refused(tmp_path: Path) -> None:
    bundle = bytearray(raw_zip(("consortium.toml", TOML, 0o100644)))
    central = bundle.find(b"PK\x01\x02")
    bundle[central + 8] |= 0x01  # the encrypted flag
    message = refused_without_writing(
        bytes(bundle), tmp_path / "out", "unsafe-entry", DEFAULT_LIMITS
    )
    assert "is encrypted" in message
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("consortium.toml", TOML)
    message = refused_without_writing(buffer.getvalue(), tmp_path / "out", "unsafe-entry",
                                      DEFAULT_LIMITS)  # fmt: skip
    assert "compression method 12" in message


def test_garbage_and_app_less_bundles_are_refused(tmp_path: Path) -> None:
    refused_without_writing(b"not a zip at all", tmp_path / "out", "not-a-zip", DEFAULT_LIMITS)
    no_app = write_zip([("main.py", b"print('hi')\n")])
    message = refused_without_writing(no_app, tmp_path / "out", "no-app", DEFAULT_LIMITS)
    assert "no consortium.toml" in message


def test_a_good_bundle_extracts_into_an_existing_folder(tmp_path: Path) -> None:
    bundle = write_zip([("consortium.toml", TOML), ("pkg/m.py", b"A = 1\n")])
    (tmp_path / "out").mkdir()
    target = extract_bundle(bundle, tmp_path / "out")
    assert (target / "pkg" / "m.py").read_bytes() == b"A = 1\n"
    scanned = scan_bundle(bundle, keep=["pkg/m.py"])
    assert scanned.kept == {"pkg/m.py": b"A = 1\n"} and set(scanned.files) == {
        "consortium.toml",
        "pkg/m.py",
    }
