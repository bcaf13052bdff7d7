"""The requests of the diffusion family, checked at the door: inpaint a region (RePaint), edit a whole
image toward a text (Imagic). Images are float tensors (B, C, H, W) in [0, 1]; masks are boolean
(B, 1, H, W) with True = keep (the RePaint paper's convention)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modeledit.errors import RequestError


def _images(images: torch.Tensor, field: str = "image") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() not in (3, 4):
        raise RequestError(field, "must be a tensor (C, H, W) or (B, C, H, W) with values in [0, 1]")
    images = images[None] if images.dim() == 3 else images
    if not images.is_floating_point() or float(images.min()) < 0 or float(images.max()) > 1:
        raise RequestError(field, "values must be floats in [0, 1] (divide 8-bit images by 255)")
    return images


@dataclass
class InpaintRequest:
    images: torch.Tensor  # (B, C, H, W) in [0, 1]
    keep: torch.Tensor  # (B or 1, 1, H, W) bool: True = keep, False = fill
    prompt: str | None = None  # text-conditioned models only

    def __post_init__(self) -> None:
        self.images = _images(self.images)
        k = self.keep
        if not isinstance(k, torch.Tensor) or k.dim() not in (2, 3, 4):
            raise RequestError("mask", "must be a tensor (H, W), (1, H, W) or (B, 1, H, W)")
        k = k.reshape((1, 1) + tuple(k.shape[-2:])) if k.dim() == 2 else (k[None] if k.dim() == 3 else k)
        if k.shape[1] != 1:
            raise RequestError("mask", f"must have one channel, got {k.shape[1]} (convert it to greyscale)")
        if tuple(k.shape[-2:]) != tuple(self.images.shape[-2:]):
            raise RequestError("mask", f"is {k.shape[-1]}×{k.shape[-2]} but the image is {self.images.shape[-1]}×{self.images.shape[-2]}: "
                               "give a mask of the image's size")
        if k.shape[0] not in (1, len(self.images)):
            raise RequestError("mask", f"{k.shape[0]} masks for {len(self.images)} images: give one mask, or one per image")
        k = (k > 0.5 if k.is_floating_point() else k.bool()).expand(len(self.images), 1, *k.shape[-2:])
        for i, m in enumerate(k):
            if bool(m.all()):
                raise RequestError("mask", f"mask {i} keeps every pixel: nothing to inpaint (black = fill, white = keep)")
            if not bool(m.any()):
                raise RequestError("mask", f"mask {i} keeps no pixel: that is sampling, not inpainting "
                                   "(use `modeledit diffusion sample`), or the mask convention is inverted (--white-fills)")
        self.keep = k.contiguous()
        if self.prompt is not None and not str(self.prompt).strip():
            self.prompt = None

    def check(self, model) -> None:
        if self.images.shape[1] != model.image_channels:
            raise RequestError("image", f"has {self.images.shape[1]} channels but {model.name} works on {model.image_channels}")
        if self.prompt and not model.conditional:
            raise RequestError("prompt", f"{model.name} is not text-conditioned: leave the prompt out")


@dataclass
class ImagicRequest:
    image: torch.Tensor  # (1, C, H, W) in [0, 1]
    prompt: str  # the target text

    def __post_init__(self) -> None:
        self.image = _images(self.image)
        if len(self.image) != 1:
            raise RequestError("image", f"Imagic edits one image at a time, got {len(self.image)}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise RequestError("prompt", "must be a non-empty text describing the edited image, e.g. 'a pullover'")

    def check(self, model) -> None:
        if not model.conditional:
            raise RequestError("model", f"{model.name} is not text-conditioned; Imagic needs a text encoder")
        if self.image.shape[1] != model.image_channels:
            raise RequestError("image", f"has {self.image.shape[1]} channels but {model.name} works on {model.image_channels}")
        m = model.size_multiple
        if self.image.shape[-1] % m or self.image.shape[-2] % m:
            raise RequestError("image", f"is {self.image.shape[-1]}×{self.image.shape[-2]}; {model.name} needs sides that are multiples of {m}")

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "size": list(self.image.shape[-2:])}
