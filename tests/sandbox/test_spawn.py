"""Spawning a confined child: it refuses without Landlock, keeps secrets out of reach,
and sheds the parent's environment."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from consortium.core.errors import ConfigError
from consortium.sandbox import spawn as spawn_module
from consortium.sandbox.confine import SandboxLimits, SandboxSpec, landlock_available
from consortium.sandbox.spawn import spawn


def _spec(tmp_path: Path, *, confined: bool = True) -> SandboxSpec:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return SandboxSpec(str(work), limits=SandboxLimits(memory_bytes=2 * 1024**3), confined=confined)


def _probe(tmp_path: Path, spec: SandboxSpec, secret: Path) -> dict[str, object]:
    child = spawn("consortium.sandbox.probe", spec, log_path=tmp_path / "child.log",
                  max_payload=1 << 20)  # fmt: skip
    try:
        child.channel.send("probe", {"paths": [str(secret)]})
        return child.channel.recv(timeout=60).header
    finally:
        child.close()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "server.key"
    path.parent.mkdir()
    path.write_text("SECRET")
    return path


@pytest.mark.skipif(not landlock_available(), reason="needs Linux Landlock")
def test_a_confined_child_cannot_read_a_secret_and_inherits_no_secret_variables(
    tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSORTIUM_DB_PASSWORD", "hunter2")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # the operator's thread limit passes on
    seen = _probe(tmp_path, _spec(tmp_path), secret)

    assert seen["reads"] == {str(secret): "PermissionError"}
    assert "CONSORTIUM_DB_PASSWORD" not in seen["env"]  # type: ignore[operator]
    assert "OPENBLAS_NUM_THREADS" in seen["env"]  # type: ignore[operator]
    assert seen["nofile"] == SandboxLimits().open_files


def test_a_child_cannot_write_a_file_larger_than_its_limit(tmp_path: Path) -> None:
    """RLIMIT_FSIZE: an app cannot leave a checkpoint bigger than the parent will read."""
    work = tmp_path / "work"
    work.mkdir()
    limits = SandboxLimits(memory_bytes=2 * 1024**3, file_bytes=4 << 20)
    spec = SandboxSpec(str(work), limits=limits, confined=False)

    def write(size: int) -> object:
        child = spawn("consortium.sandbox.probe", spec, log_path=tmp_path / "child.log",
                      max_payload=1 << 20)  # fmt: skip
        try:
            child.channel.send("probe", {"paths": [], "write_bytes": size})
            return child.channel.recv(timeout=60).header["write"]
        finally:
            child.close()

    assert write(4 << 20) == "wrote"
    assert write((4 << 20) + 1) == f"OSError:{errno.EFBIG}"


def test_an_unconfined_child_is_the_development_escape_hatch(tmp_path: Path, secret: Path) -> None:
    """The positive control: without Landlock the same probe reads the key."""
    seen = _probe(tmp_path, _spec(tmp_path, confined=False), secret)

    assert seen["reads"] == {str(secret): "read"}


def test_without_landlock_a_confined_spawn_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spawn_module, "landlock_available", lambda: False)
    with pytest.raises(ConfigError, match="cannot confine apps"):
        spawn("consortium.sandbox.probe", _spec(tmp_path), log_path=tmp_path / "log",
              max_payload=1024)  # fmt: skip


def test_a_secret_inside_a_readable_tree_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="which a sandboxed app may read"):
        spawn("consortium.sandbox.probe", _spec(tmp_path), log_path=tmp_path / "log",
              max_payload=1024, secrets=[Path(os.__file__)])  # fmt: skip


@pytest.mark.skipif(not landlock_available(), reason="needs Linux Landlock")
def test_relative_paths_mean_the_callers_folder_not_the_childs(
    tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`consortium server --workdir server-data` (relative) once broke every run: the child
    starts in its workdir, where the same relative path names nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel" / "work").mkdir(parents=True)
    spec = SandboxSpec("rel/work", limits=SandboxLimits(memory_bytes=2 * 1024**3))
    seen = _probe(tmp_path, spec, secret)

    assert seen["reads"] == {str(secret): "PermissionError"}
