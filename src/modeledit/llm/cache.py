"""Where modeledit keeps what it computes once (converted models, statistics, editors, indexes)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of modeledit's caches: ``$MODELEDIT_CACHE``, else ``~/.cache/modeledit``."""
    root = os.environ.get("MODELEDIT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "modeledit"


def made_dir(p: Path) -> Path:
    """``p``, created with its parents if missing."""
    p.mkdir(parents=True, exist_ok=True)
    return p
