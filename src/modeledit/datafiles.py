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


def data_dir(given: str | Path | None, needs: str) -> Path:
    """The data directory of a benchmark script: ``given`` (its --data), else as ``find_data`` looks;
    a DataError unless it holds ``needs``."""
    if given is not None:
        if not (Path(given) / needs).exists():
            raise DataError(f"{needs} is not in {given}: pass the directory that holds it with --data")
        return Path(given)
    return find_data(needs, "the benchmark data", "pass --data DIR or set MODELEDIT_DATA").parent
