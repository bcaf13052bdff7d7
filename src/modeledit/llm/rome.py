"""ROME: Rank-One Model Editing (Meng et al., NeurIPS 2022), with the averaged key in the update.

The MLP output projection W of one layer is treated as a linear associative memory. For a fact
(subject, relation) → object, ROME finds the key k* (the projection's input at the subject's last token,
averaged over context prefixes), a value v* = v₀ + δ that makes the model say the new object (value.py),
and writes the association with the least disturbance to other keys, measured by C = E[k kᵀ] (stats.py):

    W ← W + (v* − W k*) (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k*)

The reference code uses the key of the bare prompt in ``W k*`` and in the denominator while C⁻¹k* uses the
averaged key; that mismatch causes "disabling edits" and collapse under sequential editing (R-ROME,
Gupta et al. 2024). Here the averaged key is used in all three places, so W' k* = v* holds exactly.

Ours, on by default (``prompt_key``; ``prompt_key=False`` is the paper's): the value optimisation adds the
same δ at every context row, but the update written at the averaged key reaches a prompt that starts with
its subject weakly — read without a leading space and, where the model adds no BOS token, at position 0,
its key is unlike every context's (SmolLM2: 0.18–0.41 of the change, and the edit does not take). So the
update is ΔW = δ uᵀ with u the least in C that reaches both the averaged key and the prompt's own whole.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch

from modeledit.errors import EditFailedError, RequestError
from modeledit.llm.contexts import context_templates
from modeledit.llm.layer_choice import chosen_layer
from modeledit.llm.model import LanguageModel
from modeledit.llm.method import LLMMethod, as_requests, check_layers
from modeledit.llm.outcome import record_outcomes
from modeledit.llm.packaged import PACKAGED
from modeledit.llm.precision import resolve_precision
from modeledit.llm.reach import directions, guard_count, most_reached
from modeledit.llm.request import Request
from modeledit.llm.stats import second_moments
from modeledit.llm.tokens import TOKEN_CLASSES
from modeledit.llm.memory_hparams import MemoryEditHyperParams
from modeledit.llm.value import compute_values
from modeledit.delta import Delta
from modeledit.patch import Patch

log = logging.getLogger(__name__)

# GPT-2 XL is edited at layer 17 of 48 in the paper: the depth where causal tracing finds the MLP's
# effect at the last subject token to peak. Without a trace of the model at hand, take the same depth.
DEFAULT_DEPTH = 17 / 48


def default_layer(lm: LanguageModel) -> tuple[int, str]:
    """The layer stored for this model's weights (``modeledit trace-many|sweep --set-layer``), else the one
    measured for a packaged model (its edit sweep), else the paper's relative depth (17/48 of the way up,
    e.g. 6 of Gemma-3's 18); and why."""
    choice = chosen_layer(lm)
    if choice is not None:
        return choice["layer"], choice["reason"]
    packaged = PACKAGED.get(lm.name)
    if packaged is not None and packaged.edit_layer is not None:
        return packaged.edit_layer
    n = lm.layout.n_layers
    return min(n - 1, int(DEFAULT_DEPTH * n)), f"default: the paper's relative depth 17/48 of {n} layers"


@dataclass(frozen=True)
class ROMEHyperParams(MemoryEditHyperParams):
    """Defaults from the paper and its code (GPT-2 XL), except where noted."""

    layer: int | None = None  # None: default_layer(model)
    clamp_norm_factor: float = 4.0  # ‖δ‖ ≤ 4‖v₀‖ at the MLP output
    mom2_adjustment: bool = True  # use C⁻¹ (EasyEdit ships ROME with this off: not the paper's method)
    token: str = "last_subject"  # the edit site; the sweep's other positions: tokens.TOKEN_CLASSES
    # ours, not the paper's: hold the n pool subjects that the update reaches most — in the request's prompt,
    # given the update's share of δ at every token, their next-token distribution (KL) and their log p of the
    # new target (no rise) — reach.py. 0: the paper's ROME; None: 8 where the block normalises the MLP's
    # output again (Gemma-2/3), else 0
    guard_subjects: int | None = None
    guard_factor: float = 1.0  # weight of their KL and of their rise in log p(new target)
    guard_pool: int = 2000  # pool size (article titles of the embedded corpus)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.guard_subjects is not None and (not isinstance(self.guard_subjects, int) or self.guard_subjects < 0):
            raise RequestError("guard_subjects", f"must be an integer ≥ 0 (or None: by the model), got {self.guard_subjects!r}")
        if not isinstance(self.guard_pool, int) or self.guard_pool < max(8, self.guard_subjects or 0):
            raise RequestError("guard_pool", f"must be an integer ≥ 8 and ≥ guard_subjects, got {self.guard_pool!r}")
        if not (isinstance(self.guard_factor, (int, float)) and 0 <= self.guard_factor < float("inf")):
            raise RequestError("guard_factor", f"must be a finite number ≥ 0, got {self.guard_factor!r}")
        if self.token not in TOKEN_CLASSES:
            raise RequestError("token", f"{self.token!r} is not a token position; choose one of {', '.join(TOKEN_CLASSES)}")


def rank_one_update(
    W: torch.Tensor, C: torch.Tensor | None, k_star: torch.Tensor, v_star: torch.Tensor, *,
    bias: torch.Tensor | None = None, k_prompt: torch.Tensor | None = None, delta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, u) with ΔW = r uᵀ for W of shape (out, in), in float64, u scaled so that uᵀk* = 1 (``reach.directions``).
    The paper's: u ∝ C⁻¹k*, r = v* − (W k* + b) — the projection's ``bias`` b is in the value v* too (the
    reference subtracts the module's output; leaving b out would add it again at every key the update
    reaches). With ``k_prompt`` and ``delta`` (ours, ``prompt_key``): u reaches the prompt's own key whole
    as well, and r = δ — the change the value optimisation added at every row, now written at each."""
    k = k_star.to(W.device, torch.float64)  # on the edited layer's device (device maps spread layers)
    try:
        u = directions(C, k, k_prompt)[0]
    except RuntimeError as exc:
        raise EditFailedError("the key statistics C are singular; collect them over more tokens (stats_tokens)") from exc
    if delta is not None:
        r = delta.to(W.device, torch.float64)
    else:
        out = W.to(torch.float64) @ k + (0 if bias is None else bias.to(W.device, torch.float64))
        r = v_star.to(W.device, torch.float64) - out
    if not (torch.isfinite(u).all() and torch.isfinite(r).all()):
        raise EditFailedError("the rank-one update is not finite (C ill-conditioned?); collect statistics over more tokens")
    return r, u


class ROME(LLMMethod):
    """ROME: one rank-one update per request; a batch is edited one request after another, each on the
    model holding the edits before it, and the edits are composed."""

    name = "rome"
    HyperParams = ROMEHyperParams
    joint = False

    def layer(self, lm: LanguageModel) -> int:
        layer = self.hparams.layer if self.hparams.layer is not None else default_layer(lm)[0]
        check_layers(lm, [layer], "layer")
        return layer

    def layer_reason(self, lm: LanguageModel) -> str:
        return "chosen by the user" if self.hparams.layer is not None else default_layer(lm)[1]

    def layers(self, lm: LanguageModel) -> list[int]:
        """The layers whose statistics this method needs."""
        return [self.layer(lm)]

    def prepare(self, lm: LanguageModel, progress=None) -> None:
        """Compute (or load) what every edit of this model reuses: statistics and context prefixes."""
        if self.hparams.mom2_adjustment:
            second_moments(lm, self.layers(lm), self.hparams.stats, progress)
        context_templates(lm, self.hparams.context_spec, self.hparams.context_seed)

    def edit_batch(self, lm: LanguageModel, requests: list[Request], progress=None) -> Patch:
        (request,) = requests
        return self._patches(lm, [request], None)[0]

    def edit_each(self, lm: LanguageModel, requests: Sequence[Request], progress=None) -> list[Patch]:
        """Each request edited alone on the model as it is — one Patch per request, not composed — with
        their values optimised side by side (each gets the result it gets alone: ``value.py``). For many
        independent edits of one model (the sweep), far cheaper than one ``edit`` call per request."""
        reqs = as_requests(requests)
        return [record_outcomes(lm, p, [r]) for p, r in zip(self._patches(lm, reqs, progress), reqs)]

    def _patches(self, lm: LanguageModel, requests: list[Request], progress) -> list[Patch]:
        hp = self.hparams
        layer = self.layer(lm)
        C = second_moments(lm, [layer], hp.stats)[layer] if hp.mom2_adjustment else None
        templates = context_templates(lm, hp.context_spec, hp.context_seed)
        n_guards = guard_count(lm, layer, hp.guard_subjects)
        guards = most_reached(lm, layer, C, [r.subject for r in requests], n_guards, hp.guard_pool) if n_guards else ()
        value_hp = replace(hp.value, guard_factor=hp.guard_factor)
        results = compute_values(
            lm, layer, requests, templates, (hp.kl_prompt,), value_hp, token=hp.token, guards=guards, C=C,
            prompt_key=hp.prompt_key, progress=progress
        )
        weight_name = lm.layout.weight_name(layer)
        W = lm.model.get_parameter(weight_name).detach()
        W_math = W.T if lm.layout.mlp_out_transposed else W  # (out, in)
        return [
            self._patch(lm, layer, weight_name, W_math, C, request, res, list(guards[i]) if guards else [])
            for i, (request, res) in enumerate(zip(requests, results))
        ]

    def _patch(self, lm: LanguageModel, layer: int, weight_name: str, W_math, C, request: Request, res, guards: list[str]) -> Patch:
        hp = self.hparams
        v_star = res.v0 + res.delta
        bias = getattr(lm.model.get_submodule(lm.layout.mlp_out[layer]), "bias", None)
        two = dict(k_prompt=res.k_prompt, delta=res.delta) if hp.prompt_key else {}
        r, u = rank_one_update(W_math, C, res.k_star, v_star, bias=bias, **two)
        r, u = r.to(torch.float32)[:, None], u.to(torch.float32)[:, None]
        delta = Delta(left=u, right=r) if lm.layout.mlp_out_transposed else Delta(left=r, right=u)
        info = {
            "layer": layer,
            "layer_reason": self.layer_reason(lm),
            "token": hp.token,
            "module": lm.layout.mlp_out[layer],
            "gradient_steps": res.steps,
            "loss_first": res.losses[0] if res.losses else None,
            "loss_last": res.losses[-1] if res.losses else None,
            "target_prob_before": res.target_prob[0],
            "target_prob_after_value_opt": res.target_prob[1],
            "delta_norm_over_v0": float(res.delta.norm() / res.v0.norm()),
            "value_seconds": res.seconds,
            # how much of the change written at the averaged key reaches the prompt's own key (1: all of it)
            "key_reach": float((u[:, 0].double() @ res.k_prompt.to(u.device).double()) / (u[:, 0].double() @ res.k_star.to(u.device).double())),
            "precision": resolve_precision(hp.precision, lm.device),
            "guarded": dict(zip(guards, [round(r, 4) for r in res.guard_reach])),  # subject: reach
        }
        log.info("ROME at layer %d: %d steps, p(target) %.3f -> %.3f", layer, res.steps, *res.target_prob)
        return self.patch(lm, {weight_name: delta}, [request], {**asdict(hp), "layer": layer, "guard_subjects": len(guards)}, info)
