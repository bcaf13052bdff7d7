"""Patch files: show, apply to a model (saving the originals), revert exactly."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from modeledit.cli.common import _errors, _load, console, err, patch_app
from modeledit.errors import PatchError

ORIGINALS = "modeledit-originals.safetensors"


@patch_app.command("show")
def patch_show(path: Path = typer.Argument(..., help="A patch file.")) -> None:
    """Print what a saved edit holds: requests, method, hyper-parameters, touched parameters (an in-context
    edit: its demonstrations, no parameter)."""
    from modeledit.api import load_edit

    with _errors():
        console.print_json(json.dumps(load_edit(path).describe(), default=str))


@patch_app.command("apply")
def patch_apply(
    path: Path = typer.Argument(..., help="A patch file."),
    model: str = typer.Option(..., help="The base model the patch was made on."),
    out: Path = typer.Option(..., help="Directory for the edited model (with the originals, for an exact revert)."),
) -> None:
    """Apply a patch to a model and save the edited model."""
    from safetensors.torch import save_file

    with _errors():
        patch = _weight_patch(path)
        lm = _load(model)
        applied = patch.apply(lm.model)
        _save_model(lm, out)
        save_file({k: v.contiguous().cpu() for k, v in applied.originals.items()}, str(out / ORIGINALS))
        console.print(f"edited model saved to {out} ({len(patch)} edit(s) applied)")


@patch_app.command("revert")
def patch_revert(
    path: Path = typer.Argument(..., help="The patch that was applied."),
    model: Path = typer.Option(..., help="Directory of the edited model (as written by `patch apply`)."),
    out: Path = typer.Option(..., help="Directory for the restored model."),
) -> None:
    """Undo a patch on an edited model: exact when the originals saved by `patch apply` are there."""
    from safetensors.torch import load_file

    with _errors():
        patch = _weight_patch(path)
        lm = _load(str(model))
        originals = load_file(str(model / ORIGINALS)) if (model / ORIGINALS).exists() else None
        if originals is None:
            err.print(f"[yellow]warning:[/] no {ORIGINALS} in {model}: reverting by subtraction (not bit-exact)")
        patch.revert(lm.model, originals)
        _save_model(lm, out)
        console.print(f"restored model saved to {out}")


def _weight_patch(path: Path):
    from modeledit.api import load_edit
    from modeledit.patch import Patch

    edit = load_edit(path)
    if not isinstance(edit, Patch):
        raise PatchError(f"{path} is {type(edit).__name__}: it changes no weight, so there is nothing to write into a model; "
                         "apply it in Python (with edit.applied(lm): ...)")
    return edit


def _save_model(lm, out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise PatchError(f"{out} exists and is not empty: choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)

