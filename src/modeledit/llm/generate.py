"""Continuing prompts: ``LanguageModel.generate`` is this.

Each prompt may be read after shared text — few-shot examples (``prefix``) and an applied in-context
edit's context (chosen by the prompt alone). Greedy continuations after shared text read it once: its
key/value cache is computed once per distinct text (and kept while the weights do not change) and
extended for the rows that share it, with each
row's own tokens left-padded after it (a multi-hop question after 300 tokens of examples, or a MeLLo step
after its 900-token prompt, costs its own tokens only; scoring reads the same cached keys). Sampling
(top-k) is seeded. ``transformers.generate`` cannot take a cache of a shared prefix with pads after it,
hence this loop (a sliding-window model's cache keeps its window as transformers does: the same
continuations, tested on Gemma-3). Greedy continuations without shared text take the same loop: its
output layer is computed as W·hᵀ (``LanguageModel.logits``), 4 ms a step against 32 ms in the model's own
layer for a few rows on these CPUs. Sampling without shared text goes through ``transformers.generate``,
whose random stream drew the context prefixes that ROME and MEMIT have cached.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch

from modeledit.llm.partial import kv_cache

HEAD_CACHE_BYTES = 512 * 2**20


@torch.no_grad()
def generate(
    lm: Any,
    prompts: str | Sequence[str],
    max_new_tokens: int = 20,
    *,
    do_sample: bool = False,
    top_k: int = 5,
    seed: int = 0,
    prefix: str = "",
    stop: Sequence[str] = (),
) -> str | list[str]:
    single = isinstance(prompts, str)
    asked = [prompts] if single else list(prompts)
    heads = [prefix] * len(asked)
    if lm.context is not None:  # an in-context edit: each prompt read after its context and a space
        heads = [c + " " + prefix if prefix else c for c in lm.context.prefixes(asked)]
        if not prefix:  # the context alone is the shared text, as in scoring (whose cached keys it reuses)
            asked = [" " + p for p in asked]
    texts: list[str] = [""] * len(asked)
    if do_sample and not any(heads):  # transformers' sampling: its random stream drew the cached context prefixes
        texts = _hf_generate(lm, [h + p for h, p in zip(heads, asked)], max_new_tokens, do_sample, top_k, seed, stop)
    else:
        sampler = torch.Generator(device=lm.device).manual_seed(seed) if do_sample else None
        for head in dict.fromkeys(heads):
            rows = [i for i, h in enumerate(heads) if h == head]
            for i, t in zip(rows, _after(lm, head, [asked[i] for i in rows], max_new_tokens, stop, top_k if do_sample else None, sampler)):
                texts[i] = t
    texts = [cut(t, stop) for t in texts]
    return texts[0] if single else texts


def cut(text: str, stop: Sequence[str]) -> str:
    """``text`` up to its first stop string."""
    for s in stop:
        text = text.split(s, 1)[0]
    return text


def _hf_generate(lm: Any, batch: list[str], max_new_tokens: int, do_sample: bool, top_k: int, seed: int, stop: Sequence[str]) -> list[str]:
    tok = lm.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(batch, return_tensors="pt", padding=True).to(lm.device)
    finally:
        tok.padding_side = side
    with torch.random.fork_rng(devices=[lm.device] if lm.device.type != "cpu" else []):
        torch.manual_seed(seed)
        out = lm.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            top_k=top_k if do_sample else None,
            top_p=None,
            temperature=None,
            pad_token_id=tok.pad_token_id,
            stop_strings=list(stop) or None,
            tokenizer=tok if stop else None,
        )
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def _after(lm: Any, head: str, prompts: list[str], max_new_tokens: int, stop: Sequence[str], top_k: int | None = None,
           sampler: torch.Generator | None = None, batch_size: int = 16) -> list[str]:
    """Continuations of ``prompts``, each read after ``head`` (tokenized on its own, as scoring does):
    greedy, or sampled from the ``top_k`` most likely tokens."""
    out: list[str] = []
    for b in range(0, len(prompts), batch_size):
        rows = Rows(lm, head, prompts[b : b + batch_size])
        out += [text for text, _ in rows.greedy(range(len(rows.texts)), max_new_tokens, stop, top_k, sampler)]
    return out


@torch.no_grad()
def head_kv(lm: Any, head: str) -> tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]:
    """The tokens of ``head`` and their key/value cache, kept in the model's memo while its weights are
    unchanged (``LanguageModel.state``: applying or reverting an edit changes it), least
    recently used dropped beyond HEAD_CACHE_BYTES: examples and prompts recur in every case of a benchmark."""
    memo = lm.memo.setdefault("head_kv", OrderedDict())
    key = (head, lm.state())
    if key in memo:
        memo.move_to_end(key)
        return memo[key]
    ids = lm.tokenizer(head)["input_ids"]
    if not ids:  # no shared text, and no BOS token to read first
        return [], []
    _, cache = lm.run(torch.tensor([ids], device=lm.device), use_cache=True)
    memo[key] = (ids, [(c.keys, c.values) for c in cache.layers])
    size = lambda v: sum(k.numel() * k.element_size() + x.numel() * x.element_size() for k, x in v[1])  # noqa: E731
    while len(memo) > 1 and sum(size(v) for v in memo.values()) > HEAD_CACHE_BYTES:
        memo.popitem(last=False)
    return memo[key]


class Rows:
    """Rows read after a shared head, continued step by step with their keys and values kept: ``extend``
    appends text to some rows, ``greedy`` continues some rows; each step reads only its new tokens. The
    rows step together (one batched pass per token); a row that is not moving takes masked pads."""

    def __init__(self, lm: Any, head: str, texts: Sequence[str]):
        self.lm = lm
        self.texts = list(texts)  # what each row has read, after the head
        head_ids, kv = head_kv(lm, head)
        n, dev = len(self.texts), lm.device
        self.cache = kv_cache(lm, [(k.expand(n, *k.shape[1:]), v.expand(n, *v.shape[1:])) for k, v in kv])
        self.mask = torch.ones(n, len(head_ids), dtype=torch.long, device=dev)
        self.next_pos = torch.full((n,), len(head_ids), dtype=torch.long, device=dev)
        self.last: torch.Tensor | None = None  # next-token logits of each row
        self._feed({i: lm.tokenizer(t, add_special_tokens=False)["input_ids"] for i, t in enumerate(self.texts)})

    def extend(self, texts: dict[int, str]) -> None:
        """Append ``texts[i]`` to row i."""
        for i, t in texts.items():
            self.texts[i] += t
        self._feed({i: self.lm.tokenizer(t, add_special_tokens=False)["input_ids"] for i, t in texts.items()})

    @torch.no_grad()
    def _feed(self, toks: dict[int, list[int]]) -> None:
        toks = {i: t for i, t in toks.items() if t}
        if not toks:
            return
        n, width, dev = len(self.texts), max(map(len, toks.values())), self.lm.device
        ids = torch.full((n, width), self.lm.tokenizer.pad_token_id or 0, dtype=torch.long)
        own = torch.zeros((n, width), dtype=torch.long)
        for i, t in toks.items():  # left-padded, so that each row's last token is in the last column
            ids[i, width - len(t) :] = torch.tensor(t)
            own[i, width - len(t) :] = 1
        ids, own = ids.to(dev), own.to(dev)
        pos = self.next_pos[:, None] + (own.cumsum(1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, own], 1)
        hidden, self.cache = self.lm.run(ids, attention_mask=self.mask, position_ids=pos, cache=self.cache, use_cache=True)
        logits = self.lm.logits(hidden[:, -1])
        rows = torch.tensor(sorted(toks), device=dev)
        self.last = logits if self.last is None else self.last.index_copy(0, rows, logits[rows])
        self.next_pos = self.next_pos + own.sum(1)

    def greedy(self, rows: Sequence[int], max_new_tokens: int, stop: Sequence[str] = (), top_k: int | None = None,
               sampler: torch.Generator | None = None) -> list[tuple[str, str]]:
        """Continue ``rows`` greedily (``top_k``: sampled from the k most likely tokens, drawn with
        ``sampler``); per row (the text cut before its first stop string, the text read — up to and
        including the token that completed the stop string or the end)."""
        tok = self.lm.tokenizer
        rows = list(rows)
        new: dict[int, list[int]] = {i: [] for i in rows}
        moving = set(rows)
        for _ in range(max_new_tokens):
            if not moving:
                break
            if top_k:
                best = self.last.float().topk(top_k, dim=-1)
                pick = torch.multinomial(torch.softmax(best.values, -1), 1, generator=sampler)
                nxt = best.indices.gather(1, pick)[:, 0].tolist()
            else:
                nxt = self.last.argmax(-1).tolist()
            fed: dict[int, list[int]] = {}
            for i in sorted(moving):
                if nxt[i] == tok.eos_token_id:
                    moving.discard(i)
                    continue
                new[i].append(nxt[i])
                fed[i] = [nxt[i]]
                if stop and any(s in tok.decode(new[i][-8:]) for s in stop):
                    moving.discard(i)
            self._feed(fed)
        out = []
        for i in rows:
            read = tok.decode(new[i], skip_special_tokens=True)
            self.texts[i] += read
            out.append((cut(read, stop), read))
        return out
