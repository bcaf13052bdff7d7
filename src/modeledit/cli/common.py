"""What every command shares: the app and its sub-apps, the consoles, one-line errors, progress bars."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from modeledit.errors import ModelEditError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Edit trained models: change one fact, keep the rest.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate an editing method on a benchmark.")
patch_app = typer.Typer(no_args_is_help=True, help="Show, apply and revert saved patches.")
app.add_typer(eval_app, name="eval")
app.add_typer(patch_app, name="patch")
classifier_app = typer.Typer(no_args_is_help=True, help="Editable Neural Networks: train classifiers and edit them.")
app.add_typer(classifier_app, name="classifier")
diffusion_app = typer.Typer(no_args_is_help=True, help="Diffusion models: sample from the embedded text-conditioned model.")
app.add_typer(diffusion_app, name="diffusion")
console = Console()
err = Console(stderr=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens (INFO).")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@contextmanager
def _errors() -> Iterator[None]:
    """Print modeledit's own errors as one clear line and exit with status 2."""
    try:
        yield
    except ModelEditError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")  # messages hold brackets (modeledit[scale], JSON)
        raise typer.Exit(2) from None


@contextmanager
def _bar(description: str, unit: str = "") -> Iterator:
    """A progress callback ``(done, total)``; the bar appears at the first report, so work that turns out
    to be cached shows no bar at all."""
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    shown: dict = {}

    def update(done: int, total: int) -> None:
        if not shown:
            shown["progress"] = Progress(*cols, console=err)
            shown["progress"].start()
            shown["task"] = shown["progress"].add_task(description, total=total)
        shown["progress"].update(shown["task"], completed=done, total=total)

    try:
        yield update
    finally:
        if shown:
            shown["progress"].stop()


def _load(model: str, device_map: str | None = None, dtype: str | None = None):
    from transformers.utils import logging as hf_logging

    from modeledit.llm.model import load_model

    hf_logging.disable_progress_bar()  # the CLI shows its own status line
    with err.status(f"loading {model} ..."):
        return load_model(model, device_map=device_map, dtype=dtype)

