"""A node's policy file: parsed strictly, and what it admits and refuses (no processes).

The same refusals by real ``consortium node --policy`` processes, seen from the server
too, are in tests/deploy/test_signed_apps.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from consortium.apps.publisher_keys import generate_key, load_private_key
from consortium.apps.signing import build_bundle, sign_bundle
from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError
from consortium.core.message import Content, Message
from consortium.node.policy import MIB, AppPolicy, PolicyRefused, load_policy, parse_size
from consortium.sandbox.confine import SandboxLimits

EXE = str(Path(sys.executable).parent / "consortium")
APP = Path(__file__).resolve().parents[1] / "deploy" / "slowapp"
SHA = "3f2a" + "0" * 60


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """tmp_path/keys/: a trusted ``publisher.pub`` (its private key one folder up)."""
    generate_key(tmp_path / "publisher.key")
    (tmp_path / "keys").mkdir()
    shutil.copy(tmp_path / "publisher.pub", tmp_path / "keys" / "publisher.pub")
    return tmp_path / "keys"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD = f"""
[trust]
publishers = "keys"

[[allow]]
name = "slow-toy"
version = "1.0.0"

[[allow]]
sha256 = "{SHA}"

[limits]
max-rounds = 100
max-model-mb = 0.5
kinds = ["train", "evaluate"]
"""


def test_a_good_file(tmp_path: Path, keys: Path) -> None:
    policy = load_policy(write(tmp_path / "policy.toml", GOOD))
    assert policy.source == (tmp_path / "policy.toml").resolve()
    assert [k.source for k in policy.publishers] == [str(keys / "publisher.pub")]
    assert [(a.name, a.version, a.sha256) for a in policy.allow] == [
        ("slow-toy", "1.0.0", None),
        (None, None, SHA),
    ]
    assert policy.max_rounds == 100
    assert policy.max_model_bytes == MIB // 2
    assert policy.kinds == {"train", "evaluate"}


def test_limits_are_optional_and_publishers_may_be_a_list_of_files(
    tmp_path: Path, keys: Path
) -> None:
    text = '[trust]\npublishers = ["keys/publisher.pub"]\n[[allow]]\nsha256 = "' + SHA + '"\n'
    policy = load_policy(write(tmp_path / "p.toml", text))
    assert len(policy.publishers) == 1
    assert (policy.max_rounds, policy.max_model_bytes, policy.kinds) == (None, None, None)


def test_relative_paths_resolve_against_the_policy_files_folder(
    tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not where the keys are
    policy = load_policy(Path("..") / write(tmp_path / "policy.toml", GOOD).name)
    assert len(policy.publishers) == 1
    nested = tmp_path / "etc"
    nested.mkdir()
    text = GOOD.replace('publishers = "keys"', 'publishers = "../keys"')
    assert len(load_policy(write(nested / "policy.toml", text)).publishers) == 1
    with pytest.raises(ConfigError, match="no such folder of trusted publisher keys"):
        load_policy(write(nested / "bad.toml", GOOD))  # etc/keys does not exist


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("max-rounds = 100", "max-round = 100"), "unknown key 'limits.max-round'"),
        (("[limits]", "[limit]"), "unknown key 'limit'"),
        (('version = "1.0.0"', 'version = "1.0.0"\nentry = "x"'), "unknown key 'allow.0.entry'"),
        (("max-rounds = 100", 'max-rounds = "100"'), "key 'limits.max-rounds'"),
        (("max-model-mb = 0.5", "max-model-mb = -1"), "key 'limits.max-model-mb'"),
        (('kinds = ["train", "evaluate"]', 'kinds = "train"'), "key 'limits.kinds'"),
        (('publishers = "keys"', "publishers = 3"), "key 'trust.publishers"),
        (('version = "1.0.0"\n', ""), "needs name and version, or sha256"),
        ((SHA, "3F2A"), "64 lower-case hex digits"),
        (('[trust]\npublishers = "keys"\n', ""), "missing key 'trust'"),
    ],
)
def test_a_bad_file_is_refused_naming_the_key_and_the_file(
    tmp_path: Path, keys: Path, edit: tuple[str, str], message: str
) -> None:
    assert edit[0] in GOOD
    path = write(tmp_path / "policy.toml", GOOD.replace(*edit))
    with pytest.raises(ConfigError, match=message) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)


SANDBOX = """
[sandbox]
read = ["data", "/usr/share"]
memory = "8GiB"
cpu-seconds = 3600
"""


def test_the_sandbox_table(tmp_path: Path, keys: Path) -> None:
    (tmp_path / "data").mkdir()
    policy = load_policy(write(tmp_path / "policy.toml", GOOD + SANDBOX))
    assert policy.sandbox_read == ((tmp_path / "data").resolve(), Path("/usr/share"))
    assert policy.sandbox_limits == SandboxLimits(memory_bytes=8 * 1024**3, cpu_seconds=3600)
    without = load_policy(write(tmp_path / "plain.toml", GOOD))
    assert without.sandbox_read == () and without.sandbox_limits == SandboxLimits()


@pytest.mark.parametrize(
    ("value", "size"),
    [(4096, 4096), ("8GiB", 8 * 1024**3), ("512 MiB", 512 * 1024**2), ("2GB", 2 * 10**9),
     ("1.5KiB", 1536), ("unlimited", None)],
)  # fmt: skip
def test_sizes(value: int | str, size: int | None) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('memory = "8GiB"', 'memory = "8 gigs"'), r"key 'sandbox.memory': .*'8 gigs'"),
        (('memory = "8GiB"', "memory = 0"), "key 'sandbox.memory'"),
        (("cpu-seconds = 3600", "cpu-seconds = 0"), "key 'sandbox.cpu-seconds'"),
        (('read = ["data", "/usr/share"]', 'read = ["absent"]'), "'absent' does not exist"),
        (('read = ["data", "/usr/share"]', 'read = "data"'), "key 'sandbox.read'"),
        (("cpu-seconds = 3600", "network = true"), "unknown key 'sandbox.network'"),
    ],
)
def test_a_bad_sandbox_table_is_refused_naming_the_key(
    tmp_path: Path, keys: Path, edit: tuple[str, str], message: str
) -> None:
    (tmp_path / "data").mkdir()
    assert edit[0] in SANDBOX
    path = write(tmp_path / "policy.toml", GOOD + SANDBOX.replace(*edit))
    with pytest.raises(ConfigError, match=message) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)


def test_not_toml_or_no_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a valid TOML node policy"):
        load_policy(write(tmp_path / "p.toml", "[trust\n"))
    with pytest.raises(ConfigError, match="cannot read node policy"):
        load_policy(tmp_path / "absent.toml")


def _task(kind: str = "train", rnd: int = 1, floats: int = 4) -> Message:
    content = Content.of(Arrays({"w": np.zeros(floats)}), {})
    return Message.create(run_id="run", dst="n", round=rnd, kind=kind, content=content)


def test_admit_and_task_limits(tmp_path: Path, keys: Path) -> None:
    policy: AppPolicy = load_policy(write(tmp_path / "policy.toml", GOOD))
    signed = sign_bundle(build_bundle(APP), load_private_key(tmp_path / "publisher.key"))
    assert policy.admit(signed).app_name == "slow-toy"
    with pytest.raises(PolicyRefused, match=r"app bundle refused \(unsigned\)") as caught:
        policy.admit(build_bundle(APP))
    assert caught.value.reason == "unsigned"
    policy.check_task(_task())
    for task, reason in [
        (_task(kind="query"), "kind-not-allowed"),
        (_task(rnd=101), "too-many-rounds"),
        (_task(floats=MIB // 8 + 1), "model-too-large"),
    ]:
        with pytest.raises(PolicyRefused, match=rf"node's policy \({reason}\)"):
            policy.check_task(task)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "{policy}", "--app", "{app}"], "--policy cannot be combined with --app"),
        (["--policy", "{policy}", "--trust-server-apps"], "--policy cannot be combined"),
        (["--credentials", "{tmp}", "--trust-server-apps"], "unless --insecure-dev is given"),
        (
            ["--credentials", "{tmp}/keys", "--app", "{app}", "--app-read", "{tmp}"],
            "which holds this node's credentials",
        ),
    ],
)
def test_node_refuses_unsafe_option_combinations(
    tmp_path: Path, keys: Path, args: list[str], message: str
) -> None:
    policy = write(tmp_path / "policy.toml", GOOD)
    filled = [a.format(policy=policy, app=APP, tmp=tmp_path) for a in args]
    done = subprocess.run(
        [EXE, "node", "--server", "127.0.0.1:1", *filled, "--work-dir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
