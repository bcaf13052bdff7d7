"""Delta: the change an edit makes to one parameter, dense or low-rank, and how it is added."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modeledit.errors import PatchError


@dataclass
class Delta:
    """The change to one parameter, in the parameter's own layout: ``left @ right.T`` or ``dense``."""

    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.dense is None) == (self.left is None or self.right is None):
            raise PatchError("a Delta is either dense or low-rank (left and right), not both or neither")

    @property
    def rank(self) -> int | None:
        return None if self.left is None else int(self.left.shape[1])

    def materialize(self, like: torch.Tensor) -> torch.Tensor:
        """The dense float32 delta, on ``like``'s device, shaped like ``like``."""
        if self.dense is not None:
            d = self.dense.to(device=like.device, dtype=torch.float32)
        else:
            d = self.left.to(like.device, torch.float32) @ self.right.to(like.device, torch.float32).T
        if d.shape != like.shape:
            raise PatchError(f"delta of shape {tuple(d.shape)} does not fit parameter of shape {tuple(like.shape)}")
        return d

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.dense is not None:
            return {"dense": self.dense}
        return {"left": self.left, "right": self.right}


def add_delta(param: torch.Tensor, delta: Delta) -> torch.Tensor:
    """The new value of ``param``: computed in float32, stored in the parameter's dtype."""
    return (param.detach().to(torch.float32) + delta.materialize(param)).to(param.dtype)
