"""What the command line runs for the diffusion family. Every input is read and checked before any
work starts, and outputs are written only once all of them are computed (nothing half-way)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from modeledit.diffusion.imagic import Imagic, check_alpha
from modeledit.diffusion.io import contact_sheet, output_paths, read_image, read_mask, save_image
from modeledit.diffusion.model import DiffusionModel
from modeledit.diffusion.repaint import RePaint
from modeledit.diffusion.request import ImagicRequest, InpaintRequest
from modeledit.diffusion.sample import sample
from modeledit.errors import RequestError


def _batch(paths: Sequence[Path], read: Callable[[Path], torch.Tensor], what: str) -> torch.Tensor:
    items = [read(p) for p in paths]
    sizes = {tuple(t.shape[-2:]) for t in items}
    if len(sizes) > 1:
        raise RequestError(what, f"the {what}s have different sizes {sorted(sizes)}: give one size per call")
    return torch.stack(items)


def inpaint_job(
    model: DiffusionModel, images: Sequence[Path], masks: Sequence[Path], out: Path, *, white_fills: bool = False,
    prompt: str | None = None, seed: int = 0, progress: Callable[[int, int], None] | None = None, **hparams: Any,
) -> dict:
    if not images:
        raise RequestError("image", "give at least one image")
    if len(masks) not in (1, len(images)):
        raise RequestError("mask", f"{len(masks)} masks for {len(images)} images: give one mask, or one per image")
    method = RePaint(**hparams)
    x = _batch(images, lambda p: read_image(p, model.image_channels), "image")
    keep = _batch(masks, lambda p: read_mask(p, white_fills), "mask")
    request = InpaintRequest(x, keep, prompt)
    request.check(model)
    paths = output_paths(out, len(images))
    t0 = time.perf_counter()
    result = method.edit(model, request, progress, torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - t0
    for r, p in zip(result, paths):
        save_image(r, p)
    outside = float((result - request.images).abs().mul(request.keep).max())
    return {**method.describe(), "model": model.name, "images": [str(p) for p in images], "outputs": [str(p) for p in paths],
            "seconds": seconds, "max_abs_error_outside_mask": outside, "seed": seed}


def imagic_job(
    model: DiffusionModel, image: Path, prompt: str, out: Path, *, alphas: Sequence[float] = (0.0, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4),
    seed: int = 0, progress: Callable[[str, int, int], None] | None = None, **hparams: Any,
) -> dict:
    """Hyper-parameters: the paper's defaults, then the settings the model ships for Imagic (the embedded
    model's were measured by benchmarks/diffusion_fashion.py), then ``hparams``."""
    for a in alphas:
        check_alpha(a)
    method = Imagic(**{**model.recommended.get("imagic", {}), **hparams})
    request = ImagicRequest(read_image(image, model.image_channels), prompt)
    request.check(model)
    edit = method.edit(model, request, progress, seed=seed)
    chosen = method.hparams.alpha
    sweep = sorted(set(alphas) | {chosen})
    images = edit.generate(model, sweep, seed=seed, progress=(lambda d, t: progress("C: generating", d, t)) if progress else None)
    out.mkdir(parents=True, exist_ok=True)
    save_image(images[sweep.index(chosen)], out / "result.png")
    contact_sheet([request.image[0]] + list(images), ["input"] + [f"α = {a:g}" for a in sweep], out / "sheet.png",
                  title=f"Imagic: {prompt!r}")
    edit.save(out / "edit")
    summary = {"method": "imagic", "model": model.name, "image": str(image), "prompt": prompt, "alpha": chosen,
               "alphas": sweep, "hparams": edit.patch.entries[0].hparams, "info": edit.info, "seed": seed}
    (out / "imagic.json").write_text(json.dumps(summary, indent=1))
    return summary


def sample_job(model: DiffusionModel, prompts: Sequence[str], out: Path, *, n: int = 8, steps: int = 50,
               guidance: float = 3.0, seed: int = 0, progress: Callable[[int, int], None] | None = None) -> Path:
    if out.suffix.lower() != ".png":
        raise RequestError("out", f"{out} must be a .png path")
    if not model.conditional and any(prompts):
        raise RequestError("prompt", f"{model.name} is not text-conditioned: leave the prompt out")
    g = torch.Generator().manual_seed(seed)
    images, titles = [], []
    for p in prompts or [""]:
        cond = model.encode_text([p] * n) if model.conditional else None
        images += list(sample(model, cond, n, steps=steps, guidance=guidance, generator=g, progress=progress))
        titles += [p or "sample"] * n
    return contact_sheet(images, titles, out, columns=n)

