"""The one partial forward pass: run a batch again and again from one block up, computing only what can
change there.

An edit that changes the model at block ``layer`` (a value added at the subject token, a weight being
fine-tuned) cannot change what the blocks below compute, nor, for a change at the subject token, the
tokens before it. So the batch is

- cut per row (``cut``: the first position that can change; 0 = every position): the prefix before the
  cut is run once into a KV cache (left-padded so that distances in the cache stay true), and each later
  pass runs only the suffix;
- run once in full (``first``), recording the input of block ``layer``; later passes (``__call__`` inside
  ``install``) skip the blocks below and feed that input in.

Not for sliding-window attention that the rows outgrow (a sliding cache keeps only the last window of the
prefix): there the rows stay whole. ``select`` keeps a subset of the rows (requests that are finished
drop out of later passes). Every method that optimises through the model uses this one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from modeledit.llm.hooks import Hooks
from modeledit.llm.model import LanguageModel


@dataclass
class Split:
    """Rows cut in two: a left-padded prefix (cached once) and a right-padded suffix (run every pass)."""

    prefix_ids: torch.Tensor  # (rows, P)
    prefix_pos: torch.Tensor  # (rows, P) position ids
    prefix_mask: torch.Tensor
    suffix_ids: torch.Tensor  # (rows, S)
    mask: torch.Tensor  # (rows, P + S) attention mask over prefix and suffix
    suffix_pos: torch.Tensor  # (rows, S) position ids of the suffix
    cut: torch.Tensor  # (rows,) where each row was cut

    def cols(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Positions of the whole rows, as columns of the suffix."""
        return cols - self.cut[rows]

    def select(self, idx: torch.Tensor) -> "Split":
        return Split(*(getattr(self, f.name)[idx] for f in fields(self)))


def split_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, cut: torch.Tensor, window: int | None = None) -> Split:
    """Cut right-padded rows at ``cut`` (per row); with a sliding window the rows outgrow, cut nowhere."""
    lens = attention_mask.sum(1)
    if window and int(lens.max()) + int(cut.max()) >= window:
        cut = torch.zeros_like(cut)
    P, S = int(cut.max()), int((lens - cut).max())
    n, dev = input_ids.shape[0], input_ids.device
    prefix_ids = torch.zeros((n, P), dtype=torch.long, device=dev)  # padding: masked out, any id will do
    prefix_mask = torch.zeros((n, P), dtype=torch.long, device=dev)
    suffix_ids = torch.zeros((n, S), dtype=torch.long, device=dev)
    suffix_mask = torch.zeros((n, S), dtype=torch.long, device=dev)
    for i in range(n):
        a, b = int(cut[i]), int(lens[i])
        prefix_ids[i, P - a :], prefix_mask[i, P - a :] = input_ids[i, :a], 1
        suffix_ids[i, : b - a], suffix_mask[i, : b - a] = input_ids[i, a:b], 1
    return Split(
        prefix_ids,
        (prefix_mask.cumsum(1) - 1).clamp(min=0),
        prefix_mask,
        suffix_ids,
        torch.cat([prefix_mask, suffix_mask], 1),
        cut[:, None] + torch.arange(S, device=dev)[None],
        cut,
    )


class eager_attention:
    """Plain matmul-softmax attention for the duration, then the model's own kernel again: the passes of an
    optimisation attend from a few suffix tokens to a few dozen, where the fused kernels' overhead costs more
    than they save (MEMIT's targets: 7% faster on SmolLM2, 128 requests side by side)."""

    def __init__(self, model):
        self.model = model
        self.before = getattr(model.config, "_attn_implementation", None)

    def __enter__(self):
        if self.before not in (None, "eager") and hasattr(self.model, "set_attn_implementation"):
            self.model.set_attn_implementation("eager")

    def __exit__(self, *exc):
        if self.before not in (None, "eager") and hasattr(self.model, "set_attn_implementation"):
            self.model.set_attn_implementation(self.before)


def kv_cache(lm: LanguageModel, kv: list[tuple[torch.Tensor, torch.Tensor]]):
    """A fresh key/value cache holding ``kv`` (per layer), for one pass that continues those rows."""
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.model.config)
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    return cache


class PartialForward:
    """``first(hooks)`` runs the suffixes through the whole model (with the caller's recordings);
    afterwards, inside ``install(hooks)``, ``__call__()`` runs them from block ``layer`` up."""

    def __init__(self, lm: LanguageModel, layer: int, split: Split):
        self.lm, self.layer, self.split = lm, layer, split
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.h_in: torch.Tensor | None = None
        self._like = None
        self._all = None  # (split, kv, h_in) of every row, for select
        if split.prefix_ids.shape[1]:
            with torch.no_grad():
                _, cache = lm.run(split.prefix_ids, attention_mask=split.prefix_mask, position_ids=split.prefix_pos, use_cache=True)
            self.kv = [(c.keys.detach(), c.values.detach()) for c in cache.layers]

    def _cache(self):
        return None if self.kv is None else kv_cache(self.lm, self.kv)

    def __call__(self) -> torch.Tensor:
        """The final hidden states (after the model's last norm) of the suffixes."""
        s = self.split
        return self.lm.run(
            s.suffix_ids, attention_mask=s.mask, position_ids=s.suffix_pos, cache=self._cache(), use_cache=self.kv is not None
        )[0]

    def first(self, hooks: Hooks) -> torch.Tensor:
        """The full pass (no gradient), recording what later passes feed in; ``hooks`` may record more."""
        keep = self.watch(hooks)
        with torch.no_grad():
            hidden = self()
        keep()
        return hidden

    def watch(self, hooks: Hooks) -> Callable[[], None]:
        """Record what later passes feed in during the next pass over these rows — ``first``'s, or the
        caller's own (with a gradient, say); call the function returned after that pass."""
        layout = self.lm.layout
        rec_block = hooks.record(layout.blocks[self.layer], inputs=True, outputs=False)
        rec_first = hooks.record(layout.blocks[0], outputs=True, keep_raw=True)

        def keep() -> None:
            self.h_in, self._like = rec_block.input.detach(), rec_first.raw_output
            self._all = (self.split, self.kv, self.h_in)

        return keep

    def install(self, hooks: Hooks) -> None:
        """Skip the blocks below ``layer`` and feed the recorded input to it, for every later pass."""
        if self.h_in is None:
            raise RuntimeError("run PartialForward.first before installing it")
        layout = self.lm.layout
        for i in range(self.layer):
            hooks.skip(layout.blocks[i], like=self._like)
        hooks.replace_input(layout.blocks[self.layer], lambda: self.h_in)  # the rows selected at call time

    def select(self, idx: torch.Tensor) -> None:
        """Run only the rows ``idx`` (indices into the rows it was built with) in later passes."""
        if self._all is None:
            raise RuntimeError("run PartialForward.first before selecting rows")
        split, kv, h_in = self._all
        self.split, self.h_in = split.select(idx), h_in[idx.to(h_in.device)]  # each layer's tensors on its own device
        self.kv = None if kv is None else [(k[idx.to(k.device)], v[idx.to(v.device)]) for k, v in kv]
