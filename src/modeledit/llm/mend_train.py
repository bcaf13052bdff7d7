"""Training MEND's editor (Mitchell et al. 2022): the loop, its checkpoints and its early stopping.

Each step takes the next ``batch_size`` training cases (a seeded shuffle per pass over the data), computes
their losses as single edits (``mend_step.py``) and takes one Adam step on the editor's networks (lr
``lr``) and one on its step sizes (lr ``lr_lr``), the gradient norm clipped at ``grad_clip`` — the
reference code's one edit per iteration with 10 accumulated, as one step of 10. Every ``val_every`` steps
(and before the first) the held-out cases are edited with the editor as it is (its statistics frozen);
the editor with the lowest held-out loss is kept in ``OUT/editor.safetensors``, and training stops after
``patience`` steps without a better one, or after ``max_steps`` (or ``max_minutes`` of this invocation).

Resumable: every ``checkpoint_every`` steps (and at each held-out check) the whole state — the editor,
both optimisers, the step, the curve, the best loss — is written atomically to
``OUT/checkpoint.safetensors``; a rerun continues from it without repeating a step, and, the batches being
a function of the step, ends where an uninterrupted run ends (tested). ``OUT/curve.png`` shows the losses.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from modeledit.errors import RequestError
from modeledit.llm.mend import edited_weights
from modeledit.llm.mend_data import TrainCase
from modeledit.llm.mend_editor import FILE, MENDEditor, default_editor_path
from modeledit.llm.mend_step import edit_step
from modeledit.llm.model import LanguageModel
from modeledit.report import peak_rss_mb, read_tensors, start_run, write_json, write_tensors

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class MENDTrainConfig:
    """MEND's defaults, from the paper and its code as EasyEdit ships it (hparams/MEND/*.yaml): the MLPs
    of the last three blocks; one shared network per weight shape with one hidden layer of rank 1920,
    identity initialisation and normalised inputs; Adam at lr 1e-6 for the networks and 1e-4 for the
    learnt step sizes (initially 1e-4); c_edit 0.1, c_loc 1.0; gradient norm clipped at 100; 10 edits per
    step; a held-out check every 1,000 edits, stopping after 20,000 edits without improvement, at most
    100,000 edits."""

    layers: tuple[int, ...] | None = None  # None: the last three blocks
    modules: tuple[str, ...] | None = None  # None: every linear map of those blocks' MLPs
    n_hidden: int = 1
    rank: int = 1920
    edit_lr: float = 1e-4  # each edited weight's step size α, at first (then learnt)
    lr: float = 1e-6  # Adam, the editor's networks
    lr_lr: float = 1e-4  # Adam, the step sizes
    c_edit: float = 0.1
    c_loc: float = 1.0
    grad_clip: float = 100.0
    batch_size: int = 10  # edits per step
    max_steps: int = 10_000
    val_every: int = 100
    val_size: int = 200  # held-out cases (at most a tenth of the file)
    patience: int = 2_000  # steps without a better held-out loss before stopping
    checkpoint_every: int = 100
    seed: int = 0
    max_minutes: float | None = None  # stop this invocation after so long (a rerun continues)

    def __post_init__(self) -> None:
        for name in ("n_hidden", "rank", "batch_size", "max_steps", "val_every", "val_size", "patience", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "n_hidden" else 1):
                raise RequestError(name, f"must be a {'non-negative' if name == 'n_hidden' else 'positive'} integer, got {v!r}")
        for name in ("edit_lr", "lr", "lr_lr", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < math.inf):
                raise RequestError(name, f"must be a positive finite number, got {v!r}")
        for name in ("c_edit", "c_loc"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < math.inf):
                raise RequestError(name, f"must be a non-negative finite number, got {v!r}")
        if self.max_minutes is not None and not (isinstance(self.max_minutes, (int, float)) and self.max_minutes > 0):
            raise RequestError("max_minutes", f"must be positive or None, got {self.max_minutes!r}")


# settings that only say when to stop or save: a rerun may change them and continue the same run
RESUMABLE = ("max_steps", "max_minutes", "checkpoint_every")


def batch_of(n_train: int, step: int, batch_size: int, seed: int) -> list[int]:
    """The training cases of step ``step``: consecutive slices of a seeded shuffle per pass over the data."""
    out = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, at = divmod(i, n_train)
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(order[at]))
    return out


def validate(lm: LanguageModel, editor: MENDEditor, cases: Sequence[TrainCase], config: MENDTrainConfig) -> dict[str, float]:
    """The held-out cases edited one by one with the editor as it is: mean edit loss, locality KL, total
    loss and the share of edits whose every target token is the top-1 prediction after the edit."""
    editor.eval()
    edit, loc, correct, before = [], [], [], []
    for b in range(0, len(cases), config.batch_size):
        r = edit_step(lm, editor, cases[b : b + config.batch_size], config.c_edit, config.c_loc, train=False)
        edit += r.edit
        loc += r.loc
        correct += r.correct
        before += r.edit_before
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"edit": mean(edit), "loc": mean(loc), "total": config.c_edit * mean(edit) + config.c_loc * mean(loc),
            "accuracy": mean([float(c) for c in correct]), "nll_before": mean(before)}


def _save_checkpoint(path: Path, editor: MENDEditor, opts: Sequence[torch.optim.Optimizer], state: dict[str, Any]) -> None:
    tensors = {f"editor/{k}": v for k, v in editor.state_dict().items()}
    groups = []
    for i, opt in enumerate(opts):
        sd = opt.state_dict()
        groups.append(sd["param_groups"])
        for p, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"opt{i}/{p}/{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    write_tensors(path, tensors, {"format": "modeledit.mend-checkpoint", "state": state, "param_groups": groups})


def _load_checkpoint(path: Path, editor: MENDEditor, opts: Sequence[torch.optim.Optimizer]) -> dict[str, Any]:
    header, tensors = read_tensors(path, "MEND training checkpoint")
    editor.load_state_dict({k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("editor/")})
    for i, opt in enumerate(opts):
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith(f"opt{i}/"):
                _, p, name = k.split("/")
                state.setdefault(int(p), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": header["param_groups"][i]})
    return header["state"]


def train_editor(
    lm: LanguageModel,
    train: Sequence[TrainCase],
    val: Sequence[TrainCase],
    out_dir: str | Path,
    config: MENDTrainConfig = MENDTrainConfig(),
    *,
    data: dict[str, Any] | None = None,
    install: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train an editor for ``lm`` on ``train`` (early stopping on ``val``) into ``out_dir``; resumable.
    ``install``: also make the best editor so far this model's default (``mend_editor.default_editor_path``).
    Returns the summary written to ``OUT/train.json``."""
    weights = edited_weights(lm, config.layers, config.modules)
    cfg = {k: v for k, v in asdict(config).items() if k not in RESUMABLE}
    run = {"kind": "mend-train", "model": lm.name, "model_identity": lm.identity, "config": cfg, "data": data or {},
           "train_cases": [c.case_id for c in train][:5] + [len(train)], "val_cases": [c.case_id for c in val][:5] + [len(val)]}
    out = start_run(out_dir, run)
    meta = {"model": lm.name, "model_identity": lm.identity, "data": data or {}, "config": cfg}
    editor = MENDEditor(weights, config.n_hidden, config.rank, config.edit_lr, config.seed, meta).to(lm.device)
    nets = [p for n, p in editor.named_parameters() if n != "edit_lrs"]
    opts = [torch.optim.Adam(nets, lr=config.lr), torch.optim.Adam([editor.edit_lrs], lr=config.lr_lr)]
    st = {"step": 0, "history": [], "validations": [], "best": None, "best_step": None, "done": False, "stopped": None, "seconds": 0.0}
    if (out / CHECKPOINT).exists():
        st = _load_checkpoint(out / CHECKPOINT, editor, opts)
        if st["done"] and str(st["stopped"]).startswith("max_steps") and st["step"] < config.max_steps:
            st["done"] = False  # a finished run given more steps continues
        log.info("resuming MEND training at step %d", st["step"])
    t0, seconds0 = time.perf_counter(), st["seconds"]

    def save() -> None:
        st["seconds"] = seconds0 + time.perf_counter() - t0
        st["peak_rss_mb"] = max(st.get("peak_rss_mb", 0.0), peak_rss_mb())  # over every run of the training
        _save_checkpoint(out / CHECKPOINT, editor, opts, st)

    def check() -> None:
        v = {"step": st["step"], **validate(lm, editor, list(val), config)}
        st["validations"].append(v)
        log.info("MEND step %d, held out: %s", st["step"], v)
        if st["best"] is None or v["total"] < st["best"]:
            st["best"], st["best_step"] = v["total"], st["step"]
            editor.save(out / FILE, {"training": {"step": st["step"], "validation": v}})

    if not st["validations"]:
        check()
        save()
    while not st["done"]:
        if st["step"] >= config.max_steps:
            st["done"], st["stopped"] = True, f"max_steps ({config.max_steps})"
            break
        if config.max_minutes is not None and time.perf_counter() - t0 > 60 * config.max_minutes:
            st["stopped"] = f"max_minutes ({config.max_minutes}) of this run; run again to continue"
            break
        editor.train()
        idx = batch_of(len(train), st["step"], config.batch_size, config.seed)
        r = edit_step(lm, editor, [train[i] for i in idx], config.c_edit, config.c_loc, train=True)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        r.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(editor.parameters()), config.grad_clip)
        for opt in opts:
            opt.step()
        st["step"] += 1
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        st["history"].append({"step": st["step"], "loss": float(r.loss.detach()), "edit": mean(r.edit), "loc": mean(r.loc),
                              "accuracy": mean([float(c) for c in r.correct]), "grad_norm": float(norm),
                              "edit_lr_mean": float(editor.edit_lrs.detach().mean())})
        at_check = st["step"] % config.val_every == 0 or st["step"] == config.max_steps
        if at_check:
            check()
            if st["step"] - st["best_step"] >= config.patience:
                st["done"], st["stopped"] = True, f"no better held-out loss for {config.patience} steps (early stopping)"
        if at_check or st["done"] or st["step"] % config.checkpoint_every == 0:
            save()
        if progress:
            progress(st["step"], config.max_steps)
    save()
    from modeledit.llm.mend_plot import plot_curve

    plot_curve(st, out / "curve.png", f"MEND training, {lm.name}" + (f", {data['file']}" if data and data.get("file") else ""))
    summary = {"model": lm.name, "model_identity": lm.identity, "data": data or {}, "steps": st["step"], "done": st["done"],
               "stopped": st["stopped"], "best_step": st["best_step"], "best_validation": next(v for v in st["validations"] if v["step"] == st["best_step"]),
               "first_validation": st["validations"][0], "train_cases": len(train), "val_cases": len(val), "seconds": st["seconds"],
               "peak_rss_mb": st["peak_rss_mb"], "editor": str(out / FILE), "curve": str(out / "curve.png"), "config": asdict(config)}
    if install:
        best = MENDEditor.load(out / FILE)
        summary["installed"] = str(best.save(default_editor_path(lm), {k: v for k, v in best.header.items() if k == "training"}))
    write_json(out / "train.json", summary)
    return summary
