"""Teacher-forced scoring of continuations: the summed and mean token log-probabilities of each answer
after its prompt (multi-token answers scored token by token, never all from the last prompt position)."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from math import log2
from typing import Callable, Sequence

import torch

from modeledit.llm.model import LanguageModel
from modeledit.llm.generate import head_kv
from modeledit.llm.hooks import Hooks
from modeledit.llm.partial import PartialForward, kv_cache
from modeledit.llm.tokens import encode_continuation, pad_right


@dataclass(frozen=True)
class Continuation:
    logprob: float  # summed over the answer's tokens
    n_tokens: int
    tokens: tuple[int, ...] = ()  # the answer's tokens
    top1: tuple[int, ...] = ()  # the model's top-1 prediction at each of them (teacher-forced)

    @property
    def mean_logprob(self) -> float:
        """Token-mean log-probability (the ROME paper's comparison of two answers)."""
        return self.logprob / self.n_tokens

    @property
    def mean_prob(self) -> float:
        """Token-mean probability exp(mean log-prob), as magnitudes use it."""
        return math.exp(self.mean_logprob)

    @property
    def top1_accuracy(self) -> float:
        """Share of the answer's tokens that are the model's top-1 prediction (zsRE's accuracy)."""
        return sum(a == b for a, b in zip(self.tokens, self.top1)) / self.n_tokens


@torch.no_grad()
def score_continuations(
    lm: LanguageModel, pairs: Sequence[tuple[str, str]], batch_size: int = 32
) -> list[Continuation]:
    """For each (prompt, answer): log P(answer | prompt), summed over the answer's tokens, and the top-1
    prediction at each answer token. With an in-context edit applied (``lm.context``), each prompt is read
    after its context: the context's key/value cache is computed once and shared by its prompts."""
    context = getattr(lm, "context", None)
    if context is None:
        return _score(lm, [encode_continuation(lm.tokenizer, p, a) for p, a in pairs], None, batch_size)
    prefixes = context.prefixes([p for p, _ in pairs])
    out: list[Continuation | None] = [None] * len(pairs)
    for prefix in dict.fromkeys(prefixes):
        idx = [i for i, x in enumerate(prefixes) if x == prefix]
        head = lm.tokenizer(prefix)["input_ids"]
        enc = [encode_continuation(lm.tokenizer, " " + pairs[i][0], pairs[i][1], special=False) for i in idx]
        window = getattr(lm.config, "sliding_window", None)
        if window and len(head) + max(len(p) + len(t) for p, t in enc) >= window:
            # a sliding-window cache keeps only the last window of the context: read each row whole
            scored = _score(lm, [(head + p, t) for p, t in enc], None, batch_size)
        else:
            scored = _score(lm, enc, head_kv(lm, prefix)[1], batch_size)  # shared with generation after it
        for i, c in zip(idx, scored):
            out[i] = c
    return out  # type: ignore[return-value]


def _score(lm: LanguageModel, encoded: list[tuple[list[int], list[int]]], kv, batch_size: int) -> list[Continuation]:
    """Score encoded (prompt, answer) token lists, after a shared prefix's ``kv`` (per layer, batch 1) when given."""
    out: list[Continuation] = []
    P = 0 if kv is None else kv[0][0].shape[-2]
    for b in range(0, len(encoded), batch_size):
        enc = encoded[b : b + batch_size]
        seqs = [p + t for p, t in enc]
        ids, mask = pad_right(seqs, lm.tokenizer.pad_token_id, lm.device)
        if kv is None:
            hidden = lm.run(ids, attention_mask=mask)[0]
        else:
            n = len(seqs)
            cache = kv_cache(lm, [(k.expand(n, *k.shape[1:]), v.expand(n, *v.shape[1:])) for k, v in kv])
            full_mask = torch.cat([torch.ones(n, P, dtype=mask.dtype, device=mask.device), mask], 1)
            pos = P + torch.arange(ids.shape[1], device=ids.device)[None].expand(n, -1)
            hidden = lm.run(ids, attention_mask=full_mask, position_ids=pos, cache=cache, use_cache=True)[0]
        out += _continuations(lm, enc, hidden)
    return out


@torch.no_grad()
def score_from(lm: LanguageModel, pairs: Sequence[tuple[str, str]], start: PartialForward,
               beside: Callable[[Hooks], None] | None = None) -> list[Continuation]:
    """``score_continuations`` of ``pairs`` (no in-context edit) run only from block ``start.layer`` up:
    ``start`` holds the rows of the pairs' encodings (right-padded, one batch) and their unedited input to
    that block, so the model's current weights count from there on; ``beside`` installs more hooks for the
    pass (e.g. an edit added beside the weights)."""
    enc = [encode_continuation(lm.tokenizer, p, a) for p, a in pairs]
    ids, mask = pad_right([p + t for p, t in enc], lm.tokenizer.pad_token_id, lm.device)
    s = start.split
    if not (torch.equal(mask, s.mask.to(mask.device)) and torch.equal(ids * mask, s.suffix_ids.to(ids.device) * mask)):
        raise ValueError("the partial pass was not built on the rows of these pairs")
    with Hooks(lm.model) as hooks:
        start.install(hooks)
        if beside is not None:
            beside(hooks)
        hidden = start()
    return _continuations(lm, enc, hidden)


def _continuations(lm: LanguageModel, enc: list[tuple[list[int], list[int]]], hidden: torch.Tensor) -> list[Continuation]:
    """The Continuations of encoded (prompt, answer) rows from the final hidden states of their pass."""
    rows, cols, tgt, owner = [], [], [], []
    for i, (p, t) in enumerate(enc):
        rows += [i] * len(t)
        cols += range(len(p) - 1, len(p) - 1 + len(t))
        tgt += t
        owner += [i] * len(t)
    logp = torch.log_softmax(lm.logits(hidden[rows, cols]).float(), dim=-1)
    tok_lp = logp.gather(1, torch.tensor(tgt, device=logp.device)[:, None])[:, 0].cpu()  # the output layer's device
    top1 = logp.argmax(-1).cpu().tolist()
    sums = torch.zeros(len(enc), dtype=torch.float64).index_add_(0, torch.tensor(owner), tok_lp.double())
    out, at = [], 0
    for i, (_, t) in enumerate(enc):
        out.append(Continuation(float(sums[i]), len(t), tuple(t), tuple(top1[at : at + len(t)])))
        at += len(t)
    return out


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(texts: Sequence[str], ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """ROME's generation entropy: per text, the mean over n of weight_n · H(n-gram distribution) in bits;
    averaged over texts. Low values flag repetitive, degenerate generations."""
    vals = []
    for text in texts:
        words = _WORD.findall(text.lower())
        parts = []
        for n, w in zip(ns, weights):
            grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
            total = sum(grams.values())
            h = -sum(c / total * log2(c / total) for c in grams.values()) if total else 0.0
            parts.append(w * h)
        vals.append(sum(parts) / len(parts))
    return sum(vals) / len(vals) if vals else float("nan")
