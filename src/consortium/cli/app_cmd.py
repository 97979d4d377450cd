"""``consortium app``: build, sign and verify app bundles (see docs/apps.md)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from consortium.apps.bundle import bundle_digest
from consortium.cli.secret_paths import ALLOW_GIT_TREE_HELP, refuse_git_exposure
from consortium.core.errors import ConfigError

PASSPHRASE_ENV = "CONSORTIUM_PUBLISHER_PASSPHRASE"


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _write(path: Path, data: bytes) -> None:
    """Write-then-rename, so a reader never sees half a bundle."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


@click.group()
def app() -> None:
    """Package an app folder as a signed bundle, and check one before running it.

    \b
      consortium app keygen --out publisher.key         a publisher key pair (.key and .pub)
      consortium app build APP_DIR -o app.cab           a reproducible bundle with a manifest
      consortium app sign app.cab --key publisher.key   add the publisher's signature
      consortium app verify app.cab --trusted keys/     check it as a node will

    Set CONSORTIUM_PUBLISHER_PASSPHRASE to encrypt the key at keygen and to use it to sign.
    """


@app.command()
@click.argument("app_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The bundle to write (APP.cab).",
)
def build(app_dir: Path, out: Path) -> None:
    """Build APP_DIR into an unsigned bundle: the same folder always gives the same bytes."""
    from consortium.apps.manifest import load_app_spec
    from consortium.apps.signing import build_bundle

    bundle = build_bundle(app_dir)
    spec = load_app_spec(app_dir)
    _write(out, bundle)
    click.echo(f"built {spec.name} {spec.manifest.app.version} -> {out} ({len(bundle)} bytes)")
    click.echo(f"sha256 {bundle_digest(bundle)}")


@app.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("publisher.key"),
    show_default=True,
    help="The private key file; the public key goes beside it with the suffix .pub.",
)
@click.option("--allow-git-tree", is_flag=True, help=ALLOW_GIT_TREE_HELP)
def keygen(out: Path, allow_git_tree: bool) -> None:
    """Create a publisher's Ed25519 key pair (the private key is written with mode 0600)."""
    from consortium.apps.publisher_keys import generate_key, public_key_path

    refuse_git_exposure("--out", [out], allow_git_tree)

    key = generate_key(out, passphrase=_passphrase())
    click.echo(f"private key {out} (keep it secret; never put it in an app folder)")
    click.echo(f"public key  {public_key_path(out)} (give it to the nodes that trust you)")
    click.echo(f"fingerprint {key.fingerprint}")


@app.command()
@click.argument("bundle", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The publisher's private key.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the signed bundle here instead of replacing BUNDLE.",
)
def sign(bundle: Path, key_path: Path, out: Path | None) -> None:
    """Sign BUNDLE with a publisher's key (in place, or to --out)."""
    from consortium.apps.publisher_keys import load_private_key
    from consortium.apps.signing import sign_bundle

    key = load_private_key(key_path, passphrase=_passphrase())
    signed = sign_bundle(_read(bundle), key)
    target = out or bundle
    _write(target, signed)
    click.echo(f"signed {target} with {key.public.fingerprint}")
    click.echo(f"sha256 {bundle_digest(signed)}")


@app.command()
@click.argument("bundle", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--trusted",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="A folder of trusted publisher keys (*.pub), or one .pub file.",
)
@click.option("--sha256", "pinned", help="Accept only the bundle with exactly this SHA-256.")
def verify(bundle: Path, trusted: Path, pinned: str | None) -> None:
    """Check BUNDLE as a node will: signature, trusted publisher, every file, the pin."""
    from consortium.apps.publisher_keys import load_trusted_keys
    from consortium.apps.signing import verify_bundle

    verified = verify_bundle(_read(bundle), load_trusted_keys(trusted), pinned_sha256=pinned)
    source = f" ({Path(verified.publisher_source).name})" if verified.publisher_source else ""
    click.echo(f"app       {verified.app_name}")
    click.echo(f"version   {verified.app_version}")
    click.echo(f"sha256    {verified.sha256}")
    click.echo(f"publisher {verified.publisher}{source}")
    click.echo(f"files     {len(verified.files)}")
    click.echo("verified")
