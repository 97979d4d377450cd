"""deploy/systemd: the server and node units, their hardening and their command lines.

The units are parsed here (systemd's syntax: sections, continued lines, repeated
keys), their hardening options checked, their ``ExecStart`` parsed by the real CLI
with the config file it names (deploy/systemd/server.toml, node.toml), and, where
``systemd-analyze`` exists, verified by systemd itself and scored by
``systemd-analyze security --offline``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import click
import pytest

from .cli_args import parse

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = ("consortium-server.service", "consortium-node@.service")
INSTANCE = "va"
#: each unit's config file: where it is installed, and the example in deploy/systemd
CONFIG_FILES = {
    "consortium-server.service": ("/etc/consortium/server/server.toml", "server.toml"),
    "consortium-node@.service": (f"/etc/consortium/node/{INSTANCE}/node.toml", "node.toml"),
}
#: systemd-analyze security's exposure score (0 best, 10 worst) the units must stay under
MAX_EXPOSURE = 2.5
LANDLOCK = {"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"}

Unit = dict[str, dict[str, list[str]]]


def read_unit(path: Path) -> Unit:
    """Sections -> key -> every value given (systemd keys may repeat)."""
    unit: Unit = defaultdict(lambda: defaultdict(list))
    section = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        assert section is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        unit[section][key.strip()].append(value.strip())
    return unit


@pytest.fixture(params=UNITS)
def unit(request: pytest.FixtureRequest) -> tuple[str, Unit]:
    name = str(request.param)
    return name, read_unit(SYSTEMD / name)


def last(unit: Unit, key: str) -> str:
    values = unit["Service"][key]
    assert values, f"[Service] has no {key}="
    return values[-1]


def test_hardening(unit: tuple[str, Unit]) -> None:
    name, parsed = unit
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "User": "consortium",
    }
    for key, value in expected.items():
        assert last(parsed, key) == value, f"{name}: {key}"
    families = set(last(parsed, "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}, name
    filters = parsed["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service" and not any(f.startswith("~") for f in filters)
    # the app sandbox needs Landlock; older systemd has these in no group
    assert {s for f in filters for s in f.split()} >= LANDLOCK, name


def exec_args(name: str, parsed: Unit) -> list[str]:
    """ExecStart as the CLI receives it: %i expanded as systemd would."""
    line = last(parsed, "ExecStart").replace("%i", INSTANCE)
    assert "$" not in line, f"{name}: settings belong in the config file, not ${{VARS}}"
    args = shlex.split(line)
    assert Path(args[0]).name == "consortium", f"{name}: runs {args[0]}"
    return args[1:]


def test_exec_start_parses_with_the_cli(unit: tuple[str, Unit], tmp_path: Path) -> None:
    name, parsed = unit
    args = exec_args(name, parsed)
    deployed, example = CONFIG_FILES[name]
    assert args[args.index("--config-file") + 1] == deployed, name
    try:
        command, params = parse(args, tmp_path, {deployed: (SYSTEMD / example).read_text()})
    except click.ClickException as exc:
        pytest.fail(f"{name}: consortium {' '.join(args)}: {exc.format_message()}")
    assert command == ("consortium server" if "server" in name else "consortium node")
    # it may write only its own state folder, and reads its keys from /etc/consortium
    writable = last(parsed, "ReadWritePaths").replace("%i", INSTANCE)
    state = params["workdir"] if "server" in name else params["work_dir"]
    assert str(state).replace(str(tmp_path), "") == writable
    credentials = str(params["credentials"]).replace(str(tmp_path), "")
    readable = last(parsed, "ReadOnlyPaths").replace("%i", INSTANCE)
    assert credentials.startswith(readable + "/")
    assert deployed.startswith(readable + "/"), "its config file is read-only to it"
    if "node" in name:
        assert params["policy_file"] and params["node_config"] == ('center="cleveland"',)


def test_the_node_may_have_an_env_file_overriding_its_config_file() -> None:
    parsed = read_unit(SYSTEMD / "consortium-node@.service")
    # "-": optional; CONSORTIUM_NODE_<KEY> there overrides node.toml
    assert last(parsed, "EnvironmentFile") == "-/etc/consortium/node/%i/node.env"
    header = (SYSTEMD / "consortium-node@.service").read_text().split("[Unit]")[0]
    assert "node.toml" in header and "node.env" in header, "document both files"


def analyzable(tmp_path: Path, name: str) -> Path:
    """A copy of the unit whose ExecStart is the installed CLI (systemd checks it exists)."""
    text = (SYSTEMD / name).read_text()
    text = text.replace(
        "/opt/consortium/bin/consortium", str(Path(sys.executable).parent / "consortium")
    )
    target = tmp_path / name.replace("@.", f"@{INSTANCE}.")
    target.write_text(text)
    return target


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_units(unit: tuple[str, Unit], tmp_path: Path) -> None:
    name, _ = unit
    path = analyzable(tmp_path, name)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(path)], capture_output=True, text=True
    )
    if "--offline" in security.stderr:
        pytest.skip("this systemd-analyze cannot score a unit file offline")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert match, security.stdout[-2000:] + security.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, security.stdout
