"""App folders: the ``consortium.toml`` manifest, entry points, and signed app bundles.

Each name is imported from its module when first used (:mod:`consortium._lazy`):
loading an app needs neither the bundle format nor the signing keys.
"""

import typing

from consortium._lazy import lazy_exports as _lazy_exports

#: each public name and the module it comes from
_HOMES = {
    "AppSpec": "consortium.apps.manifest",
    "BundleLimits": "consortium.apps.bundle",
    "BundleRejected": "consortium.apps.bundle",
    "Manifest": "consortium.apps.manifest",
    "PrivateKey": "consortium.apps.publisher_keys",
    "PublicKey": "consortium.apps.publisher_keys",
    "VerifiedBundle": "consortium.apps.signing",
    "build_bundle": "consortium.apps.signing",
    "extract_bundle": "consortium.apps.bundle",
    "generate_key": "consortium.apps.publisher_keys",
    "load_app_spec": "consortium.apps.manifest",
    "load_private_key": "consortium.apps.publisher_keys",
    "load_trusted_keys": "consortium.apps.publisher_keys",
    "parse_override": "consortium.apps.manifest",
    "sign_bundle": "consortium.apps.signing",
    "verify_bundle": "consortium.apps.signing",
}

if typing.TYPE_CHECKING:
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

__getattr__, __dir__ = _lazy_exports(__name__, _HOMES, globals())
