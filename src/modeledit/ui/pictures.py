"""Images in and out of the page: uploads read as the CLI reads files (same messages) and limited in
size, masks from the brush strokes of the image editor, Fashion-MNIST test images to start from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from modeledit.errors import RequestError
from modeledit.ui.session import Job, Session
from modeledit.ui.workspace import Workspace


def read_upload(path: str | None, channels: int, ws: Workspace, field: str = "image"):
    """An uploaded image as (C, H, W) in [0, 1]; refused when larger than the page takes."""
    from modeledit.diffusion.io import read_image

    if not path:
        raise RequestError(field, "give an image: upload one, or load a Fashion-MNIST test image")
    image = read_image(Path(path), channels, field)
    h, w = image.shape[-2:]
    side = ws.limits.max_image_side
    if max(h, w) > side:
        raise RequestError(field, f"is {w}×{h} pixels; this page takes images up to {side} pixels a side "
                                  "(use the command line for larger ones)")
    return image


def keep_mask(layers: Sequence[str] | None, shape: tuple[int, int]):
    """(1, H, W) bool, True = keep: every pixel that a brush stroke touched (alpha > 0 in any layer) is
    filled. A layer of another size than the image is an error naming the mask (as the CLI's)."""
    import numpy as np
    import torch
    from PIL import Image

    painted = np.zeros(shape, dtype=bool)
    for p in layers or []:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGBA"))[..., 3] > 0
        if a.shape != painted.shape:
            raise RequestError("mask", f"is {a.shape[1]}×{a.shape[0]} but the image is {shape[1]}×{shape[0]}: "
                                       "give a mask of the image's size")
        painted |= a
    return torch.from_numpy(~painted)[None]


def save_png(image, path: Path) -> str:
    """(C, H, W) in [0, 1], or (1, H, W) bool, as a PNG; returns the path as gradio wants it."""
    from modeledit.diffusion.io import save_image

    return str(save_image(image.float(), path))


def fashion_image(ws: Workspace, session: Session, index: Any, job: Job | None = None) -> tuple[str, int, str]:
    """Fashion-MNIST test image ``index`` saved as a PNG of this session's: (path, label, class name)."""
    data = ws.image_data("fashion-mnist", job)
    n = len(data.test)
    try:
        i = int(index)
    except (TypeError, ValueError):
        raise RequestError("index", f"{index!r} is not a test image number 0..{n - 1}") from None
    if not 0 <= i < n:
        raise RequestError("index", f"{i} is not a test image number 0..{n - 1}")
    label = int(data.test.labels[i])
    path = save_png(data.test.images[i], session.scratch(ws, "fashion") / f"fashion-mnist-test-{i}.png")
    return path, label, data.classes[label]
