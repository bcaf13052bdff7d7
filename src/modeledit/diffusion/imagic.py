"""Imagic (Kawar et al., CVPR 2023): edit one real image toward a text, in three stages.

A. Optimise the target text's embedding e so that the frozen model denoises the image well: e_opt.
B. Fine-tune the UNet on the image with e_opt fixed (the change is returned as a Patch of dense deltas).
C. Generate from e = α·e_target + (1 − α)·e_opt with the fine-tuned UNet.

Unlike the community Imagic pipeline, every random draw comes from the caller's generator (a seed gives
the same result) and the UNet is back in eval mode, with its original weights, when ``edit`` returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from modeledit.diffusion.model import DiffusionModel
from modeledit.diffusion.request import ImagicRequest
from modeledit.diffusion.sample import sample
from modeledit.diffusion.schedule import alphas_cumprod
from modeledit.errors import EditFailedError, RequestError
from modeledit.delta import Delta
from modeledit.patch import Patch

log = logging.getLogger(__name__)

ALPHA_RANGE = (0.0, 2.0)  # beyond 2 the interpolation extrapolates far past the target text


@dataclass
class ImagicHyperParams:
    embed_steps: int = 1000  # stage A: Adam steps on the text embedding (paper: 500–1000 at 1e-3)
    embed_lr: float = 1e-3
    tune_steps: int = 1500  # stage B: Adam steps on the UNet (paper: 1000–1500)
    tune_lr: float = 1e-6  # the paper's rate for Imagen / Stable Diffusion; a small UNet needs a larger one
    batch: int = 1  # noise levels drawn per step
    alpha: float = 0.9  # stage C: interpolation weight of the target text
    guidance: float = 3.0
    sample_steps: int = 50

    def __post_init__(self) -> None:
        for name in ("embed_steps", "tune_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise RequestError(name, f"must be a non-negative integer, got {v!r}")
        for name in ("batch", "sample_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise RequestError(name, f"must be a positive integer, got {v!r}")
        for name in ("embed_lr", "tune_lr"):
            if not getattr(self, name) >= 0:
                raise RequestError(name, f"must be non-negative, got {getattr(self, name)!r}")
        check_alpha(self.alpha)


def check_alpha(alpha: float) -> float:
    lo, hi = ALPHA_RANGE
    if not lo <= alpha <= hi:
        raise RequestError("alpha", f"{alpha} is outside {lo}..{hi} (0 = the reconstruction, 1 = the target text; the paper uses 0.6–1.2)")
    return alpha


def _denoising_loss(model: DiffusionModel, x0: torch.Tensor, cond: torch.Tensor, abar: torch.Tensor,
                    batch: int, g: torch.Generator) -> torch.Tensor:
    T = len(abar)
    t = torch.randint(0, T, (batch,), generator=g)
    noise = torch.randn((batch,) + tuple(x0.shape[1:]), generator=g).to(x0.device, x0.dtype)
    a = abar[t].to(x0.device, x0.dtype).view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return torch.nn.functional.mse_loss(model.eps(xt, t.to(x0.device), cond.expand(batch, -1, -1)), noise)


def _adam(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], lr: float, steps: int, stage: str,
          progress: Callable[[str, int, int], None] | None) -> list[float]:
    """``steps`` Adam steps on ``params``; the losses, one a step."""
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for s in range(steps):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(stage, s + 1, steps)
    return losses


@dataclass
class ImagicEdit:
    """The outcome of stages A and B: what stage C generates from."""

    patch: Patch  # the UNet fine-tuning as dense deltas (apply / revert / save like any patch)
    e_opt: torch.Tensor  # (1, S, D)
    e_target: torch.Tensor  # (1, S, D)
    hparams: ImagicHyperParams
    info: dict

    def embedding(self, alpha: float) -> torch.Tensor:
        check_alpha(alpha)
        return alpha * self.e_target + (1 - alpha) * self.e_opt

    def generate(self, model: DiffusionModel, alphas: Sequence[float] | float | None = None, *, n: int = 1,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Images (len(alphas)·n, C, H, W) in [0, 1], the same starting noise for every α."""
        alphas = [self.hparams.alpha] if alphas is None else ([alphas] if isinstance(alphas, (int, float)) else list(alphas))
        for a in alphas:
            check_alpha(a)
        size = int(self.patch.entries[0].request["size"][0])
        hp = self.hparams
        side, C = size // model.latent_factor, model.unet.config.in_channels
        init = torch.randn((n, C, side, side), generator=torch.Generator().manual_seed(seed))
        cond = torch.cat([self.embedding(a).to(model.device, model.dtype).expand(n, -1, -1) for a in alphas])
        with self.patch.applied(model.unet):  # every α in one batch, from the same starting noise
            return sample(model, cond, steps=hp.sample_steps, guidance=hp.guidance, size=size, init=init.repeat(len(alphas), 1, 1, 1),
                          generator=torch.Generator().manual_seed(seed), progress=progress)

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.patch.save(d / "unet-patch.safetensors")
        save_file({"e_opt": self.e_opt.float().contiguous().cpu(), "e_target": self.e_target.float().contiguous().cpu()},
                  str(d / "embeddings.safetensors"))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "ImagicEdit":
        d = Path(directory)
        patch = Patch.load(d / "unet-patch.safetensors")
        e = load_file(str(d / "embeddings.safetensors"))
        entry = patch.entries[0]
        return cls(patch, e["e_opt"], e["e_target"], ImagicHyperParams(**entry.hparams), entry.info)


class Imagic:
    name = "imagic"
    family = "diffusion"
    HyperParams = ImagicHyperParams

    def __init__(self, **hparams):
        self.hparams = ImagicHyperParams(**hparams)

    def prepare(self, model, progress=None) -> None:
        pass

    def edit(self, model: DiffusionModel, request: ImagicRequest, progress: Callable[[str, int, int], None] | None = None,
             seed: int = 0) -> ImagicEdit:
        """Stages A and B. The model's weights are unchanged afterwards (the fine-tuning is the patch)."""
        request.check(model)
        hp, t0 = self.hparams, time.perf_counter()
        g = torch.Generator().manual_seed(seed)
        unet = model.unet
        abar = alphas_cumprod(model.schedule).float()
        with torch.no_grad():
            x0 = model.to_latent(request.image.to(model.device, model.dtype) * 2 - 1)
        e_target = model.encode_text([request.prompt]).detach()
        originals = {k: v.detach().clone() for k, v in unet.named_parameters()}
        was_grad = {k: v.requires_grad for k, v in unet.named_parameters()}
        try:
            # A: the embedding, UNet frozen
            unet.requires_grad_(False)
            e = e_target.clone().requires_grad_(True)
            embed_losses = _adam(lambda: _denoising_loss(model, x0, e, abar, hp.batch, g), [e], hp.embed_lr, hp.embed_steps,
                                 "A: text embedding", progress)
            e_opt = e.detach()
            # B: the UNet, embedding fixed
            unet.train().requires_grad_(True)
            tune_losses = _adam(lambda: _denoising_loss(model, x0, e_opt, abar, hp.batch, g), list(unet.parameters()),
                                hp.tune_lr, hp.tune_steps, "B: fine-tuning", progress)
            if not all(map(lambda v: v == v and abs(v) != float("inf"), embed_losses + tune_losses)):
                raise EditFailedError("Imagic: the loss became NaN or infinite; lower embed_lr / tune_lr")
            with torch.no_grad():
                deltas = {k: Delta(dense=(p.detach().float() - originals[k].float()).cpu())
                          for k, p in unet.named_parameters() if not torch.equal(p, originals[k])}
        finally:
            with torch.no_grad():  # the model as it was, whatever happened
                for k, p in unet.named_parameters():
                    p.copy_(originals[k])
                    p.requires_grad_(was_grad[k])
            unet.eval()
        if not deltas:
            raise EditFailedError("Imagic: fine-tuning changed no weight (tune_steps = 0 or tune_lr = 0); stage C needs stage B")
        window = lambda xs: sum(xs[-50:]) / max(1, len(xs[-50:]))
        info = {"embed_loss_first": embed_losses[0] if embed_losses else None, "embed_loss_last": window(embed_losses),
                "tune_loss_first": tune_losses[0] if tune_losses else None, "tune_loss_last": window(tune_losses),
                "embedding_shift": float((e_opt - e_target).norm() / e_target.norm()), "seed": seed,
                "seconds": time.perf_counter() - t0}
        patch = Patch.from_deltas(unet, deltas, method=self.name, hparams=asdict(hp), request=request.to_dict(), info=info)
        return ImagicEdit(patch, e_opt.cpu(), e_target.cpu(), hp, info)
