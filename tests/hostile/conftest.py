"""The hostile-node suite: a real server (gRPC, mutual TLS) with honest nodes and one that
misbehaves. The fixtures are the deployment tests' (a CA, server and node processes)."""

from __future__ import annotations

from deploy.conftest import Deployment, Federation, deployment, federation, wait_for

__all__ = ["Deployment", "Federation", "deployment", "federation", "wait_for"]
