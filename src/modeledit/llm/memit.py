"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al., ICLR 2023), many facts in one update.

For a batch of facts, MEMIT

1. finds for each fact a target z_i for the residual stream (the output of the last block L of a range of
   layers) at the subject's last token, such that the model says the new object: z_i = h_i + δ_i, δ_i
   optimised as in ROME (value.py, edit site "block"), ‖δ_i‖ ≤ 0.75‖h_i‖;
2. spreads the needed change over the MLP output projections of the range, lowest layer first: at layer l
   (the i-th of the range) the keys K (the projection's inputs at the subject's last token, averaged over
   the same context templates as ROME) and the residual R = (z − h(L)) / (layers left) are computed on the
   model already holding the updates of the layers below, and

       ΔW_l = R Kᵀ (λ·C_l + K Kᵀ)⁻¹        (solved in float64; C_l = E[k kᵀ] from the cached statistics)

   so that the new keys are mapped to their share of the target while the keys of the corpus, weighted by
   λ, keep their values as far as possible.

Ours, on by default (``prompt_key``, as ROME's; ``prompt_key=False`` is the paper's): each request's update
is fitted at its bare prompt's own key as well as at the averaged one, both mapped to its residual at half
weight — where a model reads a prompt's subject unlike every context (SmolLM2 adds no BOS token: a prompt
that starts with its subject reads it at position 0), the averaged key alone reaches the prompt weakly.
Where the two keys are equal, the update is the paper's.

Paper defaults (GPT-2 XL / GPT-J): layers 13–17 of 48 / 3–8 of 28, λ = 20,000 / 15,000 (kept here
relative to the key width: see ``MEMITHyperParams.lam``), clamp 0.75, 20 Adam steps at lr 0.5, KL factor
0.0625, weight decay 0.5, the bare prompt and 5 generated prefixes of 10 tokens as contexts (ROME: 20). Default layers here: the MLP window of causal tracing around the peak when the
model has been traced (``modeledit trace-many --set-layer``), else the paper's five layers ending at its
relative depth 17/48 (layers 6–10 of SmolLM2's 30).
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from modeledit.errors import EditFailedError, RequestError
from modeledit.llm.contexts import context_templates
from modeledit.llm.method import LLMMethod
from modeledit.llm.layer_choice import chosen_layer
from modeledit.llm.model import LanguageModel
from modeledit.llm.precision import resolve_precision
from modeledit.llm.range_reader import RangeReader
from modeledit.llm.request import Request
from modeledit.llm.stats import second_moments
from modeledit.llm.memory_hparams import VALUE_CHUNK, MemoryEditHyperParams
from modeledit.llm.score import score_continuations
from modeledit.llm.target_cache import cached_values
from modeledit.llm.value import compute_values
from modeledit.delta import Delta
from modeledit.patch import Patch

log = logging.getLogger(__name__)

ROME_DEPTH = 17 / 48  # GPT-2 XL's edit depth: MEMIT's range ends there (layers 13–17 of 48)
PAPER_SPAN = 5  # the paper edits 5 layers of GPT-2 XL (13–17) and 6 of GPT-J (3–8), whatever the depth
PAPER_LAMBDA, PAPER_KEY_WIDTH = 15_000.0, 16_384  # GPT-J's λ and MLP width (GPT-2 XL: 20,000 and 6,400)


def default_layers(lm: LanguageModel) -> tuple[list[int], str]:
    """The layer range for this model, and why."""
    from modeledit.llm.trace_engine import window_layers

    n = lm.layout.n_layers
    choice = chosen_layer(lm)
    if choice is not None and isinstance(choice.get("window"), int):
        layers = list(window_layers(choice["layer"], choice["window"], n))
        return layers, f"causal tracing: the MLP window ({choice['window']} layers) around the peak at layer {choice['layer']}"
    end = min(n - 1, int(ROME_DEPTH * n))
    return list(range(max(0, end - PAPER_SPAN + 1), end + 1)), (
        f"default: the paper's {PAPER_SPAN} layers ending at its relative depth 17/48 of {n} layers"
    )


@dataclass(frozen=True)
class MEMITHyperParams(MemoryEditHyperParams):
    """Defaults from the paper and its code (GPT-2 XL / GPT-J), except the scaled λ and layers."""

    layers: tuple[int, ...] | None = None  # None: default_layers(model)
    # MEMIT's code: "{}" and 5 prefixes of 10 tokens (ROME's 20 cost 2.9x the time for the same ES / PS / NS: 64
    # training cases jointly, 3.78 against 1.29 s per request, ES 96.9 both, PS 87.5 / 89.1, NS 56.2 / 57.8)
    context_spec: tuple[tuple[int, int], ...] = ((10, 5),)
    clamp_norm_factor: float = 0.75  # ‖δ‖ ≤ 0.75‖h‖ at the residual stream
    mom2_update_weight: float | None = None  # λ; None: GPT-J's 15,000 at its key width, scaled to this model's (see lam)
    # rounds of the spread over the range (the paper: one). Each next round reads keys and residuals on the model
    # holding the rounds before and spreads what is left of z − h, correcting where the linear step fell short
    passes: int = 1
    # rounds of new targets (not in the paper): after the spread, each request the edit does not take yet (its new
    # target is not the greedy continuation of its prompt) gets a new z, optimised on the model holding the edit so
    # far — its other tokens as the edit left them — and the spread runs again toward the new targets
    retarget: int = 0
    # the batch's own other tokens (not in the paper): the keys of every token of each request's bare prompt and
    # teacher-forced target but its edit site, held in the solve with this weight each (an edit key's is 1):
    # ΔW = R Kᵀ (λC + KKᵀ + μ K_o K_oᵀ)⁻¹. Each target z is optimised with only its subject token changed; with
    # many edits in a few layers, the other edits' updates also move these tokens (the answer's, the question's)
    # and z no longer fits — this holds them where z was found. 0: the paper's update
    own_tokens_weight: float = 0.0
    # how the work is cut into passes: speed and memory only, the results are the same (a resumed run may change them)
    value_batch: int = field(default=VALUE_CHUNK, metadata={"speed_only": True})  # requests whose targets are optimised together
    key_batch: int = field(default=64, metadata={"speed_only": True})  # requests per pass when reading keys
    # keep each request's target on disk (target_cache.py), as MEMIT's code does: a rerun on the same weights reads it
    cache_targets: bool = field(default=True, metadata={"speed_only": True})

    def __post_init__(self) -> None:
        super().__post_init__()
        v = self.mom2_update_weight
        if v is not None and not (isinstance(v, (int, float)) and 0 < v < float("inf")):
            raise RequestError("mom2_update_weight", f"must be a positive finite number or None, got {v!r}")
        for name in ("value_batch", "key_batch", "passes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise RequestError(name, f"must be a positive integer, got {getattr(self, name)!r}")
        w = self.own_tokens_weight
        if not (isinstance(w, (int, float)) and 0 <= w < float("inf")):
            raise RequestError("own_tokens_weight", f"must be a finite number ≥ 0 (0: the paper's update), got {w!r}")
        if not isinstance(self.retarget, int) or self.retarget < 0:
            raise RequestError("retarget", f"must be a whole number of rounds (0: none), got {self.retarget!r}")
        if self.layers is not None and (not self.layers or sorted(set(self.layers)) != list(self.layers)):
            raise RequestError("layers", f"{self.layers!r}: give distinct layers in increasing order, e.g. 8,9,10")

    def lam(self, key_width: int) -> float:
        """λ for keys of ``key_width`` dimensions. A key k is written with weight kᵀ(λC)⁻¹k / (1 + kᵀ(λC)⁻¹k),
        and kᵀC⁻¹k ≈ key_width for a typical key, so λ means nothing without the width: by default λ keeps
        GPT-J's ratio (15,000 for 16,384-wide keys): 1,406 for SmolLM2's 1,536. On 64 training cases edited
        jointly at layers 6–10 (benchmarks/memit_settings.py), GPT-2 XL's ratio (λ = 4,800 here) gave ES 89 /
        PS 73 / NS 59 against 97 / 88 / 56 at λ = 1,500 (unedited NS 61); the unscaled 15,000, ES 56."""
        return self.mom2_update_weight if self.mom2_update_weight is not None else PAPER_LAMBDA * key_width / PAPER_KEY_WIDTH


def memit_update(
    resid: torch.Tensor, keys: torch.Tensor, C: torch.Tensor, lam: float, held: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, A) with ΔW = R Aᵀ of shape (out, in), for residuals ``resid`` (n, out) and keys ``keys`` (n, in):
    R = residsᵀ, A = (λC + KKᵀ + H)⁻¹K with K = keysᵀ; in float64.

    ΔW minimises Σᵢ‖ΔW kᵢ − rᵢ‖² + λ·tr(ΔW C ΔWᵀ) + tr(ΔW H ΔWᵀ): the new keys get their residuals, and the
    corpus's keys (second moment C) move as little as possible, as do the keys whose (weighted) sum of
    outer products is ``held`` (None: none; the batch's own other tokens, ``own_tokens_weight``)."""
    K = keys.to(torch.float64).T  # (in, n)
    M = lam * C.to(torch.float64) + K @ K.T
    A = torch.linalg.solve(M if held is None else M + held.to(M), K)  # (in, n)
    R = resid.to(torch.float64).T  # (out, n)
    if not (torch.isfinite(A).all() and torch.isfinite(R).all()):
        raise EditFailedError("the MEMIT solve is not finite (statistics ill-conditioned?); collect them over more tokens")
    return R, A


class MEMIT(LLMMethod):
    name = "memit"
    HyperParams = MEMITHyperParams
    joint = True

    def default_layers(self, lm: LanguageModel) -> tuple[list[int], str]:
        return default_layers(lm)

    def prepare(self, lm: LanguageModel, progress=None) -> None:
        second_moments(lm, self.layers(lm), self.hparams.stats, progress)  # every layer of the range in one pass
        context_templates(lm, self.hparams.context_spec, self.hparams.context_seed)

    def edit_batch(self, lm: LanguageModel, requests: list[Request], progress=None) -> Patch:
        hp = self.hparams
        layers = self.layers(lm)
        last = layers[-1]
        t0 = time.perf_counter()
        moments = second_moments(lm, layers, hp.stats)
        templates = context_templates(lm, hp.context_spec, hp.context_seed)
        values, from_disk = self.targets(lm, last, requests, templates, progress)
        t_values = time.perf_counter() - t0
        log.info("MEMIT: the targets of %d requests took %.0f s (%d read from disk)", len(requests), t_values, from_disk)
        z = torch.stack([v.v0 + v.delta for v in values])  # (n, hidden) targets of the residual stream at `last`
        deltas, final = self.spread(lm, requests, z, layers, moments, templates)
        retargeted = []
        for _ in range(hp.retarget):
            with Patch.from_deltas(lm.model, deltas, method=self.name, hparams={}, requests=[]).applied(lm):
                scored = score_continuations(lm, [(r.text, r.target) for r in requests])
                miss = [i for i, s in enumerate(scored) if s.top1 != s.tokens]
                retargeted.append(len(miss))
                log.info("MEMIT: %d of %d requests not taken yet: new targets on the edited model", len(miss), len(requests))
                if not miss:
                    break
                again, n = self.targets(lm, last, [requests[i] for i in miss], templates, progress)
                from_disk += n
                for i, v in zip(miss, again):
                    z[i] = v.v0 + v.delta
                more, final = self.spread(lm, requests, z, layers, moments, templates)
            for name, d in more.items():
                deltas[name] = _summed(deltas.get(name), d, lm.model.get_parameter(name))
        layout = lm.layout
        info = {
            "layers": layers,
            "layers_reason": self.layers_reason(lm),
            "modules": [layout.mlp_out[l] for l in layers],
            "n_requests": len(requests),
            "gradient_steps": sum(v.steps for v in values) / len(values),
            "per_request": {
                "gradient_steps": [v.steps for v in values],
                "target_prob_before": [v.target_prob[0] for v in values],
                "target_prob_after_value_opt": [v.target_prob[1] for v in values],
            },
            "target_distance_left": float((final - z).norm(dim=1).mean() / (z - torch.stack([v.v0 for v in values])).norm(dim=1).mean().clamp(min=1e-12)),
            "value_seconds": t_values,
            "retargeted": retargeted,  # per round of new targets: the requests not taken yet that got one
            "targets_from_disk": from_disk,  # computed before on these weights (target_cache.py): their time is not in value_seconds
            "precision": resolve_precision(hp.precision, lm.device),
            "seconds": time.perf_counter() - t0,
        }
        return self.patch(lm, deltas, requests, {**asdict(hp), "layers": layers, "mom2_update_weight": hp.lam(layout.intermediate_size)}, info)

    def targets(self, lm: LanguageModel, last: int, requests: Sequence[Request], templates, progress=None):
        """(each request's target value at block ``last``, how many were read from disk)."""
        hp = self.hparams
        if hp.cache_targets:
            return cached_values(lm, last, requests, templates, (hp.kl_prompt,), hp.value, at="block", chunk=hp.value_batch,
                                 progress=progress)
        return compute_values(lm, last, requests, templates, (hp.kl_prompt,), hp.value, at="block", chunk=hp.value_batch,
                              progress=progress), 0

    def spread(self, lm: LanguageModel, requests: Sequence[Request], z: torch.Tensor, layers: Sequence[int], moments, templates):
        """The updates of the layers, lowest first, each made on the model holding the ones below, that move
        the residual stream at the last layer toward the targets ``z``; and the residual reached."""
        hp, layout = self.hparams, lm.layout
        last = layers[-1]
        deltas: dict[str, Delta] = {}
        reader = RangeReader(lm, layers[0], requests, templates, hp.key_batch)
        # the bare prompts with their targets, whole: the tokens besides the edit sites (own_tokens_weight)
        own = RangeReader(lm, layers[0], requests, ("{}",), hp.key_batch, whole=True) if hp.own_tokens_weight else None
        with ExitStack() as applied:
            for p in range(hp.passes):
                for i, layer in enumerate(layers):
                    now = reader.residuals(last)  # (n, hidden)
                    share = (z - now) / (len(layers) - i)
                    keys, resid = self.fitted(reader, layer, share)
                    held = None if own is None else hp.own_tokens_weight * own.off_site_moment(layer)
                    R, A = self.layer_update(lm, layer, resid, keys, moments[layer], held)
                    name = layout.weight_name(layer)
                    d = Delta(left=A.float(), right=R.float()) if layout.mlp_out_transposed else Delta(left=R.float(), right=A.float())
                    applied.enter_context(Patch.from_deltas(lm.model, {name: d}, method=self.name, hparams={}, requests=[]).applied(lm))
                    deltas[name] = _summed(deltas.get(name), d, lm.model.get_parameter(name))
                    log.info("MEMIT pass %d, layer %d: mean residual norm %.3f", p + 1, layer, float(share.norm(dim=1).mean()))
            final = reader.residuals(last)
            self.after_update(lm, reader, layers)
        return deltas, final

    def fitted(self, reader: RangeReader, layer: int, resid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The keys at ``layer`` that the update maps to the residuals, and those residuals (rows alike): each
        request's key averaged over its contexts (the paper's); with ``prompt_key``, its bare prompt's own
        key too, both with its residual and both rows × √½ — each pair fitted at half weight, so that where the
        two keys are equal the update is the paper's."""
        if not self.hparams.prompt_key:
            return reader.keys(layer), resid
        avg, own = reader.key_pairs(layer)
        half = 0.5**0.5
        return torch.cat([avg, own]) * half, None if resid is None else torch.cat([resid, resid]) * half

    def layer_update(self, lm: LanguageModel, layer: int, resid: torch.Tensor, keys: torch.Tensor, C: torch.Tensor,
                     held: torch.Tensor | None = None):
        """(R, A) with ΔW = R Aᵀ at ``layer``: MEMIT's least-squares update; ``held``: the weighted second
        moment (a sum) of other keys to keep, or None."""
        return memit_update(resid, keys, C, self.hparams.lam(lm.layout.intermediate_size), held)

    def after_update(self, lm: LanguageModel, reader: RangeReader, layers: Sequence[int]) -> None:
        """Called with every layer's update applied; MEMIT keeps nothing (AlphaEdit remembers the keys)."""


def _summed(before: Delta | None, d: Delta, W: torch.Tensor) -> Delta:
    """``before`` + ``d`` for a parameter shaped like ``W``: low-rank (factors side by side) while that is smaller
    than the dense matrix."""
    if before is not None and before.dense is None and d.dense is None:
        d = Delta(left=torch.cat([before.left, d.left], 1), right=torch.cat([before.right, d.right], 1))
    elif before is not None:
        return Delta(dense=(before.materialize(W) + d.materialize(W)).cpu())
    if d.rank * (W.shape[0] + W.shape[1]) >= W.shape[0] * W.shape[1]:
        return Delta(dense=d.materialize(W).cpu())
    return d
