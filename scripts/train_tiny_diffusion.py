"""Train the embedded text-conditioned diffusion model on Fashion-MNIST and write it where modeledit
loads it from (``src/modeledit/weights/tiny-fashion-diffusion``). Resumes an interrupted run from
``--checkpoint``. ~45 minutes on 2 CPU cores with the defaults; pass ``--device cuda`` on a GPU.

    python scripts/train_tiny_diffusion.py [--steps 5000] [--batch-size 128] [--out DIR] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import logging

from modeledit.diffusion.text import TextEncoder
from modeledit.diffusion.tiny import EMBEDDED, TrainTinyConfig, save_tiny, train
from modeledit.images import load_fashion_mnist


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=TrainTinyConfig.steps)
    ap.add_argument("--batch-size", type=int, default=TrainTinyConfig.batch_size)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(EMBEDDED))
    ap.add_argument("--checkpoint", default="runs/train-tiny-diffusion")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = load_fashion_mnist()
    config = TrainTinyConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    ema, info = train(data.train.images, data.train.labels, TextEncoder(device=args.device), config,
                      device=args.device, checkpoint=args.checkpoint)
    print("written:", save_tiny(ema, config.model, args.out, info))


if __name__ == "__main__":
    main()
