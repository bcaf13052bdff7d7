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

from modeledit.errors import EditFailedError
from modeledit.llm.hooks import Hooks
from modeledit.llm.model import LanguageModel
from modeledit.llm.partial import PartialForward, eager_attention, split_rows
from modeledit.llm.frozen import frozen_weights
from modeledit.llm.memory_hparams import VALUE_CHUNK, ValueHyperParams
from modeledit.llm.precision import computing_in, resolve_precision
from modeledit.llm.reach import reach
from modeledit.llm.request import Request
from modeledit.llm.rows import Rows, build_rows

log = logging.getLogger(__name__)

@dataclass
class ValueResult:
    k_star: torch.Tensor | None  # (intermediate,) averaged key (edit site "mlp_out" only)
    k_prompt: torch.Tensor | None  # (intermediate,) the key of the prompt as written (its bare row), likewise
    v0: torch.Tensor  # (hidden,) value at the edit site, bare prompt
    delta: torch.Tensor  # (hidden,) optimised change of the value
    steps: int  # gradient steps
    losses: list[float] = field(default_factory=list)  # the whole loss at each step
    target_nll: list[float] = field(default_factory=list)  # its first term, the target's NLL, at each step
    target_prob: tuple[float, float] = (0.0, 0.0)  # mean target probability before, after
    seconds: float = 0.0  # wall time of the batch it was optimised in, shared out evenly
    guard_reach: list[float] = field(default_factory=list)  # the reach of each guard row's key (reach.py)


def _per_request(values: torch.Tensor, owner: torch.Tensor, weight: torch.Tensor, n: int) -> torch.Tensor:
    """Σ over the entries of each request (``owner``) of ``values · weight``: (n,) or (n, dim)."""
    return torch.zeros((n, *values.shape[1:]), dtype=values.dtype, device=values.device).index_add(0, owner, values * weight)


def _at(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``t[rows, cols]`` with the indices taken to ``t``'s device (a device-mapped layer's own)."""
    return t[rows.to(t.device), cols.to(t.device)]


def optimise_values(
    lm: LanguageModel, layer: int, rows: Rows, hp: ValueHyperParams, at: str = "mlp_out", C: torch.Tensor | None = None,
    prompt_key: bool = False,
) -> list[ValueResult]:
    """δ for every request of ``rows``, added at ``at`` = "mlp_out" (the MLP output projection, ROME) or
    "block" (the block's output, MEMIT) of ``layer``. Guard rows (``rows.is_guard``, "mlp_out" only) get
    δ times the reach of their key (``reach.py``, with the key statistics ``C`` of the update, and the
    prompt's own key when the update is written at it too: ROME's ``prompt_key``)."""
    if rows.is_guard.any() and at != "mlp_out":
        raise ValueError("guard rows need the edit site 'mlp_out' (their reach is a rank-one update's)")
    t0 = time.perf_counter()
    model, layout = lm.model, lm.layout
    proj = layout.mlp_out[layer]
    site = proj if at == "mlp_out" else layout.blocks[layer]
    n, R = rows.n_requests, rows.input_ids.shape[0]
    dev = rows.input_ids.device
    split = split_rows(rows.input_ids, rows.attention_mask, rows.start, getattr(lm.config, "sliding_window", None))
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
    # each KL entry's weight: the KL prompts share kl_factor, the guard rows guard_factor, per request
    k_guard = rows.is_guard[k_rows]
    k_factor = torch.where(k_guard, hp.guard_factor, hp.kl_factor)
    kl_per_kind = torch.bincount(owner[k_rows] * 2 + k_guard.long(), minlength=2 * n).float().clamp(min=1)
    k_weight = k_factor / kl_per_kind[owner[k_rows] * 2 + k_guard.long()]

    g_rows, g_cols = rows.guard_rows, split.cols(rows.guard_rows, rows.guard_cols)
    g_weight = 1.0 / torch.bincount(g_rows, minlength=R).float().clamp(min=1)[g_rows]
    guard_per_request = torch.bincount(owner[rows.is_guard], minlength=n).float().clamp(min=1)

    def scores(hidden, keep_rows):
        """On the rows kept: each request's mean over its rewrite rows of the target's token-mean
        log-probability (teacher-forced) and of the token-mean probability exp(that), both (n,); the
        log-distributions at the KL positions and which KL entries were kept; each guard row's token-mean
        log-probability of the new target (R,), 0 for other rows. One pass through the output layer for
        all of them (it is the widest matmul of the step)."""
        pos = torch.full((R,), -1, dtype=torch.long, device=dev)
        pos[keep_rows] = torch.arange(len(keep_rows), device=dev)
        sel_t, sel_k, sel_g = pos[t_rows] >= 0, pos[k_rows] >= 0, pos[g_rows] >= 0
        at_t = _at(hidden, pos[t_rows[sel_t]], t_cols[sel_t])
        at_k = _at(hidden, pos[k_rows[sel_k]], k_cols[sel_k])
        at_g = _at(hidden, pos[g_rows[sel_g]], g_cols[sel_g])
        # the output layer may sit on another device than the inputs (a device map): the bookkeeping stays on `dev`
        logp = torch.log_softmax(lm.logits(torch.cat([at_t, at_k, at_g])).float(), dim=-1).to(dev)
        nt, nk = len(at_t), len(at_k)
        tok = logp[:nt].gather(1, rows.target_ids[sel_t][:, None])[:, 0]
        row_lp = _per_request(tok, t_rows[sel_t], t_weight[sel_t], R)  # (R,), 0 for rows not kept
        mine = (pos[every] >= 0) & rewrite
        lp = _per_request(row_lp[mine], owner[mine], row_weight[mine], n)
        prob = _per_request(row_lp[mine].detach().exp(), owner[mine], row_weight[mine], n)
        g_tok = logp[nt + nk :].gather(1, rows.guard_ids[sel_g][:, None])[:, 0]
        guard_lp = _per_request(g_tok, g_rows[sel_g], g_weight[sel_g], R)
        return lp, prob, logp[nt : nt + nk], sel_k, guard_lp

    # pass 1: the unedited model in its own precision (the keys and values the update uses), every layer
    with torch.no_grad(), Hooks(model) as hooks:
        rec_proj = hooks.record(proj, inputs=True, outputs=at == "mlp_out")
        rec_site = rec_proj if at == "mlp_out" else hooks.record(site, outputs=True)
        hidden = pf.first(hooks)
        _, p_before, kl_init, _, guard_init = scores(hidden, every)
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
    # how much of δ a guard row's tokens get (suffix columns): at each, the share the rank-one update gives
    # that token's key (its reach); every other row gets all of δ at its edit site
    share = torch.zeros(split.suffix_ids.shape, device=dev)
    if rows.is_guard.any():
        g = rows.is_guard.nonzero()[:, 0]
        on_g = rec_proj.input[g.to(rec_proj.input.device)]  # (guards, S, intermediate)
        own = owner[g][:, None].expand(-1, on_g.shape[1]).reshape(-1)
        kp = k_prompt if prompt_key else None
        share[g] = reach(C, k_star, on_g.reshape(-1, on_g.shape[-1]), own, kp).to(dev).reshape(len(g), -1)
        share[g] *= split.mask[g, split.prefix_ids.shape[1] :].float()  # not on padding
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
    steps, losses, nlls = [0] * n, [[] for _ in range(n)], [[] for _ in range(n)]
    p_after = p_before.clone()

    def add_delta(out):  # on the edit site's device
        own, guarded = owner[kept].to(delta.device), rows.is_guard[kept]
        i = (~guarded).nonzero()[:, 0]  # δ at the edit site
        col = site_col[kept][i]
        out = out.index_put((i.to(out.device), col.to(out.device)), out[i, col] + delta[own[i]].to(out.device, out.dtype))
        if guarded.any():  # δ times its reach at every token
            j = guarded.nonzero()[:, 0]
            d = share[kept[j]].to(delta.device)[:, :, None] * delta[own[j]][:, None, :]
            out = out.index_put((j.to(out.device),), out[j] + d.to(out.device, out.dtype))
        return out

    with computing_in(model, hp.precision), frozen_weights(model), eager_attention(model):
        if resolve_precision(hp.precision, dev) != "float32":
            # the KL reference in the loop's own precision, so that the KL term measures what δ changes
            with torch.no_grad(), Hooks(model) as hooks:
                pf.install(hooks)
                _, _, kl_init, _, guard_init = scores(pf(), every)
        with Hooks(model) as hooks:
            pf.install(hooks)
            hooks.edit_output(site, add_delta)
            for step in range(hp.steps):
                opt.zero_grad(set_to_none=True)
                tgt_lp, p_now, kl_new, sel, guard_lp = scores(pf(), kept)
                kl_each = F.kl_div(kl_init[sel], kl_new, log_target=True, reduction="none").sum(-1)
                kl = _per_request(kl_each, owner[k_rows[sel]], k_weight[sel], n)
                decay = (hp.weight_decay * delta.norm(dim=1) / v0_norm**2).to(dev)
                # a guard row must not come to prefer the new target: its rise in log-probability costs
                g_kept = rows.is_guard & active[owner]  # the guard rows still run
                rise = (guard_lp - guard_init).clamp(min=0)[g_kept]
                guard = hp.guard_factor * _per_request(rise, owner[g_kept], 1.0 / guard_per_request[owner[g_kept]], n)
                loss = -tgt_lp + kl + guard + decay  # (n,): each request's own loss
                live = loss[active]
                if not torch.isfinite(live).all():
                    raise EditFailedError(
                        f"value optimisation diverged (non-finite loss at step {step}); lower the learning rate "
                        f"(now {hp.lr}) or the clamp factor (now {hp.clamp_norm_factor})"
                    )
                with torch.no_grad():
                    done = (-tgt_lp if hp.stop_on == "target" else loss) < hp.loss_stop
                    finished = active & (done | (step == hp.steps - 1))
                    for i in active.nonzero()[:, 0].tolist():
                        losses[i].append(float(loss[i].detach()))
                        nlls[i].append(float(-tgt_lp[i].detach()))
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
            target_nll=nlls[i],
            target_prob=(float(p_before[i]), float(p_after[i])),
            seconds=seconds,
            guard_reach=share[rows.is_guard & (owner == i), site_col[rows.is_guard & (owner == i)]].tolist(),
        )
        for i in range(n)
    ]


def by_tail(lm: LanguageModel, requests: Sequence[Request]) -> list[int]:
    """The requests' indices ordered by the length in tokens of what follows the subject (prompt and target)."""
    def tail(r: Request) -> int:
        return len(lm.tokenizer(r.prompt.split("{}", 1)[1] + r.target, add_special_tokens=False)["input_ids"])

    return sorted(range(len(requests)), key=lambda i: tail(requests[i]))


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
    guards: Sequence[Sequence[str]] = (),
    C: torch.Tensor | None = None,
    prompt_key: bool = False,
    chunk: int = VALUE_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> list[ValueResult]:
    """``optimise_values`` over ``requests``, ``chunk`` requests per batch. The batches are cut from the
    requests ordered by the length of what follows their subject (prompt and target), so that a batch's
    rows have suffixes of about one length and little of each pass is padding (the requests are
    independent: the order changes no result); the results come back in the requests' order. ``token``:
    the edit site's token class (the last subject token; the sweep's others: ``tokens.TOKEN_CLASSES``);
    ``guards[i]``: other subjects held in request i's prompt, with ``C`` the update's key statistics
    (``prompt_key``: as ``optimise_values``)."""
    order = by_tail(lm, requests)
    out: list[ValueResult | None] = [None] * len(requests)
    done = 0
    for b in range(0, len(order), chunk):
        idx = order[b : b + chunk]
        rows = build_rows(lm, [requests[i] for i in idx], templates, kl_prompts, token, [guards[i] for i in idx] if guards else ())
        for i, v in zip(idx, optimise_values(lm, layer, rows, hp, at, C, prompt_key)):
            out[i] = v
        done += len(idx)
        if progress:
            progress(done, len(requests))
    return out  # type: ignore[return-value]
