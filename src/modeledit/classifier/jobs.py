"""The two jobs behind ``modeledit classifier train`` and ``modeledit classifier eval``.

``train_job`` trains a classifier on a built-in data set, editably or not; with editable training it also
trains the same architecture normally (same data, same seed) into ``OUT/baseline``, whose editor step
size is tuned on held-out training images, so that ``eval_job`` can compare the two side by side.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from modeledit.images import Split, load_data
from modeledit.classifier.enn import ENN
from modeledit.classifier.evaluate import evaluate_edits, evaluate_sequence, random_edits, tune_edit_lr
from modeledit.classifier.model import Classifier, build, load_classifier
from modeledit.classifier.train import TrainConfig, loader_batches, train
from modeledit.report import start_run, write_json

log = logging.getLogger(__name__)

HELD_OUT = 5000  # training images kept out of training, to tune the baseline editor's step size


def _fit(data_name: str, config: TrainConfig, progress: Callable | None) -> Classifier:
    data = load_data(data_name)
    n_train = len(data.train) - min(HELD_OUT, len(data.train) // 10)
    train_split = Split(data.train.images[:n_train], data.train.labels[:n_train])
    held_out = Split(data.train.images[n_train:], data.train.labels[n_train:])
    clf = build("cnn", data.classes)
    n_batches = -(-n_train // config.batch_size)
    train(clf, loader_batches(train_split.images, train_split.labels, config.batch_size, config.seed), config, progress, n_batches)
    clf.info.update(data=data_name, test_error=clf.error(data.test.images, data.test.labels), n_train=n_train)
    if not config.editable:  # the fine-tuning editor's step size, tuned on images kept out of training
        clf.edit_lr, clf.info["edit_lr_tuning"] = tune_edit_lr(clf, ENN, held_out)
    return clf


def _written(clf: Classifier, path: Path) -> dict[str, Any]:
    return {"model": str(path), "test_error": clf.info["test_error"], "seconds": clf.info["training"]["seconds"],
            "edit_lr": clf.edit_lr}


def train_job(
    data: str, out: str | Path, *, editable: bool, baseline: bool = True, config: TrainConfig | None = None,
    progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
) -> dict[str, Any]:
    """Train (editably or not) into ``out``; with ``editable`` and ``baseline``, also a normal model into
    ``out/baseline``. ``progress(name)`` gives a progress callback per model trained. Returns what was written."""
    out = Path(out)
    config = config or TrainConfig()
    cfg = TrainConfig(**{**asdict(config), "editable": editable})
    clf = _fit(data, cfg, progress("editable training" if editable else "training") if progress else None)
    clf.save(out)
    written = _written(clf, out)
    if editable and baseline:
        base_cfg = TrainConfig(**{**asdict(config), "editable": False})
        base = _fit(data, base_cfg, progress("baseline training") if progress else None)
        base.save(out / "baseline")
        written["baseline"] = _written(base, out / "baseline")
    write_json(out / "train.json", written)
    return written


def eval_job(
    model_dir: str | Path, out: str | Path, *, n_edits: int = 1000, sequential: int = 0, seed: int = 0,
    max_steps: int = 10, progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
) -> dict[str, Any]:
    """``n_edits`` single edits of test images (each from the unedited model) on the model in
    ``model_dir`` and, when there, on its ``baseline``; resumable; writes ``out/summary.json``."""
    model_dir = Path(model_dir)
    models = {"model": load_classifier(model_dir)}
    if (model_dir / "baseline" / "classifier.json").exists():
        models["baseline"] = load_classifier(model_dir / "baseline")
    data = load_data(models["model"].info.get("data", "fashion-mnist"))
    run = {"kind": "classifier-eval", "model": str(model_dir.resolve()), "n_edits": n_edits, "seed": seed, "max_steps": max_steps}
    out = start_run(out, run)
    edits = random_edits(data.test, n_edits, len(data.classes), seed)
    summary: dict[str, Any] = {"data": data.name, "n_edits": n_edits, "max_steps": max_steps}
    for name, clf in models.items():
        method = ENN(max_steps=max_steps)
        trained = "editable training" if clf.info.get("training", {}).get("editable") else "normal training"
        s = evaluate_edits(clf, method, data.test, edits, out / f"edits-{name}.jsonl", progress(name) if progress else None)
        s.update(training=trained, edit_lr=clf.edit_lr)
        if sequential:
            s["sequential"] = evaluate_sequence(clf, method, data.test, edits[:sequential])
        summary[name] = s
    if "baseline" in summary and summary["model"]["drawdown"] > 0:
        summary["drawdown_ratio_baseline_over_model"] = summary["baseline"]["drawdown"] / summary["model"]["drawdown"]
    write_json(out / "summary.json", summary)
    return summary
