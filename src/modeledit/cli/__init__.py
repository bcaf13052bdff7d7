"""The command line: ``modeledit demo | edit | eval | compare | trace | trace-many | sweep | layer | stats |
models | patch | mend | classifier | diffusion | inpaint | imagic | ui``. A thin layer over ``modeledit.api``, one module per
family of commands; importing this package registers them all on ``app``."""

from __future__ import annotations

import sys

from modeledit.cli.common import app
from modeledit.cli import llm, bench, trace, patch, classifier, diffusion, mend, ui  # noqa: F401,E402  (registers the commands)

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
