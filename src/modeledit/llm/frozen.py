"""Weights that take no gradient for a while: passes that differentiate activations only (ROME's and
MEMIT's values, MEND's factors, GRACE, tuning) compute no weight gradient."""

from __future__ import annotations

import torch


class frozen_weights:
    """Turn off gradients of every parameter for the duration (so backward computes none), then restore."""

    def __init__(self, model: torch.nn.Module):
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)
