"""Plain text-to-image sampling (DDIM on the respaced schedule, classifier-free guidance): what
`modeledit diffusion sample` shows and what Imagic generates with."""

from __future__ import annotations

from typing import Callable

import torch

from modeledit.diffusion.model import DiffusionModel
from modeledit.diffusion.schedule import Respaced


@torch.no_grad()
def sample(
    model: DiffusionModel, cond: torch.Tensor | None, n: int | None = None, *, steps: int = 50, guidance: float = 3.0,
    eta: float = 0.0, size: int | None = None, generator: torch.Generator | None = None,
    init: torch.Tensor | None = None, progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1]. ``cond``: text embeddings (B, S, D) (None for unconditional UNets);
    every random draw comes from ``generator`` (on the CPU, so a seed gives the same images on any device).
    ``init``: the starting noise (B, C, h, w) at the UNet's resolution, instead of a draw."""
    g = generator or torch.Generator().manual_seed(0)
    dev, dt = model.device, model.dtype
    B = len(cond) if cond is not None else (n or 1)
    side = (size or model.default_size) // model.latent_factor
    C = model.unet.config.in_channels
    uncond = model.encode_text([""]).expand(B, -1, -1) if model.conditional else None
    sched = Respaced(model.schedule, steps)
    clip = model.vae is None and bool(model.schedule.get("clip_sample", True))
    if init is not None and tuple(init.shape) != (B, C, side, side):
        raise ValueError(f"init has shape {tuple(init.shape)}, the sampler needs {(B, C, side, side)}")
    x = (torch.randn((B, C, side, side), generator=g) if init is None else init).to(dev, dt)
    for i in reversed(range(steps)):
        t = torch.full((B,), sched.timesteps[i], device=dev)
        eps = model.guided_eps(x, t, cond, uncond, guidance)
        x = sched.reverse(x, eps, i, torch.randn(x.shape, generator=g).to(dev, dt), eta, clip)
        if progress:
            progress(steps - i, steps)
    return ((model.to_image(x).float().clamp(-1, 1) + 1) / 2).cpu()
