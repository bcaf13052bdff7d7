"""LoRA (Hu et al., ICLR 2022) as an editing baseline: low-rank adapters, from the ``peft`` library, on the
MLP output projections of chosen layers, trained on the requests' targets (tune.py), then merged into
the patch as low-rank deltas ΔW = (α/r)·B A — so a LoRA edit applies, reverts and saves like any patch.

The adapters are put into the model only for the training and taken out again (``unload``); the base
weights are never trained, so the model is left exactly as it was. Defaults: EasyEdit's LoRA settings
(rank 8, α 32, lr 5e-3, ≤ 70 steps), dropout 0 (an edit trains on a handful of tokens: dropout there is
only noise), on the layers MEMIT would edit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from modeledit.errors import RequestError
from modeledit.llm.memit import default_layers
from modeledit.llm.method import LLMMethod
from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request
from modeledit.llm.tune import tune_on_targets
from modeledit.delta import Delta
from modeledit.patch import Patch


@dataclass(frozen=True)
class LoRAHyperParams:
    layers: tuple[int, ...] | None = None  # None: MEMIT's default layers
    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.0
    lr: float = 5e-3
    steps: int = 70
    seed: int = 0  # initialisation of the adapters

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise RequestError("rank", f"must be a positive integer, got {self.rank!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise RequestError("steps", f"must be a positive integer, got {self.steps!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise RequestError("lr", f"must be a positive finite number, got {self.lr!r}")


class LoRA(LLMMethod):
    name = "lora"
    HyperParams = LoRAHyperParams
    joint = True

    def default_layers(self, lm: LanguageModel) -> tuple[list[int], str]:
        layers, reason = default_layers(lm)
        return layers, f"MEMIT's layers ({reason})"

    def edit_batch(self, lm: LanguageModel, requests: list[Request], progress=None) -> Patch:
        from peft import LoraConfig, LoraModel

        hp = self.hparams
        layers = self.layers(lm)
        layout = lm.layout
        limit = min(layout.hidden_size, layout.intermediate_size)
        if hp.rank > limit:
            raise RequestError("rank", f"{hp.rank} is larger than the edited layers allow ({layout.intermediate_size} -> "
                                       f"{layout.hidden_size}: at most {limit}); choose a smaller rank")
        modules = [layout.mlp_out[l] for l in layers]
        config = LoraConfig(r=hp.rank, lora_alpha=hp.alpha, lora_dropout=hp.dropout, target_modules=modules,
                            fan_in_fan_out=layout.mlp_out_transposed, bias="none")
        trainable = {n: p.requires_grad for n, p in lm.model.named_parameters()}  # peft freezes the base
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.seed)
            wrapped = LoraModel(lm.model, config, "default")
        try:
            adapters = [lm.model.get_submodule(m) for m in modules]
            params = [p for a in adapters for p in (a.lora_A["default"].weight, a.lora_B["default"].weight)]
            res = tune_on_targets(lm, requests, params, min(layers), hp.lr, hp.steps)
            scale = hp.alpha / hp.rank
            deltas = {}
            for m, a in zip(modules, adapters):
                A = a.lora_A["default"].weight.detach().float()  # (r, in)
                B = a.lora_B["default"].weight.detach().float() * scale  # (out, r)
                deltas[f"{m}.weight"] = Delta(left=A.T.clone(), right=B.clone()) if layout.mlp_out_transposed else Delta(left=B.clone(), right=A.T.clone())
        finally:
            wrapped.unload()  # the original modules back in place, untouched
            for n, p in lm.model.named_parameters():
                p.requires_grad_(trainable.get(n, True))
        info = {"layers": layers, "layers_reason": self.layers_reason(lm), "rank": hp.rank, "gradient_steps": res.steps, "loss_first": res.losses[0],
                "loss_last": res.losses[-1], "greedy": res.greedy, "n_requests": len(requests), "seconds": res.seconds}
        return self.patch(lm, deltas, requests, {**asdict(hp), "layers": layers}, info)
