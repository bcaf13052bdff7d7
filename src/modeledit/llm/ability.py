"""What a person asks of a model edited many times: can it still write, and does it still know what it knew?

- perplexity on held-out text: the last ``n`` lead paragraphs of the embedded corpus (the key statistics
  read it from the start, ~100,000 tokens of its ~1.5 million: these are never among them), each cut to
  ``max_len`` tokens;
- known facts: of ROME's known_1000 facts that the *unedited* model answers (its greedy continuation is the
  answer, every token), the share that the model still answers — leaving out the facts that the edits
  themselves change (an edit of the same subject whose old answer is the fact's: known_1000 and CounterFact
  share facts, and such a fact answered the old way would be an edit that did not take, not one kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from modeledit.llm.tokens import pad_right


@dataclass
class Ability:
    """The measures and their baseline on the unedited model (``baseline``: computed once, then fixed)."""

    texts: Sequence[str]
    known: Sequence[Any] = ()  # KnownFact records (trace_many.load_known); empty: not measured
    max_len: int = 128
    baseline: dict[str, Any] = field(default_factory=dict)

    def measure(self, lm, edited: Sequence[Any] = ()) -> dict[str, Any]:
        """``edited``: the requests the model holds (their facts are not counted as known facts kept)."""
        from modeledit.llm.trace_many import knows

        out: dict[str, Any] = {"perplexity": perplexity(lm, self.texts, self.max_len)}
        if self.known:  # known_answered: of all the facts given; known_retained: of those the unedited model answered
            answered = knows(lm, self.known)
            ids = [f.known_id for f, a in zip(self.known, answered) if a]
            changed = edited_facts(self.known, edited)
            before = set(self.baseline.get("known_ids", ids)) - changed
            out["known_ids"] = ids
            out["known_answered"] = len(ids) / len(self.known)
            out["known_retained"] = len(before & set(ids)) / len(before) if before else None
            out["known_edited"] = len(changed & set(self.baseline.get("known_ids", ids)))
        return out


def edited_facts(known: Sequence[Any], edited: Sequence[Any]) -> set[Any]:
    """The ids of the ``known`` facts that one of the ``edited`` requests changes: the same subject, and the
    request's old answer (``target_true``) is the fact's answer (compared without case or surrounding space)."""
    old: dict[str, set[str]] = {}
    for r in edited:
        if getattr(r, "target_true", None):
            old.setdefault(r.subject.strip().lower(), set()).add(r.target_true.strip().lower())
    return {f.known_id for f in known if f.answer.strip().lower() in old.get(f.subject.strip().lower(), ())}


def held_out_texts(n: int = 50) -> list[str]:
    from modeledit.llm.corpus import embedded_corpus

    return list(embedded_corpus().texts())[-n:]


def default_ability(known_file: str | Path | None) -> Ability:
    from modeledit.llm.trace_many import load_known

    return Ability(held_out_texts(), load_known(known_file) if known_file else ())


@torch.no_grad()
def perplexity(lm, texts: Sequence[str], max_len: int = 128, batch_size: int = 16) -> float:
    """exp of the mean next-token negative log-likelihood over all tokens of ``texts``."""
    total, count = 0.0, 0
    for b in range(0, len(texts), batch_size):
        seqs = [lm.tokenizer(t)["input_ids"][:max_len] for t in texts[b : b + batch_size]]
        ids, mask = pad_right(seqs, lm.tokenizer.pad_token_id, lm.device)
        hidden = lm.run(ids, attention_mask=mask)[0]
        logp = torch.log_softmax(lm.logits(hidden[:, :-1]).float(), -1)
        nll = -logp.gather(2, ids[:, 1:, None])[..., 0]
        m = mask[:, 1:].bool()
        total += float(nll[m].sum())
        count += int(m.sum())
    return math.exp(total / count)
