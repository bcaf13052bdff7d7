"""Editable Neural Networks on Fashion-MNIST, this machine: the issue's figures, side by side in one run.

Trains the default CNN editably and, with the same data, seed and epochs, normally (its editor's step
size tuned on held-out training images), then applies N single edits (random test images relabelled to
random other classes, each from the unedited model) to both, and a sequence of edits. Prints:
- base accuracy of each and the cost of editable training in points (target ≤ 1.5);
- success rate within 10 steps (target ≥ 99%), mean steps, drawdown of each and their ratio (target ≥ 3×);
- training minutes (target < 30) and seconds per edit (target < 0.05).

    python benchmarks/enn_fashion_mnist.py [--epochs 20] [--edits 1000] [--sequential 50] [--edit-coef 0.1 --loc-coef 0.1] [--out runs/bench-enn]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from modeledit.classifier.jobs import eval_job, train_job
from modeledit.classifier.train import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--sequential", type=int, default=50)
    ap.add_argument("--edit-coef", type=float, default=TrainConfig.edit_coef)
    ap.add_argument("--loc-coef", type=float, default=TrainConfig.loc_coef)
    ap.add_argument("--out", default="runs/bench-enn")
    args = ap.parse_args()
    out = Path(args.out)

    t = time.perf_counter()
    trained = train_job("fashion-mnist", out / "model", editable=True, config=TrainConfig(epochs=args.epochs, edit_coef=args.edit_coef, loc_coef=args.loc_coef))
    train_minutes = (time.perf_counter() - t) / 60
    s = eval_job(out / "model", out / "eval", n_edits=args.edits, sequential=args.sequential)
    m, b = s["model"], s["baseline"]
    acc_m, acc_b = 100 * (1 - m["base_error"]), 100 * (1 - b["base_error"])
    print(f"{'':34} {'editable training':>18} {'normal + fine-tuning':>21}")
    print(f"{'base accuracy (%)':34} {acc_m:18.2f} {acc_b:21.2f}")
    print(f"{'editor step size':34} {m['edit_lr']:18.3g} {b['edit_lr']:21.3g}")
    print(f"{'success rate (≤10 steps, %)':34} {100 * m['success_rate']:18.2f} {100 * b['success_rate']:21.2f}")
    print(f"{'mean steps':34} {m['mean_steps']:18.2f} {b['mean_steps']:21.2f}")
    print(f"{'drawdown (points of test error)':34} {100 * m['drawdown']:18.3f} {100 * b['drawdown']:21.3f}")
    print(f"{'seconds per edit (median)':34} {m['seconds_per_edit']:18.4f} {b['seconds_per_edit']:21.4f}")
    if args.sequential:
        print(f"{f'drawdown after {args.sequential} sequential edits':34} "
              f"{100 * m['sequential']['final_drawdown']:18.3f} {100 * b['sequential']['final_drawdown']:21.3f}")
    print(f"accuracy cost of editable training: {acc_b - acc_m:+.2f} points (target ≤ 1.5)")
    print(f"drawdown ratio (fine-tuning / editable): {b['drawdown'] / m['drawdown']:.1f}x (target ≥ 3)")
    print(f"training both models: {train_minutes:.1f} min (editable {trained['seconds'] / 60:.1f}, "
          f"normal {trained['baseline']['seconds'] / 60:.1f}; target < 30 for each)")
    (out / "bench.json").write_text(json.dumps({"train": trained, "eval": s, "train_minutes": train_minutes}, indent=2))
    print(f"written: {out / 'bench.json'}")


if __name__ == "__main__":
    main()
