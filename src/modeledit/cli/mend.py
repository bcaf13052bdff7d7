"""MEND commands: ``modeledit mend train``, a thin layer over ``api.train_mend``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from modeledit.cli.common import _bar, _errors, _load, app, console
from modeledit.cli.options import MODEL

mend_app = typer.Typer(no_args_is_help=True, help="MEND: train a model's hyper-network editor (then edit with --method mend).")
app.add_typer(mend_app, name="mend")


@mend_app.command("train")
def mend_train(
    data: Path = typer.Option(..., help="CounterFact (e.g. ../shared/data/counterfact-train.json) or zsRE (zsre-train-1k.json) cases."),
    out: Path = typer.Option(..., help="Output directory: editor.safetensors (the best editor), checkpoint.safetensors (resumable), "
                                       "curve.png, train.json."),
    model: str = MODEL,
    form: Optional[str] = typer.Option(None, help="counterfact or zsre (default: detected from the file)."),
    skip: int = typer.Option(0, help="Leave out the first N cases (e.g. 500: train on zsRE cases 500-999, evaluate on 0-499)."),
    limit: Optional[int] = typer.Option(None, help="Only N cases after --skip (the last tenth, at most val_size, held out)."),
    steps: Optional[int] = typer.Option(None, help="Most training steps (10 edits each; default: max_steps of MENDTrainConfig)."),
    minutes: Optional[float] = typer.Option(None, help="Stop this run after so many minutes (run again to continue)."),
    settings: list[str] = typer.Option([], "--set", help="Any field of MENDTrainConfig as name=value, e.g. --set lr_lr=1e-3."),
    install: bool = typer.Option(True, "--install/--no-install", help="Make the editor this model's default for --method mend."),
) -> None:
    """Train MEND's editor networks for the model's last MLPs (resumable: run the same command again)."""
    from modeledit.api import train_mend
    from modeledit.llm.method import parse_settings
    from modeledit.llm.mend_train import MENDTrainConfig

    with _errors():
        config = parse_settings(MENDTrainConfig, settings)
        if steps is not None:
            config["max_steps"] = steps
        if minutes is not None:
            config["max_minutes"] = minutes
        MENDTrainConfig(**config)  # bad settings fail before the model loads
        lm = _load(model)
        with _bar("MEND training", "steps") as bar:
            s = train_mend(lm, data, out, form=form, skip=skip, limit=limit, install=install, progress=bar, **config)
        first, best = s["first_validation"], s["best_validation"]
        table = Table(title=f"MEND on {s['model']}: {s['val_cases']} held-out edits ({s['train_cases']} training cases, {s['steps']} steps)")
        for col in ("held out", "edit loss", "locality KL", "targets top-1"):
            table.add_column(col, justify="right")
        for label, v in ((f"untrained (step {first['step']})", first), (f"best (step {best['step']})", best)):
            table.add_row(label, f"{v['edit']:.3f}", f"{max(v['loc'], 0.0):.4f}", f"{100 * v['accuracy']:.1f}%")
        console.print(table)
        console.print(f"stopped: {s['stopped']}; {s['seconds']:.0f} s of training, peak RSS {s['peak_rss_mb']:.0f} MiB")
        console.print(f"written: {s['editor']}, {s['curve']}, {Path(out) / 'train.json'}"
                      + (f"; installed as {s['model']}'s default editor ({s['installed']})" if s.get("installed") else ""))
