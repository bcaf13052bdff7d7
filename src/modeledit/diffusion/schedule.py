"""The DDPM arithmetic the methods share, on a respaced schedule: ᾱ at the sampled steps, one reverse
step (DDIM form; eta = 1 is the DDPM posterior the RePaint paper samples with), one forward step, and
q(x_t | x_0). Built from the model's training schedule with diffusers' ``DDPMScheduler`` so that every
beta schedule diffusers knows is read the same way.
"""

from __future__ import annotations

import torch


def alphas_cumprod(schedule: dict) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**schedule).alphas_cumprod.double()


class Respaced:
    """``steps`` evenly spaced training timesteps; index i in 0..steps-1, ᾱ(-1) = 1."""

    def __init__(self, schedule: dict, steps: int):
        ac = alphas_cumprod(schedule)
        T = len(ac)
        if not 1 <= steps <= T:
            raise ValueError(f"steps must lie in 1..{T} (the model's training steps), got {steps}")
        self.stride = T // steps
        self.timesteps = [i * self.stride for i in range(steps)]
        self.abar = ac[self.timesteps]

    def ab(self, i: int) -> float:
        return 1.0 if i < 0 else float(self.abar[i])

    def predict_x0(self, x: torch.Tensor, eps: torch.Tensor, i: int, clip: bool = True) -> torch.Tensor:
        a = self.ab(i)
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        return x0.clamp(-1, 1) if clip else x0

    def reverse(self, x, eps, i: int, noise: torch.Tensor, eta: float = 1.0, clip: bool = True) -> torch.Tensor:
        """x_i -> x_{i-1}."""
        a, ap = self.ab(i), self.ab(i - 1)
        x0 = self.predict_x0(x, eps, i, clip)
        if clip:  # the noise direction that matches the clipped x0
            eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
        sigma = eta * ((1 - ap) / (1 - a) * (1 - a / ap)) ** 0.5 if i > 0 else 0.0
        return ap**0.5 * x0 + max(1 - ap - sigma**2, 0.0) ** 0.5 * eps + sigma * noise

    def forward(self, x: torch.Tensor, i: int, noise: torch.Tensor) -> torch.Tensor:
        """x_{i-1} -> x_i: one step of the forward process, q(x_i | x_{i-1})."""
        r = self.ab(i) / self.ab(i - 1)
        return r**0.5 * x + (1 - r) ** 0.5 * noise

    def noised(self, x0: torch.Tensor, i: int, noise: torch.Tensor) -> torch.Tensor:
        """x_i ~ q(x_i | x_0); i = -1 gives x_0 itself."""
        a = self.ab(i)
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise if i >= 0 else x0
