"""App folders: the ``consortium.toml`` manifest, entry points, and signed app bundles."""

from consortium.apps.bundle import BundleLimits, BundleRejected, extract_bundle
from consortium.apps.manifest import AppSpec, Manifest, load_app_spec, parse_override
from consortium.apps.publisher_keys import (
    PrivateKey,
    PublicKey,
    generate_key,
    load_private_key,
    load_trusted_keys,
)
from consortium.apps.signing import VerifiedBundle, build_bundle, sign_bundle, verify_bundle

__all__ = [
    "AppSpec",
    "BundleLimits",
    "BundleRejected",
    "Manifest",
    "PrivateKey",
    "PublicKey",
    "VerifiedBundle",
    "build_bundle",
    "extract_bundle",
    "generate_key",
    "load_app_spec",
    "load_private_key",
    "load_trusted_keys",
    "parse_override",
    "sign_bundle",
    "verify_bundle",
]
