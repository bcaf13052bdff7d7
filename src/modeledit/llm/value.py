"""The key k* and the value delta δ of a fact at one MLP output projection (ROME's compute_u/compute_v
inputs).

One pass over the edit's rows, with the weights as they are, gives the key k* (the projection's input at
the last subject token, averaged over the context templates), the value v₀ (its output at the bare
prompt), the hidden states entering the edited layer, and the KL reference distribution.

Then δ, added to the projection's output at the last subject token of every row, is optimised with Adam.
Each step runs only the layers from the edited one up (lower layers are skipped: their output is fed in
from the first pass), only on the tokens from the subject's last one on (the keys and values of the
tokens before it are cached once: δ cannot change them), computes logits only at the positions the loss
reads, and takes no gradient for any weight.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from modeledit.errors import EditFailedError
from modeledit.llm.hooks import Hooks
from modeledit.llm.model import LanguageModel
from modeledit.llm.rows import Rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValueHyperParams:
    lr: float = 0.5
    steps: int = 20
    loss_stop: float = 0.05
    kl_factor: float = 0.0625
    weight_decay: float = 0.5  # times ‖δ‖ / ‖v₀‖², as the reference code writes it
    clamp_norm_factor: float = 4.0  # ‖δ‖ ≤ clamp · ‖v₀‖


@dataclass
class ValueResult:
    k_star: torch.Tensor  # (intermediate,) averaged key
    v0: torch.Tensor  # (hidden,) value at the bare prompt
    delta: torch.Tensor  # (hidden,) optimised change of the value
    steps: int  # gradient steps
    losses: list[float] = field(default_factory=list)
    target_prob: tuple[float, float] = (0.0, 0.0)  # mean target probability before, after
    seconds: float = 0.0


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


@dataclass
class _Split:
    """The rows cut at each row's last subject token: positions before it cannot be changed by δ, so
    their keys and values are computed once (a KV cache) and each step runs only the suffix."""

    prefix_ids: torch.Tensor  # (rows, P) left-padded, so that distances in the cache are true distances
    prefix_pos: torch.Tensor  # (rows, P) their position ids
    prefix_mask: torch.Tensor
    suffix_ids: torch.Tensor  # (rows, S) right-padded
    mask: torch.Tensor  # (rows, P + S) attention mask over prefix and suffix
    suffix_pos: torch.Tensor  # (rows, S) position ids of the suffix
    subject_cols: torch.Tensor  # (rows,) the last subject token, in suffix columns (0 where cut there)
    target_cols: torch.Tensor  # target positions, in suffix columns
    kl_cols: torch.Tensor


def _split(rows: Rows, window: int | None) -> _Split:
    """Cut each row at its last subject token. Not for sliding-window attention that the rows outgrow:
    a sliding cache keeps only the last window of the prefix, so there the rows stay whole."""
    sp = rows.subject_pos
    lens = rows.attention_mask.sum(1)
    cut = sp if not window or int(lens.max()) + int(sp.max()) < window else torch.zeros_like(sp)
    P, S = int(cut.max()), int((lens - cut).max())
    n, dev = rows.input_ids.shape[0], rows.input_ids.device
    prefix_ids = torch.zeros((n, P), dtype=torch.long, device=dev)  # padding: masked out, any id will do
    prefix_mask = torch.zeros((n, P), dtype=torch.long, device=dev)
    suffix_ids = torch.zeros((n, S), dtype=torch.long, device=dev)
    suffix_mask = torch.zeros((n, S), dtype=torch.long, device=dev)
    for i in range(n):
        a, b = int(cut[i]), int(lens[i])
        prefix_ids[i, P - a :], prefix_mask[i, P - a :] = rows.input_ids[i, :a], 1
        suffix_ids[i, : b - a], suffix_mask[i, : b - a] = rows.input_ids[i, a:b], 1
    return _Split(
        prefix_ids,
        (prefix_mask.cumsum(1) - 1).clamp(min=0),
        prefix_mask,
        suffix_ids,
        torch.cat([prefix_mask, suffix_mask], 1),
        cut[:, None] + torch.arange(S, device=dev)[None],
        sp - cut,
        rows.target_cols - cut[rows.target_rows],
        rows.kl_cols - cut[rows.kl_rows],
    )


class _PrefixCache:
    """Keys and values of the prefixes at every layer, handed out as a fresh cache for each forward pass
    (a pass appends the suffix to the cache it is given)."""

    def __init__(self, lm: LanguageModel, split: _Split):
        self.config = lm.model.config
        self.kv = None
        if split.prefix_ids.shape[1] == 0:
            return
        out = lm.model.base_model(
            input_ids=split.prefix_ids,
            attention_mask=split.prefix_mask,
            position_ids=split.prefix_pos,
            use_cache=True,
        )
        self.kv = [(layer.keys.detach(), layer.values.detach()) for layer in out.past_key_values.layers]

    def fresh(self):
        if self.kv is None:
            return None
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        for i, (k, v) in enumerate(self.kv):
            cache.update(k, v, i)
        return cache


def optimise_value(lm: LanguageModel, layer: int, rows: Rows, hp: ValueHyperParams) -> ValueResult:
    t0 = time.perf_counter()
    model, layout = lm.model, lm.layout
    proj, block = layout.mlp_out[layer], layout.blocks[layer]
    split = _split(rows, getattr(lm.config, "sliding_window", None))
    n_rows = rows.input_ids.shape[0]
    every = torch.arange(n_rows, device=rows.input_ids.device)
    t_rows, k_rows = rows.target_rows, rows.kl_rows

    with torch.no_grad():
        prefix = _PrefixCache(lm, split)

    def forward():
        return model.base_model(
            input_ids=split.suffix_ids,
            attention_mask=split.mask,
            position_ids=split.suffix_pos,
            past_key_values=prefix.fresh(),
            use_cache=prefix.kv is not None,
        ).last_hidden_state

    def target_logprobs(hidden):
        """(rewrite rows,) mean log-probability of the target tokens, teacher-forced."""
        logp = torch.log_softmax(lm.logits(hidden[t_rows, split.target_cols]).float(), dim=-1)
        return logp.gather(1, rows.target_ids[:, None])[:, 0].view(rows.n_rewrite, rows.target_len).mean(1)

    def kl_logprobs(hidden):
        return torch.log_softmax(lm.logits(hidden[k_rows, split.kl_cols]).float(), dim=-1)

    # pass 1: the unedited model on the suffixes, every layer
    with torch.no_grad(), Hooks(model) as hooks:
        rec_proj = hooks.record(proj, inputs=True, outputs=True)
        rec_block = hooks.record(block, inputs=True, outputs=False)
        rec_first = hooks.record(layout.blocks[0], outputs=True, keep_raw=True)
        hidden = forward()
        kl_init = kl_logprobs(hidden)
        p_before = target_logprobs(hidden).exp().mean().item()
    sc = split.subject_cols
    k_star = rec_proj.input[every, sc][: rows.n_rewrite].float().mean(0)
    v0 = rec_proj.output[0, sc[0]].float()  # row 0 is the bare template "{}"
    h_in = rec_block.input.detach()
    if not (torch.isfinite(k_star).all() and torch.isfinite(v0).all() and torch.isfinite(kl_init).all()):
        raise EditFailedError("the unedited model produces non-finite activations on this request; check the model's dtype")

    delta = torch.zeros(v0.shape[0], dtype=torch.float32, device=v0.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.lr)
    at_subject = torch.zeros(split.suffix_ids.shape + (1,), device=v0.device)
    at_subject[every, sc] = 1.0
    max_norm = hp.clamp_norm_factor * v0.norm()
    losses: list[float] = []
    p_after = p_before
    step = 0

    with frozen_weights(model), Hooks(model) as hooks:
        for i in range(layer):  # lower layers: their output (= the edited layer's input) is known
            hooks.skip(layout.blocks[i], like=rec_first.raw_output)
        hooks.replace_input(block, h_in)
        hooks.edit_output(proj, lambda out: out + (at_subject * delta).to(out.dtype))
        for step in range(hp.steps):
            opt.zero_grad(set_to_none=True)
            hidden = forward()
            tgt_lp = target_logprobs(hidden)
            nll = -tgt_lp.mean()
            kl = F.kl_div(kl_init, kl_logprobs(hidden), log_target=True, reduction="batchmean")
            decay = hp.weight_decay * delta.norm() / v0.norm() ** 2
            loss = nll + hp.kl_factor * kl + decay
            if not torch.isfinite(loss):
                raise EditFailedError(
                    f"value optimisation diverged (non-finite loss at step {step}); lower the learning rate "
                    f"(now {hp.lr}) or the clamp factor (now {hp.clamp_norm_factor})"
                )
            losses.append(loss.item())
            p_after = tgt_lp.detach().exp().mean().item()
            log.debug("step %d: loss %.3f = nll %.3f + kl %.3f + decay %.3f; p(target) %.3f",
                      step, losses[-1], nll.item(), kl.item(), decay.item(), p_after)
            if losses[-1] < hp.loss_stop or step == hp.steps - 1:
                break
            loss.backward()
            opt.step()
            with torch.no_grad():
                n = delta.norm()
                if n > max_norm:
                    delta.mul_(max_norm / n)
    return ValueResult(
        k_star=k_star,
        v0=v0,
        delta=delta.detach(),
        steps=step,  # gradient steps taken
        losses=losses,
        target_prob=(p_before, p_after),
        seconds=time.perf_counter() - t0,
    )
