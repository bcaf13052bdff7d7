"""The value δ that makes the model say a new target (ROME's compute_v, MEMIT's compute_z), for one
request or many at once.

One pass over the requests' rows, with the weights as they are, gives for each request the key k* (the
MLP projection's input at the last subject token, averaged over the context templates), the value v₀ at
the edit site (the projection's output for ROME, the block's output — the residual stream — for MEMIT) at
the bare prompt, and the KL reference distribution.

Then each request's δ, added at the edit site at the last subject token of its rows, is optimised with
Adam on its own loss (NLL of its target + KL on its KL prompts + weight decay). Requests are independent:
their rows never meet and Adam works element by element, so optimising many in one batch gives each the
result it gets alone (in float32; in bfloat16 up to its rounding, which depends on the batch's shape), in
fewer and larger passes. A request leaves the batch as soon as its loss is under
the stop (its rows are dropped from later passes). Each pass is the one partial forward pass
(``partial.py``): from the edited layer up, on the tokens from the last subject token on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from modeledit.errors import EditFailedError, RequestError
from modeledit.llm.hooks import Hooks
from modeledit.llm.model import LanguageModel
from modeledit.llm.partial import PartialForward, eager_attention, split_rows
from modeledit.llm.precision import check_precision, computing_in, resolve_precision
from modeledit.llm.request import Request
from modeledit.llm.rows import Rows, build_rows
from modeledit.llm.stats import StatsConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValueHyperParams:
    lr: float = 0.5
    steps: int = 20
    loss_stop: float = 0.05
    kl_factor: float = 0.0625
    weight_decay: float = 0.5  # times ‖δ‖ / ‖v₀‖², as the reference code writes it
    clamp_norm_factor: float = 4.0  # ‖δ‖ ≤ clamp · ‖v₀‖
    precision: str = "auto"  # what the loop's matmuls compute in (precision.py)


@dataclass(frozen=True)
class MemoryEditHyperParams:
    """What the editors that write key → value memories (ROME, MEMIT) share: the context templates, the
    value optimisation and the key statistics (the papers' settings; each editor sets its own clamp)."""

    context_spec: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))  # (tokens, count) of prefixes
    context_seed: int = 0
    kl_prompt: str = "{} is a"
    lr: float = 0.5
    steps: int = 20
    loss_stop: float = 0.05
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    # the value optimisation's matmuls: "bfloat16", "float32", or "auto" = bfloat16 on hardware that multiplies it
    # fast (AMX CPUs, recent GPUs), else float32 (precision.py; keys, values, solves, statistics stay float32)
    precision: str = "auto"
    stats_tokens: int = 100_000
    stats_max_len: int = 256
    corpus: str | tuple[str, ...] | None = None  # None: the embedded Wikipedia leads; else text files or 'dataset:NAME'

    def __post_init__(self) -> None:
        for name in ("lr", "loss_stop", "clamp_norm_factor"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and v == v and v != float("inf")):
                raise RequestError(name, f"must be a positive finite number, got {v!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise RequestError("steps", f"must be a positive integer, got {self.steps!r}")
        check_precision(self.precision)
        if "{}" not in self.kl_prompt:
            raise RequestError("kl_prompt", "needs a '{}' for the subject, e.g. '{} is a'")

    @property
    def stats(self) -> StatsConfig:
        return StatsConfig(corpus=self.corpus, n_tokens=self.stats_tokens, max_len=self.stats_max_len)

    @property
    def value(self) -> ValueHyperParams:
        return ValueHyperParams(self.lr, self.steps, self.loss_stop, self.kl_factor, self.weight_decay, self.clamp_norm_factor, self.precision)


@dataclass
class ValueResult:
    k_star: torch.Tensor | None  # (intermediate,) averaged key (edit site "mlp_out" only)
    k_prompt: torch.Tensor | None  # (intermediate,) the key of the prompt as written (its bare row), likewise
    v0: torch.Tensor  # (hidden,) value at the edit site, bare prompt
    delta: torch.Tensor  # (hidden,) optimised change of the value
    steps: int  # gradient steps
    losses: list[float] = field(default_factory=list)
    target_prob: tuple[float, float] = (0.0, 0.0)  # mean target probability before, after
    seconds: float = 0.0  # wall time of the batch it was optimised in, shared out evenly


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


def _per_request(values: torch.Tensor, owner: torch.Tensor, weight: torch.Tensor, n: int) -> torch.Tensor:
    """Σ over the entries of each request (``owner``) of ``values · weight``: (n,) or (n, dim)."""
    return torch.zeros((n, *values.shape[1:]), dtype=values.dtype, device=values.device).index_add(0, owner, values * weight)


def _at(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``t[rows, cols]`` with the indices taken to ``t``'s device (a device-mapped layer's own)."""
    return t[rows.to(t.device), cols.to(t.device)]


def optimise_values(lm: LanguageModel, layer: int, rows: Rows, hp: ValueHyperParams, at: str = "mlp_out") -> list[ValueResult]:
    """δ for every request of ``rows``, added at ``at`` = "mlp_out" (the MLP output projection, ROME) or
    "block" (the block's output, MEMIT) of ``layer``."""
    t0 = time.perf_counter()
    model, layout = lm.model, lm.layout
    proj = layout.mlp_out[layer]
    site = proj if at == "mlp_out" else layout.blocks[layer]
    n, R = rows.n_requests, rows.input_ids.shape[0]
    dev = rows.input_ids.device
    split = split_rows(rows.input_ids, rows.attention_mask, rows.site, getattr(lm.config, "sliding_window", None))
    pf = PartialForward(lm, layer, split)

    every = torch.arange(R, device=dev)
    owner = rows.row_request
    site_col = split.cols(every, rows.site)  # (R,) in suffix columns
    t_rows, t_cols = rows.target_rows, split.cols(rows.target_rows, rows.target_cols)
    k_rows = rows.kl_rows
    k_cols = split.cols(k_rows, rows.kl_cols)
    # weights that turn token log-probs into each rewrite row's token-mean, and rows into requests' means
    rewrite = ~rows.is_kl
    rewrite_rows = torch.bincount(owner[rewrite], minlength=n).float()
    tokens_per_row = torch.bincount(t_rows, minlength=R).float()
    t_weight = 1.0 / tokens_per_row[t_rows]
    row_weight = 1.0 / rewrite_rows[owner]
    kl_per_request = torch.bincount(owner[k_rows], minlength=n).float().clamp(min=1)
    k_weight = 1.0 / kl_per_request[owner[k_rows]]

    def scores(hidden, keep_rows):
        """On the rows kept: each request's mean over its rewrite rows of the target's token-mean
        log-probability (teacher-forced) and of the token-mean probability exp(that), both (n,); the
        log-distributions at the KL positions and which KL entries were kept. One pass through the
        output layer for both (it is the widest matmul of the step)."""
        pos = torch.full((R,), -1, dtype=torch.long, device=dev)
        pos[keep_rows] = torch.arange(len(keep_rows), device=dev)
        sel_t, sel_k = pos[t_rows] >= 0, pos[k_rows] >= 0
        at_t = _at(hidden, pos[t_rows[sel_t]], t_cols[sel_t])
        at_k = _at(hidden, pos[k_rows[sel_k]], k_cols[sel_k])
        # the output layer may sit on another device than the inputs (a device map): the bookkeeping stays on `dev`
        logp = torch.log_softmax(lm.logits(torch.cat([at_t, at_k])).float(), dim=-1).to(dev)
        tok = logp[: len(at_t)].gather(1, rows.target_ids[sel_t][:, None])[:, 0]
        row_lp = _per_request(tok, t_rows[sel_t], t_weight[sel_t], R)  # (R,), 0 for rows not kept
        mine = (pos[every] >= 0) & rewrite
        lp = _per_request(row_lp[mine], owner[mine], row_weight[mine], n)
        prob = _per_request(row_lp[mine].detach().exp(), owner[mine], row_weight[mine], n)
        return lp, prob, logp[len(at_t) :], sel_k

    # pass 1: the unedited model in its own precision (the keys and values the update uses), every layer
    with torch.no_grad(), Hooks(model) as hooks:
        rec_proj = hooks.record(proj, inputs=True, outputs=at == "mlp_out")
        rec_site = rec_proj if at == "mlp_out" else hooks.record(site, outputs=True)
        hidden = pf.first(hooks)
        _, p_before, kl_init, _ = scores(hidden, every)
    first = rows.first_rows
    # keys, values and the delta live on the edit site's device (a device map may put it on another device
    # than the inputs, where the rows' bookkeeping stays: `dev`)
    v0 = _at(rec_site.output, first, site_col[first]).float()  # (n, hidden)
    k_star = k_prompt = None
    if at == "mlp_out":
        keys = _at(rec_proj.input, every, site_col).float()
        on = lambda t: t.to(keys.device)  # noqa: E731
        k_star = _per_request(keys[on(rewrite)], on(owner)[on(rewrite)], on(row_weight)[on(rewrite)][:, None], n)
        k_prompt = keys[on(first)]
    if not (torch.isfinite(v0).all() and torch.isfinite(kl_init).all() and (k_star is None or torch.isfinite(k_star).all())):
        raise EditFailedError("the unedited model produces non-finite activations on this request; check the model's dtype")
    del rec_proj, rec_site, hidden

    delta = torch.zeros_like(v0, requires_grad=True)  # float32 whatever the loop computes in
    opt = torch.optim.Adam([delta], lr=hp.lr)
    v0_norm = v0.norm(dim=1)
    max_norm = hp.clamp_norm_factor * v0_norm
    active = torch.ones(n, dtype=torch.bool, device=dev)
    kept = every  # rows still run (those of active requests)
    final: list[torch.Tensor | None] = [None] * n
    steps, losses = [0] * n, [[] for _ in range(n)]
    p_after = p_before.clone()

    def add_delta(out):  # on the edit site's device
        i, col = torch.arange(len(kept), device=out.device), site_col[kept].to(out.device)
        return out.index_put((i, col), out[i, col] + delta[owner[kept].to(delta.device)].to(out.device, out.dtype))

    with computing_in(model, hp.precision), frozen_weights(model), eager_attention(model):
        if resolve_precision(hp.precision, dev) != "float32":
            # the KL reference in the loop's own precision, so that the KL term measures what δ changes
            with torch.no_grad(), Hooks(model) as hooks:
                pf.install(hooks)
                kl_init = scores(pf(), every)[2]
        with Hooks(model) as hooks:
            pf.install(hooks)
            hooks.edit_output(site, add_delta)
            for step in range(hp.steps):
                opt.zero_grad(set_to_none=True)
                tgt_lp, p_now, kl_new, sel = scores(pf(), kept)
                kl_each = F.kl_div(kl_init[sel], kl_new, log_target=True, reduction="none").sum(-1)
                kl = _per_request(kl_each, owner[k_rows[sel]], k_weight[sel], n)
                decay = (hp.weight_decay * delta.norm(dim=1) / v0_norm**2).to(dev)
                loss = -tgt_lp + hp.kl_factor * kl + decay  # (n,): each request's own loss
                live = loss[active]
                if not torch.isfinite(live).all():
                    raise EditFailedError(
                        f"value optimisation diverged (non-finite loss at step {step}); lower the learning rate "
                        f"(now {hp.lr}) or the clamp factor (now {hp.clamp_norm_factor})"
                    )
                with torch.no_grad():
                    finished = active & ((loss < hp.loss_stop) | (step == hp.steps - 1))
                    for i in active.nonzero()[:, 0].tolist():
                        losses[i].append(float(loss[i].detach()))
                        p_after[i] = p_now[i]
                        if finished[i]:
                            final[i], steps[i] = delta[i].detach().clone(), step
                log.debug(
                    "step %d: %d of %d requests active, mean loss %.3f, mean NLL %.3f",
                    step, int(active.sum()), n, float(live.detach().mean()), float(-tgt_lp[active].detach().mean()),
                )
                if finished.any():
                    active &= ~finished
                    if not active.any():
                        break
                    kept = every[active[owner]]
                    pf.select(kept)
                loss[active].sum().backward()
                opt.step()
                with torch.no_grad():
                    norms = delta.norm(dim=1)
                    scale = torch.where(norms > max_norm, max_norm / norms.clamp(min=1e-12), torch.ones_like(norms))
                    delta.mul_(scale[:, None])
    seconds = (time.perf_counter() - t0) / n
    return [
        ValueResult(
            k_star=None if k_star is None else k_star[i],
            k_prompt=None if k_prompt is None else k_prompt[i],
            v0=v0[i],
            delta=final[i],
            steps=steps[i],
            losses=losses[i],
            target_prob=(float(p_before[i]), float(p_after[i])),
            seconds=seconds,
        )
        for i in range(n)
    ]


def compute_values(
    lm: LanguageModel,
    layer: int,
    requests: Sequence[Request],
    templates: Sequence[str],
    kl_prompts: Sequence[str],
    hp: ValueHyperParams,
    *,
    at: str = "mlp_out",
    token: str = "last_subject",
    chunk: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[ValueResult]:
    """``optimise_values`` over ``requests``, ``chunk`` requests per batch. The batches are cut from the
    requests ordered by the length of what follows their subject (prompt and target), so that a batch's
    rows have suffixes of about one length and little of each pass is padding (the requests are
    independent: the order changes no result); the results come back in the requests' order. ``token``:
    the edit site's token class (the last subject token; the sweep's others: ``tokens.TOKEN_CLASSES``)."""
    def tail(r: Request) -> int:
        return len(lm.tokenizer(r.prompt.split("{}", 1)[1] + r.target, add_special_tokens=False)["input_ids"])

    order = sorted(range(len(requests)), key=lambda i: tail(requests[i]))
    out: list[ValueResult | None] = [None] * len(requests)
    done = 0
    for b in range(0, len(order), chunk):
        idx = order[b : b + chunk]
        rows = build_rows(lm, [requests[i] for i in idx], templates, kl_prompts, token)
        for i, v in zip(idx, optimise_values(lm, layer, rows, hp, at)):
            out[i] = v
        done += len(idx)
        if progress:
            progress(done, len(requests))
    return out  # type: ignore[return-value]
