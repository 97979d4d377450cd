"""``consortium ca``: the federation's certificate authority (init, issue, revoke, list, crl)."""

from __future__ import annotations

import importlib.util
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from consortium.cli.secret_paths import ALLOW_GIT_TREE_HELP, refuse_git_exposure
from consortium.core.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from consortium.transport.ca import CertificateAuthority

PASSPHRASE_ENV = "CONSORTIUM_CA_PASSPHRASE"
REASONS = ("unspecified", "key-compromise", "superseded", "cessation-of-operation",
           "affiliation-changed")  # fmt: skip

dir_option = click.option(
    "--dir",
    "ca_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("ca"),
    show_default=True,
    help="The CA folder.",
)
allow_git_tree_option = click.option("--allow-git-tree", is_flag=True, help=ALLOW_GIT_TREE_HELP)
key_type_option = click.option(
    "--key-type",
    type=click.Choice(["ec", "rsa"]),
    default="ec",
    show_default=True,
    help="ECDSA P-256 or RSA 3072.",
)


def _require_cryptography() -> None:
    if importlib.util.find_spec("cryptography") is None:
        raise MissingDependencyError.for_extra("cryptography", "deploy")


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _open(ca_dir: Path) -> CertificateAuthority:
    _require_cryptography()
    from consortium.transport.ca import CertificateAuthority

    return CertificateAuthority.load(ca_dir, passphrase=_passphrase())


def _day(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"


@click.group()
def ca() -> None:
    """The federation's certificate authority: who may join, and in which role.

    \b
      consortium ca init                                create ./ca (ca.crt, ca.key, crl.pem)
      consortium ca issue --server HOST --ip 10.0.0.5   the aggregation server's certificate
      consortium ca issue --node hospital-a             a silo's certificate
      consortium ca issue --admin alice                 the coordinator's certificate
      consortium ca issue --researcher bob --org "St Mary"   starts runs, downloads models
      consortium ca issue --observer carol              reads runs and metrics only
      consortium ca revoke hospital-a                   shut a silo out at its next connection

    Set CONSORTIUM_CA_PASSPHRASE to encrypt ca.key at init and to use it afterwards.
    """


@ca.command()
@dir_option
@click.option("--name", help="The CA's common name [default: Consortium federation CA].")
@click.option("--days", type=click.IntRange(min=1), default=3650, show_default=True)
@key_type_option
@click.option(
    "--force", is_flag=True, help="Replace an existing CA (revokes trust in all it issued)."
)
@allow_git_tree_option
def init(
    ca_dir: Path,
    name: str | None,
    days: int,
    key_type: Literal["ec", "rsa"],
    force: bool,
    allow_git_tree: bool,
) -> None:
    """Create a federation CA in --dir."""
    _require_cryptography()
    refuse_git_exposure("--dir", [ca_dir / "ca.key"], allow_git_tree)
    from consortium.transport.ca import DEFAULT_CA_NAME, CertificateAuthority

    authority = CertificateAuthority.init(
        ca_dir,
        name=DEFAULT_CA_NAME if name is None else name,
        days=days,
        key_type=key_type,
        passphrase=_passphrase(),
        force=force,
    )
    cert = authority.certificate
    click.echo(f"created CA {cert.subject.rfc4514_string()!r} in {ca_dir}")
    click.echo(f"  valid until {_day(cert.not_valid_after_utc)}")
    click.echo(f"  {authority.cert_path}   public: the server, every node and admin need a copy")
    click.echo(f"  {authority.key_path}   secret (0600): needed only to issue and revoke")
    click.echo(f"  {authority.crl_path}  revocation list: the server reads it")


@ca.command()
@dir_option
@click.option("--server", "server", metavar="HOST", help="Issue the server certificate for HOST.")
@click.option("--node", "node", metavar="NAME", help="Issue a node (silo) certificate.")
@click.option("--admin", "admin", metavar="NAME", help="Issue an admin (coordinator) certificate.")
@click.option("--researcher", "researcher", metavar="NAME", help="Issue a researcher certificate.")
@click.option("--observer", "observer", metavar="NAME", help="Issue an observer certificate.")
@click.option(
    "--org",
    "organisation",
    metavar="ORGANISATION",
    help='The holder\'s organisation (subject O=), e.g. "St Mary"; shown in the audit log.',
)
@click.option("--ip", "ips", multiple=True, metavar="ADDR", help="Extra server IP (repeatable).")
@click.option("--dns", "dns", multiple=True, metavar="HOST", help="Extra server DNS name.")
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for NAME.crt, NAME.key and ca.crt [default: credentials/NAME].",
)
@key_type_option
@click.option("--force", is_flag=True, help="Overwrite existing files (e.g. to renew).")
@allow_git_tree_option
def issue(
    ca_dir: Path,
    server: str | None,
    node: str | None,
    admin: str | None,
    researcher: str | None,
    observer: str | None,
    organisation: str | None,
    ips: tuple[str, ...],
    dns: tuple[str, ...],
    days: int,
    out: Path | None,
    key_type: Literal["ec", "rsa"],
    force: bool,
    allow_git_tree: bool,
) -> None:
    """Issue a key and certificate for one server, node, admin, researcher or observer."""
    given = (("server", server), ("node", node), ("admin", admin), ("researcher", researcher),
             ("observer", observer))  # fmt: skip
    chosen = [(r, n) for r, n in given if n]
    if len(chosen) != 1:
        raise ConfigError(
            "give exactly one of --server HOST, --node NAME, --admin NAME, --researcher NAME "
            "or --observer NAME"
        )
    role, name = chosen[0]
    authority = _open(ca_dir)
    from consortium.transport.names import file_stem, validate_name

    stem = file_stem(validate_name(role, name))  # type: ignore[arg-type]
    target = out or Path("credentials") / stem
    refuse_git_exposure("--out", [target / f"{stem}.key"], allow_git_tree)
    issued = authority.issue(
        role,  # type: ignore[arg-type]
        name,
        target,
        days=days,
        ips=ips,
        dns=dns,
        key_type=key_type,
        force=force,
        organisation=organisation,
    )
    entry = issued.entry
    of = f" of {organisation.strip()!r}" if organisation else ""
    click.echo(f"issued {entry.role} certificate {entry.name!r}{of} (serial {entry.serial:x})")
    click.echo(f"  valid until {_day(entry.not_after)}")
    click.echo(f"  {issued.cert_path}  {issued.key_path} (secret, 0600)  {issued.ca_path}")
    click.echo(f"  hand the folder {target} to its holder over a secure channel")


@ca.command()
@dir_option
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["server", "node", "admin", "researcher", "observer"]),
    help="Which of NAME's.",
)
@click.option("--serial", metavar="HEX", help="Revoke only the certificate with this serial.")
@click.option("--reason", type=click.Choice(REASONS), default="unspecified", show_default=True)
def revoke(ca_dir: Path, name: str, role: str | None, serial: str | None, reason: str) -> None:
    """Revoke NAME's certificates and rewrite the signed revocation list (crl.pem)."""
    try:
        serial_number = int(serial.replace(":", ""), 16) if serial else None
    except ValueError:
        raise ConfigError(f"--serial {serial!r} is not a hexadecimal number") from None
    authority = _open(ca_dir)
    revoked = authority.revoke(
        name,
        role=role,  # type: ignore[arg-type]
        serial=serial_number,
        reason=reason,
    )
    for entry in revoked:
        click.echo(f"revoked {entry.role} {entry.name!r} (serial {entry.serial:x}, {reason})")
    click.echo(
        f"wrote {authority.crl_path}: a server reading it refuses these certificates at their "
        "next connection (copy it to the server if the CA lives elsewhere)"
    )


@ca.command(name="list")
@dir_option
def list_(ca_dir: Path) -> None:
    """List every certificate the CA issued, with its status."""
    entries = _open(ca_dir).entries()
    if not entries:
        click.echo("no certificates issued yet: consortium ca issue --node NAME")
        return
    statuses = [f"revoked ({e.reason})" if e.revoked_at else e.status() for e in entries]
    name_w = max(4, *(len(e.name) for e in entries))
    status_w = max(6, *(len(s) for s in statuses))
    click.echo(f"{'ROLE':<10}  {'NAME':<{name_w}}  {'STATUS':<{status_w}}  {'EXPIRES':<20}  SERIAL")
    for e, status in zip(entries, statuses, strict=True):
        click.echo(
            f"{e.role:<10}  {e.name:<{name_w}}  {status:<{status_w}}  "
            f"{_day(e.not_after):<20}  {e.serial:x}"
        )


@ca.command()
@dir_option
@click.option("--days", type=click.IntRange(min=1), default=90, show_default=True)
def crl(ca_dir: Path, days: int) -> None:
    """Re-sign the revocation list (before its next-update date passes)."""
    authority = _open(ca_dir)
    path = authority.write_crl(days=days)
    click.echo(f"wrote {path} (valid for {days} days)")
