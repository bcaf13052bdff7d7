"""Answering questions with a language model, and matching answers, as MQuAKE does.

- ``normalize``: lower case, no punctuation, no articles (a, an, the), single spaces (SQuAD's rule).
- ``matches``: a generated answer equals an accepted one after normalising (``prefix=True``: or starts
  with it at a word boundary — for cloze continuations, which run on past the answer).
- ``ask``: greedy answers to questions after few-shot examples, one answer line each (``Q: … A:`` format,
  or chain-of-thought ``Question: … Thoughts: …`` ending in ``Answer: …``). An applied edit that answers
  questions itself (a memory such as MeLLo's: ``lm.context.answer_questions``) answers instead, and gives
  the trace of how it did.
"""

from __future__ import annotations

import re
import string
from typing import Any, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def matches(generated: str, accepted: Sequence[str], prefix: bool = False) -> bool:
    g = normalize(generated)
    for a in accepted:
        n = normalize(a)
        if n and (g == n or (prefix and g.startswith(n + " "))):
            return True
    return False


def ask(lm: Any, questions: Sequence[str], fewshot: str | Sequence[str], *, cot: bool = False,
        max_new_tokens: int | None = None) -> tuple[list[str], list[Any]]:
    """Greedy answers to ``questions``, each after its few-shot examples (one text for all, or one per
    question); returns the answers and, per question, the trace (the generated text, or an answering
    edit's own record). Questions that share their examples are answered in one batch."""
    answerer = getattr(getattr(lm, "context", None), "answer_questions", None)
    if answerer is not None:
        return answerer(lm, list(questions))
    shots = [fewshot] * len(questions) if isinstance(fewshot, str) else list(fewshot)
    answers: list[str] = [""] * len(questions)
    texts: list[str] = [""] * len(questions)
    for shot in dict.fromkeys(shots):
        idx = [i for i, s in enumerate(shots) if s == shot]
        if cot:
            got = lm.generate([f"\n\nQuestion: {questions[i]}\nThoughts:" for i in idx], max_new_tokens or 96,
                              prefix=shot.rstrip("\n"), stop=("\n\n", "\nQuestion:"))
        else:
            got = lm.generate([f"\nQ: {questions[i]} A:" for i in idx], max_new_tokens or 16, prefix=shot.rstrip("\n"), stop=("\n",))
        for i, t in zip(idx, got):
            texts[i], answers[i] = t, (_cot_answer(t) if cot else t.strip())
    return answers, texts


def _cot_answer(text: str) -> str:
    """The last ``Answer:`` line of a chain of thought ('' when it gives none)."""
    found = [line.split("Answer:", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("Answer:")]
    return found[-1] if found else ""
