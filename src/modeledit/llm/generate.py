"""Continuing prompts: ``LanguageModel.generate`` is this.

Each prompt may be read after shared text — few-shot examples (``prefix``) and an applied in-context
edit's context (chosen by the prompt alone). Greedy continuations after shared text read it once: its
key/value cache is computed once per distinct text (and kept while the weights do not change) and
extended for the rows that share it, with each
row's own tokens left-padded after it (a multi-hop question after 300 tokens of examples, or a MeLLo step
after its 900-token prompt, costs its own tokens only). ``transformers.generate`` cannot take a cache of
a shared prefix with pads after it, hence this loop. Sampling, and models with a sliding-window cache
(which keeps only the window's last tokens), go through ``transformers.generate`` on whole rows.
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
    if lm.context is not None:  # an in-context edit: each prompt read after its context
        heads = [c + " " + prefix for c in lm.context.prefixes(asked)]
    texts: list[str] = [""] * len(asked)
    if do_sample or getattr(lm.config, "sliding_window", None) or not any(heads):
        texts = _hf_generate(lm, [h + p for h, p in zip(heads, asked)], max_new_tokens, do_sample, top_k, seed, stop)
    else:
        for head in dict.fromkeys(heads):
            rows = [i for i, h in enumerate(heads) if h == head]
            for i, t in zip(rows, _greedy_after(lm, head, [asked[i] for i in rows], max_new_tokens, stop)):
                texts[i] = t
    for s in stop:
        texts = [t.split(s, 1)[0] for t in texts]
    return texts[0] if single else texts


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


def _greedy_after(lm: Any, head: str, prompts: list[str], max_new_tokens: int, stop: Sequence[str], batch_size: int = 16) -> list[str]:
    """Greedy continuations of ``prompts``, each read after ``head`` (tokenized on its own, as scoring does)."""
    tok = lm.tokenizer
    head_ids, kv = _head_kv(lm, head)
    out: list[str] = []
    for b in range(0, len(prompts), batch_size):
        rows = [tok(p, add_special_tokens=False)["input_ids"] or [tok.pad_token_id] for p in prompts[b : b + batch_size]]
        out += _decode(lm, kv, len(head_ids), rows, max_new_tokens, stop)
    return out


def _head_kv(lm: Any, head: str) -> tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]:
    """The tokens of ``head`` and their key/value cache, kept in the model's memo while its weights are
    unchanged (the parameters' version counters: applying or reverting an edit moves them), least
    recently used dropped beyond HEAD_CACHE_BYTES: examples and prompts recur in every case of a benchmark."""
    memo = lm.memo.setdefault("head_kv", OrderedDict())
    key = (head, tuple(p._version for p in lm.model.parameters()))
    if key in memo:
        memo.move_to_end(key)
        return memo[key]
    ids = lm.tokenizer(head)["input_ids"]
    _, cache = lm.run(torch.tensor([ids], device=lm.device), use_cache=True)
    memo[key] = (ids, [(c.keys, c.values) for c in cache.layers])
    size = lambda v: sum(k.numel() * k.element_size() + x.numel() * x.element_size() for k, x in v[1])  # noqa: E731
    while len(memo) > 1 and sum(size(v) for v in memo.values()) > HEAD_CACHE_BYTES:
        memo.popitem(last=False)
    return memo[key]


def _decode(lm: Any, kv, P: int, rows: list[list[int]], max_new_tokens: int, stop: Sequence[str]) -> list[str]:
    n, width = len(rows), max(map(len, rows))
    pad = lm.tokenizer.pad_token_id or 0
    ids = torch.full((n, width), pad, dtype=torch.long)
    own = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):  # left-padded after the shared head
        ids[i, width - len(r) :] = torch.tensor(r)
        own[i, width - len(r) :] = 1
    ids, own = ids.to(lm.device), own.to(lm.device)
    mask = torch.cat([torch.ones(n, P, dtype=own.dtype, device=own.device), own], 1)
    pos = (P + own.cumsum(1) - 1).clamp(min=P)
    cache = kv_cache(lm, [(k.expand(n, *k.shape[1:]), v.expand(n, *v.shape[1:])) for k, v in kv])
    hidden, cache = lm.run(ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    eos = lm.tokenizer.eos_token_id
    new: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    pos = pos[:, -1:]
    for _ in range(max_new_tokens):
        nxt = lm.logits(hidden[:, -1]).argmax(-1)
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if t == eos:
                done[i] = True
                continue
            new[i].append(t)
            if stop and any(s in lm.tokenizer.decode(new[i][-8:]) for s in stop):
                done[i] = True
        if all(done):
            break
        mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype, device=mask.device)], 1)
        pos = pos + 1
        hidden, cache = lm.run(nxt[:, None], attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    return [lm.tokenizer.decode(t, skip_special_tokens=True) for t in new]
