"""Configuration files for `consortium server` and `consortium node` (docs/configuration.md).

Errors run through the real entry point (``consortium.cli.main.main``) in process,
so the exit code and the one-line message are what a user sees; which value wins
is read off the parsed click context (``make_context``: the command is parsed, not
started) with the source click records for each parameter.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.core import ParameterSource

from consortium.apps.manifest import parse_override
from consortium.cli.main import main
from consortium.cli.node_cmd import node
from consortium.cli.server_cmd import server

SERVER_TOML = """
[server]
address = "0.0.0.0:9092"
allow = ["cleveland", "va"]
heartbeat = 3
tracking = false
workdir = "state"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``consortium ARGS`` in process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def parsed(command: click.Command, *args: str) -> click.Context:
    return command.make_context(str(command.name), list(args))


# -- unknown keys and wrong types: exit 2, naming the key --------------------------------
@pytest.mark.parametrize(
    ("section", "key", "meant"),
    [("server", "ca_dir", "ca-dir"), ("server", "alow", "allow"), ("node", "workdir", "work-dir"),
     ("node", "send-error", "send-errors")],
)  # fmt: skip
def test_an_unknown_key_is_refused_with_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, key: str, meant: str
) -> None:
    path = write(tmp_path, f"{section}.toml", f'[{section}]\n{key} = "x"\n')
    for args in (["config", "check", str(path)], [section, "--config-file", str(path)]):
        code, _, err = cli(capsys, *args)
        assert code == 2, (args, err)
        assert f"unknown key {key!r} in {path} [{section}]; did you mean {meant!r}?" in err


def test_an_unknown_key_far_from_any_gets_no_guess(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "server.toml", "[server]\nzzzzzz = 1\n")
    code, _, err = cli(capsys, "config", "check", str(path))
    assert code == 2 and "unknown key 'zzzzzz'" in err and "did you mean" not in err


def test_keys_outside_a_table_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "server.toml", 'address = "0.0.0.0:9092"\n[servr]\n')
    code, _, err = cli(capsys, "server", "--config-file", str(path))
    assert code == 2 and "unknown key 'address' at the top of" in err
    path.write_text("[servr]\nheartbeat = 2\n")
    code, _, err = cli(capsys, "config", "check", str(path))
    assert code == 2 and "did you mean [server]?" in err


@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        ("server", 'heartbeat = "2s"', "heartbeat: expected number, got a string '2s'"),
        ("server", "heartbeat = true", "heartbeat: expected number, got a boolean True"),
        ("server", 'allow = "cleveland"', "allow: expected list of strings, got a string"),
        ("server", "allow = [1, 2]", "allow: expected list of strings, got a list [1, 2]"),
        ("server", 'tracking = "no"', "tracking: expected boolean, got a string 'no'"),
        ("server", "max-message-mb = 1.5", "max-message-mb: expected integer, got a number 1.5"),
        ("server", "address = 9092", "address: expected string, got an integer 9092"),
        ("node", 'config = "center=va"', "config: expected table of key = value, got a string"),
        ("node", "config = { a = { b = 1 } }", "config: expected table of key = value"),
        ("node", "config = { when = 2024-01-01 }", "config: expected table of key = value"),
        ("node", "work-dir = []", "work-dir: expected path to a folder, got a list []"),
    ],
)
def test_a_wrong_type_names_the_key_and_the_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, line: str, expected: str
) -> None:
    path = write(tmp_path, "f.toml", f"[{section}]\n{line}\n")
    code, _, err = cli(capsys, "config", "check", str(path))
    assert code == 2, err
    assert f"{path} [{section}] {expected}" in err


@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        ("server", "transfer-budget-mb = 0", "transfer-budget-mb: 0 is not in the range x>=1"),
        ("server", "state-timeout = 0", "state-timeout: 0.0 is not in the range x>0"),
        ("node", 'send-errors = "all"', "send-errors: 'all' is not one of"),
        ("node", 'credentials = "nowhere"', "credentials: Directory"),
        ("server", 'allow-file = "."', "allow-file: File"),
    ],
)
def test_a_bad_value_is_checked_by_the_option_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, line: str, expected: str
) -> None:
    path = write(tmp_path, "f.toml", f"[{section}]\n{line}\n")
    code, _, err = cli(capsys, "config", "check", str(path))
    assert code == 2 and f"[{section}] {expected}" in err, err


def test_a_password_in_a_url_is_refused_but_the_url_without_one_is_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = 'state = "postgresql+psycopg://consortium:hunter2@db:5432/consortium"'
    path = write(tmp_path, "server.toml", f"[server]\nallow = ['va']\n{secret}\n")
    code, _, err = cli(capsys, "config", "check", str(path))
    assert code == 2 and "state: the URL carries a password" in err and "PGPASSWORD" in err
    assert "hunter2" not in err  # the refusal does not print the secret it refuses
    assert "CONSORTIUM_SERVER_STATE" in err
    # in any key, even in a list (a wrong type, whose message would quote it)
    for line in ("state = ['postgresql://u:hunter2@db/c']",
                 "tracking-uri = 'https://u:hunter2@mlflow.internal'"):  # fmt: skip
        path.write_text(f"[server]\n{line}\n")
        code, _, err = cli(capsys, "config", "check", str(path))
        assert code == 2 and "carries a password" in err and "hunter2" not in err, err
    node_toml = write(tmp_path, "node.toml", "[node.config]\ndb = 'postgresql://u:hunter2@db/c'\n")
    code, _, err = cli(capsys, "config", "check", str(node_toml))
    assert code == 2 and "[node] config: the URL carries a password" in err
    path.write_text("[server]\nallow = ['va']\nstate = 'postgresql+psycopg://consortium@db/c'\n")
    code, out, err = cli(capsys, "config", "check", str(path))
    assert code == 0, err
    assert "state = postgresql+psycopg://consortium@db/c  (file)" in out


def test_not_toml_and_the_wrong_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "server.toml", "[server\naddress = 1\n")
    code, _, err = cli(capsys, "server", "--config-file", str(path))
    assert code == 2 and "is not valid TOML" in err and "line 1" in err
    node_only = write(tmp_path, "node.toml", '[node]\nserver = "h:1"\n')
    code, _, err = cli(capsys, "server", "--config-file", str(node_only))
    assert code == 2 and "has no [server] table (it has [node])" in err


# -- which value wins: flag > environment > file > default --------------------------------
def test_the_file_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "server.toml", SERVER_TOML)
    with parsed(server, "--config-file", str(path)) as ctx:
        assert ctx.params["address"] == "0.0.0.0:9092"
        assert ctx.params["allow"] == ("cleveland", "va")
        assert ctx.params["heartbeat"] == 3.0 and ctx.params["tracking"] is False
        assert ctx.get_parameter_source("heartbeat") is ParameterSource.DEFAULT_MAP
        assert ctx.params["offline_after"] == 10.0  # not in the file: the option's default
        assert ctx.get_parameter_source("offline_after") is ParameterSource.DEFAULT


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "server.toml", SERVER_TOML)
    monkeypatch.setenv("CONSORTIUM_SERVER_ADDRESS", "127.0.0.1:7000")
    monkeypatch.setenv("CONSORTIUM_SERVER_ALLOW", "hungarian switzerland")
    monkeypatch.setenv("CONSORTIUM_SERVER_TRACKING", "true")
    with parsed(server, "--config-file", str(path)) as ctx:
        assert ctx.params["address"] == "127.0.0.1:7000"
        assert ctx.params["allow"] == ("hungarian", "switzerland")  # replaced, not merged
        assert ctx.params["tracking"] is True
        assert ctx.get_parameter_source("address") is ParameterSource.ENVIRONMENT
        assert ctx.params["heartbeat"] == 3.0  # the file still gives what env does not


def test_a_flag_overrides_the_environment_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "server.toml", SERVER_TOML)
    monkeypatch.setenv("CONSORTIUM_SERVER_ADDRESS", "127.0.0.1:7000")
    monkeypatch.setenv("CONSORTIUM_SERVER_HEARTBEAT", "5")
    args = ["--address", "127.0.0.1:8000", "--allow", "va", "--tracking", "--heartbeat", "1"]
    with parsed(server, "--config-file", str(path), *args) as ctx:
        assert ctx.params["address"] == "127.0.0.1:8000"
        assert ctx.params["allow"] == ("va",)
        assert ctx.params["tracking"] is True and ctx.params["heartbeat"] == 1.0
        for name in ("address", "allow", "tracking", "heartbeat"):
            assert ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE, name


def test_the_file_itself_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "node.toml", '[node]\nserver = "agg:9092"\n')
    monkeypatch.setenv("CONSORTIUM_NODE_CONFIG_FILE", str(path))
    with parsed(node) as ctx:
        assert ctx.params["address"] == "agg:9092"


def test_a_misspelt_environment_variable_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONSORTIUM_NODE_WORKDIR", "/srv/node")
    monkeypatch.setenv("CONSORTIUM_NODE_SERVER", "agg:9092")
    with parsed(node) as ctx:
        assert ctx.params["work_dir"] == Path("node-data")  # ignored, but not silently
    err = capsys.readouterr().err
    assert "warning: CONSORTIUM_NODE_WORKDIR is not a setting of consortium node " in err
    assert "(did you mean CONSORTIUM_NODE_WORK_DIR?)" in err
    assert "CONSORTIUM_NODE_SERVER" not in err


def test_relative_paths_in_the_file_are_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    (etc / "credentials").mkdir(parents=True)
    path = write(etc, "node.toml", '[node]\nserver = "h:1"\ncredentials = "credentials"\n'
                                   'work-dir = "work"\n')  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with parsed(node, "--config-file", str(path)) as ctx:
        assert ctx.params["credentials"] == etc / "credentials"
        assert ctx.params["work_dir"] == etc / "work"
    # a flag's relative path is the working directory's, as always
    with parsed(node, "--config-file", str(path), "--work-dir", "mine") as ctx:
        assert ctx.params["work_dir"] == Path("mine")


def test_the_node_config_table_keeps_its_types_and_config_still_means_key_value(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "node.toml", """
[node]
server = "h:1"
[node.config]
center = "cleveland"
epochs = 2
lr = 0.5
quoted = "true"
strict = false
sizes = [1, 2]
text = "a \\"quoted\\" word"
""")  # fmt: skip
    with parsed(node, "--config-file", str(path)) as ctx:
        config = dict(parse_override(item) for item in ctx.params["node_config"])
    assert config == {"center": "cleveland", "epochs": 2, "lr": 0.5, "quoted": "true",
                      "strict": False, "sizes": [1, 2], "text": 'a "quoted" word'}  # fmt: skip
    # --config KEY=VALUE is the node's own config, as before; on the command line it wins
    with parsed(node, "--config-file", str(path), "--config", "center=va") as ctx:
        assert ctx.params["node_config"] == ("center=va",)
    with parsed(node, "--server", "h:1", "--config", "center=va", "--config", "n=1") as ctx:
        assert ctx.params["node_config"] == ("center=va", "n=1")


# -- consortium config check: exit codes ------------------------------------------------
def test_config_check_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    both = write(tmp_path, "both.toml", SERVER_TOML + '\n[node]\nserver = "agg:9092"\n')
    code, out, err = cli(capsys, "config", "check", str(both))
    assert code == 0, err
    assert f"{both} [server]: OK" in out and f"{both} [node]: OK" in out
    assert "allow = ['cleveland', 'va']  (file)" in out and "server = agg:9092  (file)" in out
    monkeypatch.setenv("CONSORTIUM_NODE_SERVER", "other:9092")
    code, out, _ = cli(capsys, "config", "check", str(both), "--for", "node")
    assert code == 0 and "server = other:9092  (environment)" in out and "[server]" not in out

    # the node needs a server address, which nothing gives
    monkeypatch.delenv("CONSORTIUM_NODE_SERVER")
    lacking = write(tmp_path, "node.toml", '[node]\nsend-errors = "message"\n')
    code, _, err = cli(capsys, "config", "check", str(lacking))
    assert code == 2 and "Missing option '--server'" in err, err
    code, _, err = cli(capsys, "config", "check", str(lacking), "--for", "server")
    assert code == 2 and "has no [server] table" in err
    code, _, err = cli(capsys, "config", "check", str(tmp_path / "absent.toml"))
    assert code == 2 and "does not exist" in err
    empty = write(tmp_path, "empty.toml", "# nothing\n")
    code, _, err = cli(capsys, "config", "check", str(empty))
    assert code == 2 and "neither a [server] nor a [node] table" in err
