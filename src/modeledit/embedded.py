"""Where the checkpoints shipped inside the package lie (importing this imports nothing heavy)."""

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
JUDGE = WEIGHTS / "fashion-judge"  # the Fashion-MNIST classifier: Imagic's judge, the UI's default classifier
TINY_DIFFUSION = WEIGHTS / "tiny-fashion-diffusion"  # the text-conditioned DDPM trained here
