"""Bearer tokens for the REST API: signed by the server, expiring, revocable.

A token is ``cst1.<payload>.<mac>``: the payload is base64url JSON (id, name,
role, organisation, issue and expiry times), the MAC an HMAC-SHA256 over
``cst1.<payload>`` with a 32-byte secret kept in the server's workdir
(``api/secret``, mode 0600; whoever reads it can mint tokens, so it is as
sensitive as the server's key). Every token issued is listed in
``api/tokens.json`` (never the token itself, only its id and claims), and a
revocation is a mark there: ``consortium token revoke`` works on the files
while the server runs, and the server sees it at the next request (it re-reads
the list when the file changes).

A token is accepted only if its MAC verifies, it has not expired, and its id is
in the list and not revoked: a token whose list entry is gone is refused too.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from consortium.core.errors import ConfigError, SecurityError
from consortium.transport.names import CONTROL_ROLES, validate_name

PREFIX = "cst1"
#: the folder under the server's workdir holding the secret and the token list
API_DIR = "api"
SECRET_FILE = "secret"
TOKENS_FILE = "tokens.json"
SECRET_BYTES = 32
_DAY = 86400


class InvalidToken(SecurityError):
    """A token that is malformed, forged, expired, unknown or revoked (HTTP 401)."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a token says about its holder, and its life: never the token itself."""

    id: str
    name: str
    role: str
    organisation: str
    issued_at: float
    expires_at: float
    revoked_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenInfo:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            role=str(data["role"]),
            organisation=str(data.get("organisation", "")),
            issued_at=float(data["issued_at"]),
            expires_at=float(data["expires_at"]),
            revoked_at=None if data.get("revoked_at") is None else float(data["revoked_at"]),
        )


class TokenAuthority:
    """Issues, verifies, lists and revokes the tokens of one server (its ``workdir``)."""

    def __init__(self, workdir: Path, *, clock: Any = time.time) -> None:
        self.dir = workdir / API_DIR
        self._clock = clock
        self._secret: bytes | None = None
        self._cache: tuple[tuple[int, int], dict[str, TokenInfo]] | None = None
        self._lock = threading.Lock()

    # -- the secret ---------------------------------------------------------------------
    def secret(self) -> bytes:
        """The signing secret, created (mode 0600, never overwritten) on first use."""
        if self._secret is None:
            path = self.dir / SECRET_FILE
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(secrets.token_bytes(SECRET_BYTES))
            if path.stat().st_mode & 0o077:
                raise SecurityError(
                    f"{path} is readable by other users: chmod 600 it (anyone who reads it "
                    "can issue API tokens)"
                )
            secret = path.read_bytes()
            if len(secret) != SECRET_BYTES:
                raise SecurityError(f"{path} is not a {SECRET_BYTES}-byte token secret")
            self._secret = secret
        return self._secret

    # -- issue, list, revoke ------------------------------------------------------------
    def create(
        self, *, name: str, role: str, days: float, organisation: str = ""
    ) -> tuple[str, TokenInfo]:
        """A new token and its record; ``role`` is one of the Control API's roles."""
        if role not in CONTROL_ROLES:
            raise ConfigError(f"role: {role!r} is not one of {', '.join(CONTROL_ROLES)}")
        validate_name(role, name)
        if not days > 0:
            raise ConfigError(f"days: a token must live a positive number of days, got {days}")
        now = self._clock()
        info = TokenInfo(
            id=secrets.token_hex(8),
            name=name,
            role=role,
            organisation=organisation,
            issued_at=float(int(now)),
            expires_at=float(int(now + days * _DAY)),
        )
        with self._edit() as tokens:
            tokens[info.id] = info
        return self._sign(info), info

    def list(self) -> list[TokenInfo]:
        """Every token issued, oldest first (revoked and expired ones included)."""
        return sorted(self._tokens().values(), key=lambda t: (t.issued_at, t.id))

    def revoke(self, token_id: str) -> TokenInfo:
        """Mark ``token_id`` revoked (kept on the list); ConfigError if there is no such id."""
        with self._edit() as tokens:
            info = tokens.get(token_id)
            if info is None:
                raise ConfigError(f"token id: no token {token_id!r} (see `consortium token list`)")
            if info.revoked_at is None:
                info = TokenInfo(**{**info.as_dict(), "revoked_at": float(int(self._clock()))})
                tokens[token_id] = info
        return info

    # -- verify -------------------------------------------------------------------------
    def verify(self, token: str) -> TokenInfo:
        """The record of a valid token; :class:`InvalidToken` saying why otherwise (the
        message never quotes the token)."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise InvalidToken("not a Consortium API token")
        try:
            expected = _mac(self.secret(), f"{parts[0]}.{parts[1]}")
            mac = _unb64(parts[2])
            claims = json.loads(_unb64(parts[1]))
            token_id = str(claims["id"])
        except (ValueError, KeyError, TypeError, binascii.Error):  # UnicodeError too
            raise InvalidToken("malformed token") from None
        if not hmac.compare_digest(mac, expected):
            raise InvalidToken("token signature does not verify (not issued by this server)")
        info = self._tokens().get(token_id)
        if info is None:
            raise InvalidToken(f"token {token_id} is not on this server's token list")
        if info.revoked_at is not None:
            raise InvalidToken(f"token {token_id} ({info.name}) was revoked")
        if self._clock() >= info.expires_at:
            raise InvalidToken(f"token {token_id} ({info.name}) has expired")
        return info

    # -- files --------------------------------------------------------------------------
    def _sign(self, info: TokenInfo) -> str:
        claims = {
            "id": info.id,
            "name": info.name,
            "role": info.role,
            "org": info.organisation,
            "iat": int(info.issued_at),
            "exp": int(info.expires_at),
        }
        body = f"{PREFIX}.{_b64(json.dumps(claims, sort_keys=True).encode())}"
        return f"{body}.{_b64(_mac(self.secret(), body))}"

    def _tokens(self) -> dict[str, TokenInfo]:
        """The token list, re-read only when its file changed (revocations from the CLI)."""
        path = self.dir / TOKENS_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
            tokens = _read_tokens(path)
            self._cache = (stamp, tokens)
            return tokens

    @contextmanager
    def _edit(self) -> Iterator[dict[str, TokenInfo]]:
        """Read-modify-write the token list under a file lock (the CLI and the server may
        both write it); written to a temporary file and renamed, so readers never see
        half a list."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.dir / TOKENS_FILE
        with open(self.dir / (TOKENS_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tokens = _read_tokens(path) if path.exists() else {}
            yield tokens
            tmp = path.with_suffix(".tmp")
            document = {"tokens": [t.as_dict() for t in tokens.values()]}
            tmp.write_text(json.dumps(document, indent=1, sort_keys=True))
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)


def _read_tokens(path: Path) -> dict[str, TokenInfo]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return {t["id"]: TokenInfo.from_dict(t) for t in document["tokens"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a token list ({exc}); restore it from a backup") from exc


def _mac(secret: bytes, body: str) -> bytes:
    return hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
