"""What causal tracing traces: a prompt, its subject's tokens and its answer (``prepare_prompt``), and the
noise level that corrupts the subject (``subject_noise_level``, set as the paper sets it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from modeledit.errors import RequestError
from modeledit.llm.model import LanguageModel
from modeledit.llm.request import fill, template_of
from modeledit.llm.tokens import encode_continuation, token_span


@dataclass(frozen=True)
class TracePrompt:
    text: str
    subject: str
    ids: tuple[int, ...]  # prompt tokens, then the target's tokens but its last (teacher forcing)
    n_prompt: int
    subject_span: tuple[int, int]  # prompt tokens [first, last + 1) of the subject
    target: str
    target_ids: tuple[int, ...]
    labels: tuple[str, ...]  # one per prompt token

    @property
    def target_positions(self) -> list[int]:
        """The positions whose logits predict the target's tokens."""
        return list(range(self.n_prompt - 1, self.n_prompt - 1 + len(self.target_ids)))


def prepare_prompt(lm: LanguageModel, prompt: str, subject: str, target: str | None = None) -> TracePrompt:
    """Tokenise and check a prompt ('{}' template or subject written out) and its target. Without a
    target, the model's own most likely next token is traced."""
    template = template_of(prompt, subject)
    text, start = fill(template, subject), template.index("{}")
    tok = lm.tokenizer
    if target is None:
        p = tok(text)["input_ids"]
        with torch.no_grad():
            h = lm.run(torch.tensor([p], device=lm.device))[0]
        t = [int(lm.logits(h[0, -1]).argmax())]
    else:
        if not isinstance(target, str) or not target.strip():
            raise RequestError("target", "is empty: give the answer to trace, e.g. ' Antarctica', or leave it out")
        p, t = encode_continuation(tok, text, target)
    limit = getattr(lm.config, "max_position_embeddings", None)
    if limit and len(p) + len(t) - 1 > limit:
        raise RequestError(
            "prompt", f"the prompt and target are {len(p) + len(t) - 1} tokens, longer than the model's context of {limit}: shorten it"
        )
    span = token_span(tok, text, start, start + len(subject))
    if span[1] > len(p):
        raise RequestError("subject", f"{subject!r} must end before the prompt does")
    labels = tuple(tok.decode([i]) for i in p)
    return TracePrompt(text, subject, tuple(p + t[:-1]), len(p), span, tok.decode(t), tuple(t), labels)


def subject_noise_level(lm: LanguageModel, subjects: Sequence[str] | None = None, factor: float = 3.0) -> float:
    """``factor`` × the standard deviation of the model's input embeddings over the tokens of a set of
    subjects (default: 1,000 titles of the embedded Wikipedia corpus), as the paper sets its noise."""
    key = ("noise-std", lm.identity, None if subjects is None else tuple(subjects))
    if key not in lm.memo:
        if subjects is None:
            from modeledit.llm.corpus import embedded_titles

            subjects = embedded_titles(1000)
        ids = [i for s in subjects for i in lm.tokenizer(s, add_special_tokens=False)["input_ids"]]
        if not ids:
            raise RequestError("subjects", "tokenise to nothing: give some subject names")
        embed = lm.model.get_submodule(lm.layout.embed)
        with torch.no_grad():
            e = embed(torch.tensor([ids], device=lm.device)).float()
        lm.memo[key] = float(e.std())
    return factor * lm.memo[key]
