"""One view of every diffusion model that the methods edit with: a noise-predicting UNet, the DDPM
schedule it was trained with, and, where it has them, a text encoder and a VAE.

Three kinds are read: the embedded tiny model (``tiny.json``), a pixel-space ``UNet2DModel`` (a
``DDPMPipeline`` directory or hub name, or a bare UNet directory), and Stable-Diffusion-style latent
pipelines (UNet2DConditionModel + VAE + text encoder + tokenizer). The kind is told by the components
found, never by the model's name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from modeledit.errors import ModelNotFoundError, UnsupportedModelError

log = logging.getLogger(__name__)

DEFAULT = "tiny-fashion"


@dataclass
class DiffusionModel:
    unet: torch.nn.Module
    schedule: dict  # the DDPM training schedule: num_train_timesteps, beta_schedule, beta_start, beta_end, ...
    name: str
    text: Callable[[Sequence[str]], torch.Tensor] | None = None  # prompts -> encoder hidden states
    vae: Any = None
    image_channels: int = 3
    classes: tuple[str, ...] = ()  # the classes of the embedded model's captions
    info: dict = field(default_factory=dict)

    @property
    def recommended(self) -> dict:
        """Hyper-parameters the model's maker measured to work, per method (the embedded model's tiny.json)."""
        return self.info.get("recommended", {})

    @property
    def conditional(self) -> bool:
        return self.text is not None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_factor(self) -> int:
        """Pixels per latent pixel along a side (1 without a VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: 2 per downsampling block, times the VAE's factor."""
        return self.latent_factor * 2 ** (len(self.unet.config.down_block_types) - 1)

    @property
    def default_size(self) -> int:
        s = self.unet.config.sample_size
        return (s if isinstance(s, int) else s[0]) * self.latent_factor

    def eps(self, x: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's noise prediction for x_t (conditional UNets need ``cond``)."""
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0]) if torch.as_tensor(t).dim() == 0 else t
        if self.conditional:
            return self.unet(x, t, encoder_hidden_states=cond).sample
        return self.unet(x, t).sample

    def guided_eps(self, x, t, cond, uncond, scale: float) -> torch.Tensor:
        """Classifier-free guidance: ε(∅) + s·(ε(c) − ε(∅)), both halves in one UNet call."""
        if not self.conditional or scale == 1.0 or uncond is None:
            return self.eps(x, t, cond)
        both = self.eps(torch.cat([x, x]), t if torch.as_tensor(t).dim() == 0 else torch.cat([t, t]), torch.cat([uncond, cond]))
        e_u, e_c = both.chunk(2)
        return e_u + scale * (e_c - e_u)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.text is None:
            raise UnsupportedModelError(f"{self.name} is not text-conditioned: it has no text encoder")
        return self.text(list(prompts)).to(self.device, self.dtype)

    def to_latent(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> what the UNet denoises."""
        if self.vae is None:
            return images
        dist = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist
        return dist.mean * self.vae.config.scaling_factor

    def to_image(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample


def schedule_of(scheduler_config: dict) -> dict:
    keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas", "prediction_type", "clip_sample")
    return {k: scheduler_config[k] for k in keys if k in scheduler_config and scheduler_config[k] is not None}


def from_components(unet, scheduler=None, text_encoder=None, tokenizer=None, vae=None, name: str = "model") -> DiffusionModel:
    """A DiffusionModel from diffusers parts (a pipeline's, or built from configs)."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    if not isinstance(unet, (UNet2DModel, UNet2DConditionModel)):
        raise UnsupportedModelError(f"{name}: its denoiser is a {type(unet).__name__}, not a diffusers UNet2DModel or UNet2DConditionModel")
    schedule = schedule_of(dict(scheduler.config)) if scheduler is not None else {"num_train_timesteps": 1000}
    if schedule.get("prediction_type", "epsilon") != "epsilon":
        raise UnsupportedModelError(f"{name}: its UNet predicts {schedule['prediction_type']!r}; RePaint and Imagic here need an epsilon-predicting UNet")
    text = None
    if isinstance(unet, UNet2DConditionModel):
        if text_encoder is None or tokenizer is None:
            raise UnsupportedModelError(f"{name}: a text-conditioned UNet without a text encoder and tokenizer")
        text = _clip_style_encoder(text_encoder, tokenizer)
    channels = vae.config.in_channels if vae is not None else unet.config.in_channels
    return DiffusionModel(unet.eval(), schedule, name, text, vae.eval() if vae is not None else None, channels)


def _clip_style_encoder(text_encoder, tokenizer) -> Callable[[Sequence[str]], torch.Tensor]:
    @torch.no_grad()
    def encode(prompts: Sequence[str]) -> torch.Tensor:
        ids = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids.to(text_encoder.device)
        return text_encoder(ids)[0]

    return encode


def load_embedded(path: str | Path | None = None, device: str | torch.device = "cpu") -> DiffusionModel:
    from modeledit.diffusion.text import TextEncoder
    from modeledit.diffusion.tiny import load_tiny_unet
    from modeledit.embedded import TINY_DIFFUSION

    text = TextEncoder(device=device)
    unet, config, meta = load_tiny_unet(path or TINY_DIFFUSION, text.dim)
    info = {**meta.get("info", {}), "recommended": meta.get("recommended", {})}
    return DiffusionModel(unet.to(device), config.scheduler_config(), DEFAULT if path is None else str(path), text,
                          None, 1, tuple(meta.get("classes", ())), info)


def load_diffusion(name: str | Path | None = None, device: str | torch.device = "cpu") -> DiffusionModel:
    """The embedded model (None or "tiny-fashion"), a local directory, or a hub name."""
    from modeledit.diffusion.tiny import is_tiny

    if name is None or str(name) == DEFAULT:
        return load_embedded(None, device)
    path = Path(name)
    if path.is_dir() and is_tiny(path):
        return load_embedded(path, device)
    if path.exists() and not path.is_dir():
        raise UnsupportedModelError(f"{path} is a file, not a diffusion model: give a diffusers pipeline or UNet directory")
    if path.is_dir() and (path / "config.json").is_file() and not (path / "model_index.json").is_file():
        return _load_bare_unet(path, device)
    try:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(name))
    except (OSError, ValueError, EnvironmentError) as exc:
        if path.is_dir():
            raise UnsupportedModelError(f"{path} is not a diffusers pipeline or UNet directory: {exc}") from exc
        raise ModelNotFoundError(f"{name!r} is neither the embedded model ({DEFAULT!r}), a local directory, nor loadable from the hub: {exc}") from exc
    parts = {k: getattr(pipe, k, None) for k in ("unet", "scheduler", "text_encoder", "tokenizer", "vae")}
    if parts["unet"] is None:
        raise UnsupportedModelError(f"{name}: the pipeline {type(pipe).__name__} has no UNet")
    model = from_components(**parts, name=str(name))
    model.unet.to(device)
    for m in (model.vae, parts["text_encoder"]):
        if m is not None:
            m.to(device)
    return model


def _load_bare_unet(path: Path, device) -> DiffusionModel:
    from diffusers import DDPMScheduler, UNet2DModel

    cls = json.loads((path / "config.json").read_text()).get("_class_name")
    if cls != "UNet2DModel":
        raise UnsupportedModelError(f"{path}: config.json describes a {cls}, not a diffusers UNet2DModel")
    unet = UNet2DModel.from_pretrained(str(path))
    sched = None
    for d in (path, path.parent / "scheduler"):
        if (d / "scheduler_config.json").is_file():
            sched = DDPMScheduler.from_pretrained(str(d))
            break
    if sched is None:
        log.warning("%s: no scheduler_config.json beside the UNet; assuming diffusers' default DDPM schedule", path)
    return from_components(unet.to(device), sched, name=str(path))
