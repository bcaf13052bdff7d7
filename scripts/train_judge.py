"""Train the judge that scores diffusion edits offline: modeledit's default CNN, trained normally on
Fashion-MNIST (20 epochs, seed 0), written to ``src/modeledit/weights/fashion-judge`` (~2 min on 2 cores).

    python scripts/train_judge.py [--out DIR] [--epochs 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from modeledit.classifier.jobs import train_job
from modeledit.classifier.train import TrainConfig

JUDGE = Path(__file__).resolve().parents[1] / "src" / "modeledit" / "weights" / "fashion-judge"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(JUDGE))
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    w = train_job("fashion-mnist", args.out, editable=False, baseline=False, config=TrainConfig(epochs=args.epochs))
    print(f"judge: test accuracy {100 * (1 - w['test_error']):.2f}% → {w['model']}")


if __name__ == "__main__":
    main()
