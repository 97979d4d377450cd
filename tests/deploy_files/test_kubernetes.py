"""deploy/kubernetes: the Kustomize base and its server and node overlays, rendered and
validated against a current Kubernetes schema (``kubernetes-validate``, strict).

Rendering uses ``kubectl kustomize`` (or ``kustomize build``), which works offline;
without either, the overlays' resources are loaded as written, with their
generated Secrets and ConfigMaps and their namespace applied here, so the schema
and the checks below still run. The operator's certificate files, which the
overlays' secretGenerators read and which are never committed, are stood in for
by placeholders in a copy of the tree.

Beyond the schema: the pods' security context (the restricted Pod Security
Standard), resources, probes, the network policies (nodes only dial out, the
server accepts only its gRPC and HTTP ports), every Secret, ConfigMap and claim
a pod names exists, and every container's arguments parse with the real CLI.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from consortium.apps.manifest import parse_override

from .cli_args import parse

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("server", "node")
#: the operator's files each overlay's secretGenerator and configMapGenerator read
OPERATOR_FILES = {
    "server": ["secrets/server.crt", "secrets/server.key", "secrets/ca.crt", "secrets/crl.pem"],
    "node": ["secrets/node.crt", "secrets/node.key", "secrets/ca.crt", "trusted/publisher.pub"],
}
#: the files each overlay's generators read that are committed (not the operator's)
COMMITTED = {"server": {"allow.txt", "server.toml"}, "node": {"policy.toml", "node.toml"}}
IMAGE_UID = 10001  # the Dockerfile's USER
NAMESPACE = "consortium"
WORKLOADS = ("Deployment", "StatefulSet")


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def _generated(kind: str, spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    data = {}
    for entry in spec.get("files", []):
        key, _, path = entry.rpartition("=")
        data[key or Path(path).name] = (folder / path).read_text()
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    if kind == "Secret":
        return {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]},
                "type": "Opaque", "stringData": data}  # fmt: skip
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}, "data": data}


def load_unrendered(folder: Path) -> list[dict[str, Any]]:
    """The resources a kustomization lists, as written, plus its generated objects."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        if path.is_dir():
            docs += load_unrendered(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for spec in kustomization.get("secretGenerator", []):
        docs.append(_generated("Secret", spec, folder))
    for spec in kustomization.get("configMapGenerator", []):
        docs.append(_generated("ConfigMap", spec, folder))
    for doc in docs:
        if "namespace" in kustomization and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kubernetes with placeholders for the operator's files."""
    copy = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    for overlay, files in OPERATOR_FILES.items():
        for name in files:
            path = copy / overlay / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"placeholder for {name}\n")
    return copy


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, tree: Path) -> tuple[str, list[dict[str, Any]]]:
    overlay = str(request.param)
    command = kustomize_command()
    if command is None:
        return overlay, load_unrendered(tree / overlay)
    result = subprocess.run([*command, str(tree / overlay)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return overlay, [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def workload(overlay: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] in WORKLOADS]
    assert len(found) == 1, f"{overlay}: one workload, not {[d['kind'] for d in found]}"
    return found[0]


def test_every_resource_is_valid_against_the_kubernetes_schema(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = rendered
    version = kubernetes_validate.latest_version()
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "NetworkPolicy", "Secret", "ConfigMap"} <= kinds, kinds
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")


def test_the_validator_refuses_a_wrong_field(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    broken = yaml.safe_load(yaml.safe_dump(workload(overlay, docs)))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_everything_is_in_the_namespace(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{overlay}: {doc['kind']}"


def test_pods_are_restricted(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    pod = workload(overlay, docs)["spec"]["template"]["spec"]
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == context["fsGroup"] == IMAGE_UID
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) >= {"cpu", "memory"}, f"{overlay}: {bound}"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, "a read-only root needs a writable /tmp"
        if kustomize_command() is not None:
            assert container["image"] == "consortium:0.1.0"


def test_everything_a_pod_names_exists(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    spec = workload(overlay, docs)["spec"]
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    pod = spec["template"]["spec"]
    for volume in pod["volumes"]:
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in names, volume
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in names, volume
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert ("PersistentVolumeClaim", claim) in names, volume
    mounted = {m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
    assert mounted <= {v["name"] for v in pod["volumes"]} | claims
    assert claims or by_kind(docs, "PersistentVolumeClaim"), f"{overlay}: its state needs a volume"


def resolved_args(docs: list[dict[str, Any]], container: dict[str, Any]) -> list[str]:
    """The container's args with ``$(VAR)`` replaced as the kubelet would."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "ConfigMap")}
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = config_maps[ref["name"]][ref["key"]]

    def expand(arg: str) -> str:
        def one(match: re.Match[str]) -> str:
            assert match.group(1) in env, f"$({match.group(1)}) is not in the container's env"
            return env[match.group(1)]

        return re.sub(r"\$\(([A-Z_][A-Z0-9_]*)\)", one, arg)

    return [expand(str(arg)) for arg in container["args"]]


def mounted_files(docs: list[dict[str, Any]], pod: dict[str, Any]) -> dict[str, str]:
    """Each file the pod's ConfigMap volumes put in its first container: path -> text."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "ConfigMap")}
    volumes = {v["name"]: v["configMap"] for v in pod["volumes"] if "configMap" in v}
    files = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        volume = volumes.get(mount["name"])
        if volume is None:
            continue
        data = config_maps[volume["name"]]
        items = volume.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            files[f"{mount['mountPath']}/{item['path']}"] = data[item["key"]]
    return files


def parsed_container(
    overlay: str, docs: list[dict[str, Any]], root: Path
) -> tuple[dict[str, Any], dict[str, object]]:
    """The workload's container and its parameters, as the CLI parses its arguments and
    the config file they name, read from the ConfigMap mounted there."""
    pod = workload(overlay, docs)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = resolved_args(docs, container)
    try:
        command, params = parse(args, root, mounted_files(docs, pod))
    except click.ClickException as exc:
        pytest.fail(f"{overlay}: consortium {' '.join(args)}: {exc.format_message()}")
    assert command == f"consortium {overlay}"
    return container, params


def test_container_arguments_parse_with_the_cli(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    overlay, docs = rendered
    container, params = parsed_container(overlay, docs, tmp_path)
    assert "--config-file" in container["args"], "the settings are in a ConfigMap's file"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    local = {name: str(value).replace(str(tmp_path), "") for name, value in params.items()}
    assert local["credentials"] in mounts and mounts[local["credentials"]]["readOnly"]
    assert local["workdir" if overlay == "server" else "work_dir"] in mounts
    if overlay == "server":
        assert str(Path(local["allow_file"]).parent) in mounts
        assert local["ca_dir"] in mounts
    else:
        assert str(Path(local["policy_file"]).parent) in mounts
        (entry,) = params["node_config"]  # type: ignore[misc]
        key, value = parse_override(str(entry))
        assert key == "center" and re.fullmatch(r"[a-z]+", str(value))


def test_the_server_is_probed_where_it_serves(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    overlay, docs = rendered
    container, params = parsed_container(overlay, docs, tmp_path)
    if overlay == "node":
        # it listens on nothing: readiness is the image's check of its status file (a
        # liveness probe would restart a node whose server is down, for nothing)
        assert not {"ports", "livenessProbe"} & container.keys()
        command = container["readinessProbe"]["exec"]["command"]
        assert command == ["python", "/usr/local/lib/consortium/healthcheck.py"]
        assert (ROOT / "Dockerfile").read_text().count(command[1]) >= 2  # copied and run
        return
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(str(params["http"]).rsplit(":", 1)[1])
    assert ports["grpc"] == int(str(params["address"]).rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/api/v1/health", "port": "http"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    for service in by_kind(docs, "Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, service["metadata"]["name"]


def test_network_policies(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    policies = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "NetworkPolicy")}
    deny = policies.pop("default-deny")
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    (own,) = policies.values()
    assert set(own["policyTypes"]) == {"Ingress", "Egress"}
    labels = workload(overlay, docs)["spec"]["template"]["metadata"]["labels"]
    assert own["podSelector"]["matchLabels"].items() <= labels.items()

    def ports(rules: list[dict[str, Any]]) -> set[tuple[str, int]]:
        return {(p["protocol"], p["port"]) for rule in rules for p in rule.get("ports", [])}

    dns = {("UDP", 53), ("TCP", 53)}
    if overlay == "server":
        # anyone may reach the two ports (nodes are outside the cluster), nothing else
        assert ports(own["ingress"]) == {("TCP", 9092), ("TCP", 8080)}
        assert all(set(rule) == {"ports"} for rule in own["ingress"])
        assert ports(own["egress"]) == dns | {("TCP", 5432)}
    else:
        assert own["ingress"] == [], "a node accepts no connection"
        assert ports(own["egress"]) == dns | {("TCP", 9092)}


def test_the_operator_files_are_where_the_generators_read_them() -> None:
    # the files the tests stand in for are exactly those the kustomizations read
    for overlay, files in OPERATOR_FILES.items():
        kustomization = yaml.safe_load((KUBERNETES / overlay / "kustomization.yaml").read_text())
        read = {
            entry.rpartition("=")[2]
            for generator in ("secretGenerator", "configMapGenerator")
            for spec in kustomization.get(generator, [])
            for entry in spec.get("files", [])
        }
        assert read == set(files) | COMMITTED[overlay], overlay
        for name in COMMITTED[overlay]:
            assert (KUBERNETES / overlay / name).is_file()
