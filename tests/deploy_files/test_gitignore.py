"""Every secret the CLI and the deployment files write is git-ignored.

``git check-ignore --no-index`` applies the repository's real .gitignore rules to
the paths each command writes (docs/deploy.md, compose.yaml, deploy/kubernetes),
so a user cannot ``git add .`` a private key by accident.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SECRETS = [
    "ca/ca.key",  # consortium ca init (default --dir)
    "ca/index.json",
    "credentials/va/va.key",  # consortium ca issue (default --out)
    "federation/offline-ca/ca.key",  # docs/deploy.md
    "federation/server/data/state.db",
    "offline-ca/ca.key",
    "publisher/publisher.key",  # consortium app keygen
    "server-data/api/secret",  # consortium server --http / token create
    "server/data/api/secret",
    "server/data/api/tokens.json",
    "local-run/admin-token",  # consortium local --dir local-run
    "alice.token",  # consortium token create --out alice.token
    "node-data/node.log",
    ".env",  # compose.yaml's POSTGRES_PASSWORD
    "deploy/kubernetes/server/secrets/server.key",
    "deploy/kubernetes/node/secrets/node.key",
    "deploy/kubernetes/node/trusted/publisher.pub",
    "deploy/compose/node/trusted/publisher.pub",
    "deploy/compose/bundles/heart.cab",
]
KEPT = ["deploy/compose/node/policy.toml", "deploy/kubernetes/node/policy.toml", "compose.yaml"]


def ignored(path: str) -> bool:
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, capture_output=True
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to apply .gitignore")
def test_every_secret_written_is_ignored() -> None:
    assert [p for p in SECRETS if not ignored(p)] == []
    assert [p for p in KEPT if ignored(p)] == []
