"""What a node agrees to run: its policy file (TOML), and the checks it makes with it.

A hospital's security officer writes the policy; the node enforces it on every run:

* ``[trust] publishers``: the publisher keys (``*.pub``) whose signatures it accepts;
* ``[[allow]]``: the apps it runs, by name and version or by an exact bundle SHA-256;
* ``[limits]``: the most rounds, the largest model, the task kinds it answers;
* ``[sandbox]``: what the app process may read besides its own code (``read``: the
  data the node grants it), and its ``memory`` and ``cpu-seconds`` limits.

:meth:`AppPolicy.admit` verifies a run's bundle in memory before anything of it is
written or imported; :meth:`AppPolicy.check_task` checks each task before the app runs.
A refusal is a :class:`PolicyRefused` whose ``reason`` is a stable code. Without a
policy file a node runs its own local app folders by name (development), or, behind a
loudly-warned flag, whatever the server sends (:class:`NodePolicy`).
"""

from __future__ import annotations

import re
import shutil
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consortium.apps.bundle import BundleRejected, extract_bundle
from consortium.apps.manifest import load_app_spec
from consortium.apps.publisher_keys import PublicKey, load_trusted_keys
from consortium.apps.signing import VerifiedBundle, verify_bundle
from consortium.core.errors import ConfigError, SecurityError
from consortium.core.fleet_info import RunBundle
from consortium.core.message import Message
from consortium.sandbox.confine import SandboxLimits

MIB = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}  # fmt: skip


class PolicyRefused(SecurityError):
    """The node's policy refuses a run's bundle or one of its tasks.

    ``reason`` is a :func:`~consortium.apps.signing.verify_bundle` code (``unsigned``,
    ``untrusted-key``, ``file-mismatch``, ...) or one of the policy's own: ``not-allowed``,
    ``not-pinned``, ``kind-not-allowed``, ``too-many-rounds``, ``model-too-large``,
    ``no-policy``. The message is the node's own words, safe to send to the server.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    @classmethod
    def own(cls, reason: str, detail: str) -> PolicyRefused:
        """A refusal of the policy's own (not a bundle check): ``refused by ... (reason)``."""
        return cls(reason, f"refused by the node's policy ({reason}): {detail}")


# -- the file -------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, strict=True)


class TrustSection(_Strict):
    """``[trust]``: a folder of trusted ``*.pub`` keys, one ``.pub`` file, or a list of them."""

    publishers: str | list[str]


class AllowEntry(_Strict):
    """One ``[[allow]]`` entry: an app by name and version, or an exact build by SHA-256.

    Every field given must match; ``sha256`` alone allows one build of any app.
    """

    name: str | None = Field(default=None, min_length=1)
    version: str | None = Field(default=None, min_length=1)
    sha256: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> AllowEntry:
        if self.sha256 is not None and not _HEX64.match(self.sha256):
            raise ValueError(f"sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        if self.sha256 is None and (self.name is None or self.version is None):
            raise ValueError("an [[allow]] entry needs name and version, or sha256")
        return self

    def matches(self, verified: VerifiedBundle) -> bool:
        """Whether ``verified`` is this entry's app (every field given agrees)."""
        return (
            (self.name is None or self.name == verified.app_name)
            and (self.version is None or self.version == verified.app_version)
            and (self.sha256 is None or self.sha256 == verified.sha256)
        )

    def describe(self) -> str:
        """How the entry reads in a refusal: ``heart-disease 1.0.0`` or ``sha256 3f2a…``."""
        parts = [p for p in (self.name, self.version) if p is not None]
        if self.sha256 is not None:
            parts.append(f"sha256 {self.sha256}")
        return " ".join(parts)


class LimitsSection(_Strict):
    """``[limits]``: each one unset means no limit."""

    max_rounds: int | None = Field(default=None, ge=0, alias="max-rounds")
    max_model_mb: float | None = Field(default=None, gt=0, alias="max-model-mb")
    kinds: list[str] | None = None


class SandboxSection(_Strict):
    """``[sandbox]``: what the app process may read beyond its own code, and its limits.

    ``memory`` is bytes or a size such as ``"8GiB"`` (``"unlimited"``: the operating
    system's own; a GPU app may need it); unset, it is 16 GiB.
    """

    read: list[str] = Field(default_factory=list)
    memory: int | str | None = None
    cpu_seconds: int | None = Field(default=None, gt=0, alias="cpu-seconds")


class PolicyFile(_Strict):
    """The policy file as written."""

    trust: TrustSection
    allow: list[AllowEntry] = Field(min_length=1)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    sandbox: SandboxSection = Field(default_factory=SandboxSection)


# -- the loaded policy ----------------------------------------------------------------


@dataclass(frozen=True)
class AppPolicy:
    """A loaded policy file: the keys it trusts, the apps it allows, its limits."""

    source: Path
    publishers: tuple[PublicKey, ...]
    allow: tuple[AllowEntry, ...]
    max_rounds: int | None = None
    max_model_bytes: int | None = None
    #: the task kinds this node answers (None: every kind)
    kinds: frozenset[str] | None = None
    #: ``[sandbox] read``: trees the app process may read (resolved, existing)
    sandbox_read: tuple[Path, ...] = ()
    #: ``[sandbox]`` memory and cpu-seconds
    sandbox_limits: SandboxLimits = field(default_factory=SandboxLimits)

    def admit(self, bundle: bytes) -> VerifiedBundle:
        """Verify ``bundle`` (in memory) and check it against ``[[allow]]``, or refuse it."""
        try:
            verified = verify_bundle(bundle, self.publishers)
        except BundleRejected as exc:
            raise PolicyRefused(exc.reason, str(exc)) from exc
        if any(entry.matches(verified) for entry in self.allow):
            return verified
        what = f"{verified.app_name} {verified.app_version} (sha256 {verified.sha256})"
        allowed = "; ".join(entry.describe() for entry in self.allow)
        pinned = [
            e for e in self.allow if e.sha256 is not None and e.name in (None, verified.app_name)
        ]
        reason = "not-pinned" if pinned else "not-allowed"
        raise PolicyRefused.own(
            reason, f"app {what} is not in the node's allow list (it allows: {allowed})"
        )

    def check_task(self, task: Message) -> None:
        """Refuse a task of a kind, round or model size the limits do not allow."""
        meta = task.metadata
        if self.kinds is not None and meta.kind not in self.kinds:
            kinds = ", ".join(sorted(self.kinds)) or "none"
            raise PolicyRefused.own(
                "kind-not-allowed", f"task kind {meta.kind!r} is not one it answers ({kinds})"
            )
        if self.max_rounds is not None and meta.round > self.max_rounds:
            raise PolicyRefused.own(
                "too-many-rounds", f"round {meta.round} is past its max-rounds {self.max_rounds}"
            )
        size = sum(a.nbytes for a in task.content.arrays.values()) if task.content else 0
        if self.max_model_bytes is not None and size > self.max_model_bytes:
            raise PolicyRefused.own(
                "model-too-large",
                f"the task's model is {size / MIB:.1f} MiB, over its max-model-mb "
                f"{self.max_model_bytes / MIB:g}",
            )


def load_policy(path: Path | str) -> AppPolicy:
    """Read and validate a node policy file; relative paths resolve against its folder."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read node policy {file}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: not a valid TOML node policy: {exc}") from exc
    try:
        parsed = PolicyFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{file}: {_describe(exc)}") from exc
    folder = file.resolve().parent
    sources = parsed.trust.publishers
    keys = [
        key
        for source in ([sources] if isinstance(sources, str) else sources)
        for key in load_trusted_keys(folder / Path(source).expanduser())
    ]
    if not keys:
        raise ConfigError(f"{file}: [trust] publishers names no key")
    limits = parsed.limits
    read, sandbox_limits = _sandbox(file, folder, parsed.sandbox)
    return AppPolicy(
        source=file.resolve(),
        publishers=tuple(keys),
        allow=tuple(parsed.allow),
        max_rounds=limits.max_rounds,
        max_model_bytes=None if limits.max_model_mb is None else int(limits.max_model_mb * MIB),
        kinds=None if limits.kinds is None else frozenset(limits.kinds),
        sandbox_read=read,
        sandbox_limits=sandbox_limits,
    )


def _sandbox(
    file: Path, folder: Path, section: SandboxSection
) -> tuple[tuple[Path, ...], SandboxLimits]:
    """The ``[sandbox]`` table's read paths (resolved against the policy's folder; each
    must exist) and limits."""
    read = []
    for entry in section.read:
        path = (folder / Path(entry).expanduser()).resolve()
        if not path.exists():
            raise ConfigError(f"{file}: key 'sandbox.read': {entry!r} does not exist")
        read.append(path)
    memory = SandboxLimits().memory_bytes
    if section.memory is not None:
        try:
            memory = parse_size(section.memory)
        except ValueError as exc:
            raise ConfigError(f"{file}: key 'sandbox.memory': {exc}") from exc
    return tuple(read), SandboxLimits(memory_bytes=memory, cpu_seconds=section.cpu_seconds)


def parse_size(value: int | str) -> int | None:
    """Bytes from ``8589934592``, ``"8GiB"``, ``"512 MiB"`` or ``"8GB"``; None for
    ``"unlimited"``. Raises ValueError naming what it got."""
    if isinstance(value, str) and value.strip().lower() == "unlimited":
        return None
    match = _SIZE.match(value) if isinstance(value, str) else None
    size = value if isinstance(value, int) else None
    if match is not None:
        size = int(float(match[1]) * _UNITS[(match[2] or "").lower()])
    if size is None or size <= 0:
        raise ValueError(
            f"expected a positive number of bytes, a size such as '8GiB', or 'unlimited'; "
            f"got {value!r}"
        )
    return size


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            problems.append(f"missing key '{loc}'")
        elif err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{loc}'")
        else:
            where = f"key '{loc}': " if loc else ""
            problems.append(f"{where}{err['msg']} (got {err.get('input')!r})")
    return "; ".join(problems)


# -- where a run's code comes from ----------------------------------------------------


@dataclass
class NodePolicy:
    """What this node agrees to run: a policy file, its own app folders, or (development
    only) whatever the server sends."""

    #: app name -> local app folder; such apps run from the node's own copy (development)
    local_apps: dict[str, Path] = field(default_factory=dict)
    #: run app code the server sends, unverified (development only)
    trust_server_apps: bool = False
    #: the policy file: only signed, allowed bundles run, within its limits
    approved: AppPolicy | None = None

    def app_dir(self, bundle: RunBundle, apps_root: Path) -> tuple[Path, str]:
        """The folder holding the run's code and its client entry point; a bundle from
        the server is verified (with a policy) and extracted fresh, by its SHA-256."""
        if self.approved is not None:
            verified = self.approved.admit(bundle.bundle)
            app_dir = _extract_fresh(bundle.bundle, apps_root / verified.sha256)
            return app_dir, load_app_spec(app_dir).manifest.app.client
        local = self.local_apps.get(bundle.app_name)
        if local is not None:
            return local.resolve(), bundle.client_entry
        if self.trust_server_apps:
            app_dir = _extract_fresh(bundle.bundle, apps_root / bundle.bundle_sha256)
            return app_dir, bundle.client_entry
        raise PolicyRefused.own(
            "no-policy",
            f"app {bundle.app_name!r} is not one of this node's local apps, and it has no "
            "policy file (consortium node --policy FILE) to check a signed bundle against",
        )

    def check_task(self, task: Message) -> None:
        """The policy file's per-task limits (none without a policy file)."""
        if self.approved is not None:
            self.approved.check_task(task)


def _extract_fresh(bundle: bytes, target: Path) -> Path:
    """Extract ``bundle`` into ``target``, replacing whatever was there, all or nothing."""
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    try:
        extract_bundle(bundle, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target.resolve()
