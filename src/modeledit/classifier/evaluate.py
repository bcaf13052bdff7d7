"""Judging classifier edits (Sinitsin et al. 2020, §4): many single edits, each from the unedited model
— random test images relabelled to random other classes — and, optionally, a sequence of edits applied
one after another.

Per edit: success (the new label wins on the patched weights), gradient steps, seconds, and the test
error with the edit applied. Summary: base error, success rate, drawdown (mean test-error increase over
the successful edits; failed edits are not applied), mean steps, seconds per edit. Records stream to a
JSON-lines file, so an interrupted run resumes.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from modeledit.images import Split
from modeledit.classifier.enn import ClassifierRequest
from modeledit.classifier.model import Classifier
from modeledit.report import CaseLog, mean, peak_rss_mb


def random_edits(test: Split, n: int, n_classes: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (test index, new label) pairs: distinct random images, each with a random other label."""
    if n > len(test):
        raise ValueError(f"{n} edits asked of {len(test)} test images")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=g)[:n].tolist()
    shift = torch.randint(1, n_classes, (n,), generator=g).tolist()
    return [(i, (int(test.labels[i]) + s) % n_classes) for i, s in zip(idx, shift)]


class TestError:
    """Test error of the classifier as it is now; runs only the head on cached trunk outputs when the
    editable parameters are the tail of a Sequential (edits cannot change the trunk's output)."""

    def __init__(self, clf: Classifier, test: Split):
        self.clf, self.test = clf, test
        split = clf.split()
        self.head = split[1] if split else clf.module
        with torch.no_grad():
            self.inputs = torch.cat([split[0](test.images[b : b + 1000].to(clf.device)) for b in range(0, len(test), 1000)]) \
                if split else test.images

    @torch.no_grad()
    def __call__(self) -> float:
        wrong = 0
        for b in range(0, len(self.test), 2000):
            pred = self.head(self.inputs[b : b + 2000].to(self.clf.device)).argmax(1).cpu()
            wrong += int((pred != self.test.labels[b : b + 2000]).sum())
        return wrong / len(self.test)


def _edit_and_measure(clf: Classifier, method: Any, split: Split, i: int, label: int, error: TestError) -> tuple[dict, float | None]:
    """One edit from the unedited model: its info, and the error with it applied (None if it failed)."""
    patch = method.edit(clf, ClassifierRequest(split.images[i], label))
    info = patch.entries[0].info
    if not info["success"]:
        return info, None
    with patch.applied(clf.module):
        return info, error()


def evaluate_edits(
    clf: Classifier,
    method: Any,
    test: Split,
    edits: Sequence[tuple[int, int]],
    log_path: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Single edits, each from the unedited model; resumable through ``log_path`` (JSON lines)."""
    error = TestError(clf, test)
    base = error()
    caselog = CaseLog(log_path, key="edit_id")
    done = len([e for e in range(len(edits)) if e in caselog.done])
    for e, (i, label) in enumerate(edits):
        if e in caselog.done:
            continue
        info, after = _edit_and_measure(clf, method, test, i, label, error)
        caselog.write({"edit_id": e, "index": i, "label": label, "success": info["success"], "steps": info["gradient_steps"],
                       "loss_last": info["loss_last"], "seconds": info["seconds"], "error_after": after})
        done += 1
        if progress:
            progress(done, len(edits))
    records = [r for r in caselog.records if r["edit_id"] < len(edits)]
    ok = [r for r in records if r["success"]]
    return {
        "n_edits": len(records),
        "base_error": base,
        "success_rate": len(ok) / len(records) if records else float("nan"),
        "drawdown": mean(r["error_after"] - base for r in ok),
        "mean_steps": mean(r["steps"] for r in records),
        "seconds_per_edit": statistics.median(r["seconds"] for r in records) if records else float("nan"),
        "seconds_per_edit_max": max((r["seconds"] for r in records), default=float("nan")),
        "failed_edits": [{"edit_id": r["edit_id"], "loss_last": r["loss_last"]} for r in records if not r["success"]][:20],
        "peak_rss_mb": peak_rss_mb(),
    }


def evaluate_sequence(clf: Classifier, method: Any, test: Split, edits: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Edits applied one after another (each computed on the model as already edited), composed into one
    patch; the cumulative drawdown after each, how many earlier edits still hold at the end. The model's
    weights are restored exactly at the end."""
    error = TestError(clf, test)
    base = error()
    applied, patches, curve = [], [], []
    try:
        for i, label in edits:
            patch = method.edit(clf, ClassifierRequest(test.images[i], label))
            if patch.entries[0].info["success"]:
                applied.append(patch.apply(clf.module))
                patches.append(patch)
            curve.append(error() - base)
        with torch.no_grad():
            x = torch.stack([test.images[i] for i, _ in edits]).to(clf.device)
            held = (clf.module(x).argmax(1).cpu() == torch.tensor([label for _, label in edits])).float().mean()
    finally:
        for a in reversed(applied):
            a.revert()
    return {"n_edits": len(edits), "succeeded": len(patches), "cumulative_drawdown": curve,
            "final_drawdown": curve[-1] if curve else 0.0, "still_holding_at_end": float(held)}


def tune_edit_lr(
    clf: Classifier, method_cls: Any, held_out: Split, grid: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0),
    n_edits: int = 100, seed: int = 1, max_steps: int = 10,
) -> tuple[float, list[dict[str, float]]]:
    """The editor's step size for a normally trained model (the fine-tuning baseline), chosen on held-out
    training images, never on test images: the step size with the least drawdown among those whose edits
    succeed ≥ 99% of the time within ``max_steps`` (else the most successful one)."""
    edits = random_edits(held_out, n_edits, clf.n_classes, seed)
    error = TestError(clf, held_out)
    base = error()
    table = []
    for lr in grid:
        method = method_cls(lr=lr, max_steps=max_steps)
        after = [_edit_and_measure(clf, method, held_out, i, label, error)[1] for i, label in edits]
        done = [a for a in after if a is not None]
        table.append({"lr": lr, "success_rate": len(done) / len(edits), "drawdown": mean(a - base for a in done)})
    good = [r for r in table if r["success_rate"] >= 0.99]
    best = min(good, key=lambda r: r["drawdown"]) if good else max(table, key=lambda r: r["success_rate"])
    return best["lr"], table
