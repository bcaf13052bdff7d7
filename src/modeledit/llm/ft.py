"""The fine-tuning baselines of the ROME paper: fine-tune one MLP output projection on the new targets.

- **FT-L** (the paper's "FT+L", Zhu et al. 2020): Adam on the targets' NLL with every weight kept within
  an L∞ ball of radius ε around its original value (reference settings: lr 5e-4, 25 steps, ε = 5e-4).
- **FT-M** (EasyEdit's FT-M): the same layer and loss, with no bound.

Both train autoregressively on the target tokens only (tune.py), edit a batch of requests jointly, stop as
soon as every target is the model's greedy continuation, and return the change as a dense delta of the
tuned weight; the model's weights are restored exactly afterwards, also on error. Default layer: ROME's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from modeledit.errors import RequestError
from modeledit.llm.method import LLMMethod
from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request
from modeledit.llm.rome import default_layer
from modeledit.llm.tune import tune_on_targets
from modeledit.delta import Delta
from modeledit.patch import Patch


@dataclass(frozen=True)
class FTHyperParams:
    """FT-L's reference settings (ROME's FT baseline, GPT-2 XL)."""

    layers: tuple[int, ...] | None = None  # None: ROME's default layer
    lr: float = 5e-4
    steps: int = 25
    norm_constraint: float | None = 5e-4  # L∞ radius of the change of each weight; None: unbounded
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise RequestError("lr", f"must be a positive finite number, got {self.lr!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise RequestError("steps", f"must be a positive integer, got {self.steps!r}")
        if self.norm_constraint is not None and not (isinstance(self.norm_constraint, (int, float)) and self.norm_constraint > 0):
            raise RequestError("norm_constraint", f"must be a positive number or None, got {self.norm_constraint!r}")


@dataclass(frozen=True)
class FTMHyperParams(FTHyperParams):
    """FT-M: no bound on the change."""

    norm_constraint: float | None = None


class FT(LLMMethod):
    name = "ft-l"
    HyperParams = FTHyperParams
    joint = True

    def default_layers(self, lm: LanguageModel) -> tuple[list[int], str]:
        layer, reason = default_layer(lm)
        return [layer], f"ROME's layer ({reason})"

    def edit_batch(self, lm: LanguageModel, requests: list[Request], progress=None) -> Patch:
        hp = self.hparams
        layers = self.layers(lm)
        names = [lm.layout.weight_name(l) for l in layers]
        params = [lm.model.get_parameter(n) for n in names]
        originals = [p.detach().clone() for p in params]

        def project() -> None:  # the L∞ ball around the original weights
            for p, w0 in zip(params, originals):
                p.copy_(torch.minimum(torch.maximum(p, w0 - hp.norm_constraint), w0 + hp.norm_constraint))

        try:
            res = tune_on_targets(lm, requests, params, min(layers), hp.lr, hp.steps, weight_decay=hp.weight_decay,
                                  after_step=project if hp.norm_constraint is not None else None)
            deltas = {n: Delta(dense=(p.detach().float() - w0.float()).cpu()) for n, p, w0 in zip(names, params, originals)}
        finally:
            with torch.no_grad():
                for p, w0 in zip(params, originals):
                    p.copy_(w0)
        info = {"layers": layers, "layers_reason": self.layers_reason(lm), "gradient_steps": res.steps, "loss_first": res.losses[0], "loss_last": res.losses[-1],
                "greedy": res.greedy, "n_requests": len(requests), "seconds": res.seconds}
        return self.patch(lm, deltas, requests, {**asdict(hp), "layers": layers}, info)


class FTM(FT):
    name = "ft-m"
    HyperParams = FTMHyperParams
