"""RePaint (Lugmayr et al., CVPR 2022): inpaint with an unchanged pretrained DDPM. At each reverse step
the region to fill comes from the model and the kept region from the original image noised to that
step; after every ``jump_length`` steps the sample is pushed back up the chain and denoised again,
``jump_n_sample`` times in all, so that the two regions agree.

Rewritten rather than taken from diffusers' ``RePaintPipeline``, which rounds images to multiples of 8
and masks to 32 (a crash at 40×40): here any size is padded to what the UNet needs and cropped back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from modeledit.diffusion.model import DiffusionModel
from modeledit.diffusion.request import InpaintRequest
from modeledit.diffusion.schedule import Respaced
from modeledit.errors import RequestError, UnsupportedModelError


@dataclass
class RePaintHyperParams:
    steps: int = 250  # the paper's T
    jump_length: int = 10
    jump_n_sample: int = 10  # 1 = no resampling
    eta: float = 1.0  # 1 = the DDPM posterior, as in the paper
    guidance: float = 3.0  # classifier-free guidance scale, when a prompt is given to a text-conditioned model

    def __post_init__(self) -> None:
        for name in ("steps", "jump_length", "jump_n_sample"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise RequestError(name, f"must be a positive integer, got {v!r}")
        if not 0 <= self.eta <= 1:
            raise RequestError("eta", f"must lie in [0, 1], got {self.eta!r}")


def jump_schedule(steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The visited respaced indices, from steps-1 down to -1 (x_0), with the paper's jumps back up."""
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    t, ts = steps, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    return ts + [-1]


def unet_calls(hp: RePaintHyperParams) -> int:
    ts = jump_schedule(hp.steps, hp.jump_length, hp.jump_n_sample)
    return sum(b < a for a, b in zip(ts, ts[1:]))


class RePaint:
    name = "repaint"
    family = "diffusion"
    HyperParams = RePaintHyperParams

    def __init__(self, **hparams):
        self.hparams = RePaintHyperParams(**hparams)

    def prepare(self, model, progress=None) -> None:
        pass

    @torch.no_grad()
    def edit(
        self, model: DiffusionModel, request: InpaintRequest, progress: Callable[[int, int], None] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The inpainted images, (B, C, H, W) in [0, 1]; kept pixels are the originals exactly."""
        if model.vae is not None:
            raise UnsupportedModelError(f"{model.name}: RePaint here runs on pixel-space UNets; this model denoises VAE latents")
        request.check(model)
        hp = self.hparams
        g = generator or torch.Generator().manual_seed(0)
        dev, dt = model.device, model.dtype
        x0, keep = request.images * 2 - 1, request.keep.float()
        H, W = x0.shape[-2:]
        m = model.size_multiple
        ph, pw = -H % m, -W % m
        if ph or pw:  # reflect-pad to a size the UNet takes; the padding is to be filled, then cropped away
            x0 = F.pad(x0, (0, pw, 0, ph), mode="replicate")
            keep = F.pad(keep, (0, pw, 0, ph), value=0.0)
        x0, keep = x0.to(dev, dt), keep.to(dev, dt)
        cond = uncond = None
        if model.conditional:
            uncond = model.encode_text([""]).expand(len(x0), -1, -1)
            cond = model.encode_text([request.prompt]).expand(len(x0), -1, -1) if request.prompt else uncond
        scale = hp.guidance if request.prompt else 1.0
        sched = Respaced(model.schedule, hp.steps)
        clip = bool(model.schedule.get("clip_sample", True))
        rand = lambda: torch.randn(x0.shape, generator=g).to(dev, dt)
        ts = jump_schedule(hp.steps, hp.jump_length, hp.jump_n_sample)
        total, done = unet_calls(hp), 0
        x = rand()
        for a, b in zip(ts, ts[1:]):
            if b < a:
                t = torch.full((len(x),), sched.timesteps[a], device=dev)
                eps = model.guided_eps(x, t, cond, uncond, scale) if cond is not None else model.eps(x, t)
                unknown = sched.reverse(x, eps, a, rand(), hp.eta, clip)
                known = sched.noised(x0, b, rand())
                x = keep * known + (1 - keep) * unknown
                done += 1
                if progress:
                    progress(done, total)
            else:
                x = sched.forward(x, b, rand())
        out = ((x[..., :H, :W].float().clamp(-1, 1) + 1) / 2).cpu()
        k = request.keep.expand_as(out)
        # the last step already set kept pixels to x_0; this removes the rounding of the [-1, 1] round trip
        return torch.where(k, request.images.float(), out)

    def describe(self) -> dict:
        return {"method": self.name, "hparams": asdict(self.hparams), "unet_calls": unet_calls(self.hparams)}

