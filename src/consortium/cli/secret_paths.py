"""Private keys are not written where ``git commit`` would publish them.

``consortium ca init``, ``ca issue`` and ``app keygen`` write private keys. Before
they do, :func:`refuse_git_exposure` looks for a git work tree around the target:
inside one, the target must be ignored by it (the project's ``.gitignore`` covers
``ca/``, ``credentials/`` and ``*.key``), or the operator says ``--allow-git-tree``.
A work tree is found by its ``.git`` entry; whether git ignores the path is asked of
git itself (``git check-ignore``), so every ignore file and setting counts.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from consortium.core.errors import ConfigError

__all__ = ["ALLOW_GIT_TREE_HELP", "git_exposure", "refuse_git_exposure"]

ALLOW_GIT_TREE_HELP = (
    "Write the private key even inside a git work tree that does not ignore it "
    "(by default refused: a commit would publish it)."
)


def git_exposure(path: Path) -> str | None:
    """Why a secret written at ``path`` could be committed (None: it could not)."""
    target = path.absolute()
    root = next((p for p in (target, *target.parents) if (p / ".git").exists()), None)
    if root is None:
        return None
    git = shutil.which("git")
    if git is None:
        return f"{path} is inside the git work tree {root} (no git here to ask if it is ignored)"
    asked = subprocess.run(
        [git, "-C", str(root), "check-ignore", "--quiet", "--no-index", str(target)],
        capture_output=True,
        check=False,
    )
    if asked.returncode == 0:
        return None  # ignored
    return f"{path} is inside the git work tree {root}, which does not ignore it"


def refuse_git_exposure(option: str, paths: list[Path], allow: bool) -> None:
    """Raise :class:`ConfigError` naming ``option`` if a key in ``paths`` could be
    committed, unless ``allow`` (``--allow-git-tree``)."""
    if allow:
        return
    for path in paths:
        why = git_exposure(path)
        if why is not None:
            raise ConfigError(
                f"{option}: refusing to write a private key there: {why}, so a commit would "
                "publish it. Choose a folder outside the work tree, add it to .gitignore, "
                "or pass --allow-git-tree"
            )
