"""``consortium ca``: the commands end to end through ``main`` (exit codes, one-line errors)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from consortium.cli.ca_cmd import PASSPHRASE_ENV
from consortium.cli.main import main
from consortium.transport.identity import PeerIdentity, verify_peer


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every command in a fresh folder, so the defaults (./ca, ./credentials) are safe."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ca", "--help")
    assert code == 0
    for word in ("init", "issue", "revoke", "list", "crl", "CONSORTIUM_CA_PASSPHRASE"):
        assert word in out


def test_init_creates_the_default_ca_folder(
    capsys: pytest.CaptureFixture[str], workdir: Path
) -> None:
    code, out, _ = run(capsys, "ca", "init", "--name", "Heart Consortium CA", "--days", "30")
    assert code == 0, out
    assert "created CA 'CN=Heart Consortium CA' in ca" in out
    assert {p.name for p in (workdir / "ca").iterdir()} == {
        "ca.crt",
        "ca.key",
        "crl.pem",
        "index.json",
    }
    assert stat.S_IMODE((workdir / "ca" / "ca.key").stat().st_mode) == 0o600


def test_init_refuses_an_existing_ca_unless_forced(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "ca", "init")[0] == 0
    code, _, err = run(capsys, "ca", "init")
    assert code == 2
    assert err.strip().startswith("error: a CA already exists in ca; pass --force")
    assert len(err.strip().splitlines()) == 1
    assert run(capsys, "ca", "init", "--force")[0] == 0


def test_issue_node_to_the_default_folder(
    capsys: pytest.CaptureFixture[str], workdir: Path
) -> None:
    run(capsys, "ca", "init")
    code, out, err = run(capsys, "ca", "issue", "--node", "hospital-a")
    assert code == 0, err
    assert "issued node certificate 'hospital-a'" in out
    folder = workdir / "credentials" / "hospital-a"
    assert {p.name for p in folder.iterdir()} == {"ca.crt", "hospital-a.crt", "hospital-a.key"}
    assert stat.S_IMODE((folder / "hospital-a.key").stat().st_mode) == 0o600
    identity = verify_peer(
        (folder / "hospital-a.crt").read_bytes(), (folder / "ca.crt").read_bytes()
    )
    assert (identity.role, identity.name) == ("node", "hospital-a")


def test_issue_server_and_admin_with_out_and_days(
    capsys: pytest.CaptureFixture[str], workdir: Path
) -> None:
    run(capsys, "ca", "init", "--dir", "fedca")
    args = ["ca", "issue", "--dir", "fedca", "--out", "srv", "--days", "10"]
    code, _, err = run(capsys, *args, "--server", "localhost", "--ip", "127.0.0.1", "--dns", "agg")
    assert code == 0, err
    cert = x509.load_pem_x509_certificate((workdir / "srv" / "localhost.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "agg"]
    assert PeerIdentity.from_certificate(cert).role == "server"
    code, _, err = run(capsys, "ca", "issue", "--dir", "fedca", "--admin", "alice", "--out", "adm")
    assert code == 0, err
    assert (
        PeerIdentity.from_certificate((workdir / "adm" / "alice.crt").read_bytes()).role == "admin"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --server HOST, --node NAME, --admin NAME, --researcher NAME or"),
        (["--node", "a", "--admin", "b"], "exactly one of"),
        (["--node", "../evil"], "invalid node name '../evil'"),
        (["--node", "a/b"], "invalid node name"),
        (["--admin", "ca"], "reserved"),
        (["--server", "bad host"], "invalid server host"),
        (["--node", "n", "--ip", "127.0.0.1"], "server certificates only"),
        (["--server", "h", "--ip", "not-an-ip"], "not an IP address"),
    ],
)
def test_issue_errors_are_one_clear_line(
    capsys: pytest.CaptureFixture[str], workdir: Path, args: list[str], message: str
) -> None:
    run(capsys, "ca", "init")
    code, _, err = run(capsys, "ca", "issue", *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (workdir / "credentials").exists()


def test_issue_refuses_to_overwrite_unless_forced(capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "ca", "init")
    assert run(capsys, "ca", "issue", "--node", "n")[0] == 0
    code, _, err = run(capsys, "ca", "issue", "--node", "n")
    assert code == 2 and "already exists; pass --force" in err
    assert run(capsys, "ca", "issue", "--node", "n", "--force")[0] == 0


def test_commands_need_a_ca(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["issue", "--node", "n"], ["list"], ["revoke", "n"], ["crl"]):
        code, _, err = run(capsys, "ca", *args)
        assert code == 2
        assert "no CA in ca: create one with 'consortium ca init'" in err


def test_revoke_and_list(capsys: pytest.CaptureFixture[str], workdir: Path) -> None:
    run(capsys, "ca", "init")
    run(capsys, "ca", "issue", "--node", "hospital-a")
    run(capsys, "ca", "issue", "--node", "hospital-b")
    code, out, err = run(capsys, "ca", "revoke", "hospital-a", "--reason", "key-compromise")
    assert code == 0, err
    assert "revoked node 'hospital-a'" in out and "crl.pem" in out
    serial = PeerIdentity.from_certificate(
        (workdir / "credentials" / "hospital-a" / "hospital-a.crt").read_bytes()
    ).serial
    crl = x509.load_pem_x509_crl((workdir / "ca" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    code, out, _ = run(capsys, "ca", "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["ROLE", "NAME", "STATUS", "EXPIRES", "SERIAL"]
    assert "hospital-a" in lines[1] and "revoked (key-compromise)" in lines[1]
    assert f"{serial:x}" in lines[1]
    assert "hospital-b" in lines[2] and "valid" in lines[2]


def test_revoke_errors(capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "ca", "init")
    run(capsys, "ca", "issue", "--node", "dual")
    run(capsys, "ca", "issue", "--admin", "dual", "--out", "admin-dual")
    assert "no certificate for 'ghost'" in run(capsys, "ca", "revoke", "ghost")[2]
    code, _, err = run(capsys, "ca", "revoke", "dual")
    assert code == 2 and "pass --role" in err
    code, _, err = run(capsys, "ca", "revoke", "dual", "--serial", "xyz")
    assert code == 2 and "not a hexadecimal number" in err
    assert run(capsys, "ca", "revoke", "dual", "--role", "admin")[0] == 0
    assert "already revoked" in run(capsys, "ca", "revoke", "dual", "--role", "admin")[2]


def test_revoke_one_serial(capsys: pytest.CaptureFixture[str], workdir: Path) -> None:
    run(capsys, "ca", "init")
    run(capsys, "ca", "issue", "--node", "n")
    first = PeerIdentity.from_certificate((workdir / "credentials/n/n.crt").read_bytes()).serial
    run(capsys, "ca", "issue", "--node", "n", "--force")
    code, out, _ = run(capsys, "ca", "revoke", "n", "--serial", f"{first:x}")
    assert code == 0 and out.count("revoked node") == 1
    assert "valid" in run(capsys, "ca", "list")[1].splitlines()[2]


def test_list_of_an_empty_ca(capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "ca", "init")
    assert "no certificates issued yet" in run(capsys, "ca", "list")[1]


def test_crl_is_resigned(capsys: pytest.CaptureFixture[str], workdir: Path) -> None:
    run(capsys, "ca", "init")
    code, out, _ = run(capsys, "ca", "crl", "--days", "7")
    assert code == 0 and "valid for 7 days" in out
    crl = x509.load_pem_x509_crl((workdir / "ca" / "crl.pem").read_bytes())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_passphrase_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret")
    assert run(capsys, "ca", "init")[0] == 0
    assert b"ENCRYPTED" in (workdir / "ca" / "ca.key").read_bytes()
    assert run(capsys, "ca", "issue", "--node", "n")[0] == 0
    monkeypatch.delenv(PASSPHRASE_ENV)
    code, _, err = run(capsys, "ca", "issue", "--node", "m")
    assert code == 2 and "is encrypted: set CONSORTIUM_CA_PASSPHRASE" in err
    assert run(capsys, "ca", "list")[0] == 0  # listing needs no key


def test_without_cryptography_the_extra_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cryptography" else real(name)
    )
    code, _, err = run(capsys, "ca", "init")
    assert code == 9 and "pip install 'consortium[deploy]'" in err


def test_importing_the_command_loads_no_crypto() -> None:
    import subprocess
    import sys

    code = "import sys, consortium.cli.ca_cmd; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
