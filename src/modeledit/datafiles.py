"""Where the benchmark data lies: ``$MODELEDIT_DATA``, else ``../shared/data`` beside the working
directory or beside the checkout. Never copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

from modeledit.errors import DataError


def find_data(name: str, what: str, fix: str) -> Path:
    """The file or folder ``name`` in the data directory; a DataError saying ``fix`` when it is absent."""
    env = os.environ.get("MODELEDIT_DATA")
    places = [Path(env)] if env else []
    places += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    for d in places:
        if (d / name).exists():
            return d / name
    raise DataError(f"{what} was not found ({name} in $MODELEDIT_DATA or ../shared/data): {fix}")
