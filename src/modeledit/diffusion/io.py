"""Images in and out: read an image or a mask with a clear error, write PNGs whole (a temporary file,
then a rename), and draw contact sheets."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from modeledit.errors import RequestError


def read_image(path: str | Path, channels: int, field: str = "image") -> torch.Tensor:
    """(C, H, W) float in [0, 1], converted to ``channels`` (1 = greyscale, 3 = RGB)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise RequestError(field, f"{path} does not exist")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            a = np.asarray(im, dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError) as exc:
        raise RequestError(field, f"{path} is not an image file PIL can read (PNG, JPEG, ...): {exc}") from exc
    t = torch.from_numpy(a.copy())
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)


def read_mask(path: str | Path, white_fills: bool = False) -> torch.Tensor:
    """(1, H, W) bool, True = keep. By default white keeps and black is filled (RePaint's convention);
    ``white_fills`` reads Stable Diffusion inpainting's (white = the region to fill)."""
    grey = read_image(path, 1, "mask")
    keep = grey > 0.5
    return ~keep if white_fills else keep


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) uint8, rounded to the nearest level."""
    a = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(to_uint8(image)).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def output_paths(out: str | Path, n: int) -> list[Path]:
    """``out`` for one image; ``stem-0.png``, ``stem-1.png``, ... for several."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise RequestError("out", f"{out} must be a .png path")
    return [out] if n == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]


def contact_sheet(images: Sequence[torch.Tensor], titles: Sequence[str], path: str | Path, columns: int | None = None,
                  title: str | None = None) -> Path:
    """One PNG with the images in a grid, each with its title."""
    from matplotlib.figure import Figure

    n = len(images)
    cols = columns or n
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows + (0.3 if title else 0)), dpi=100)
    for i, (im, t) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(rows, cols, i + 1)
        a = to_uint8(im)
        ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(t, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
