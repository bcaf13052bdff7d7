"""The batch an LM edit optimises over: for each request, one row per context template (prompt + target,
teacher-forced) and one row per KL prompt, right-padded, with the positions of the last subject token and
of the targets. Built once per edit and shared by every method that optimises a value at the subject
token (ROME one request at a time, MEMIT many at once)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from modeledit.errors import RequestError
from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request, fill
from modeledit.llm.tokens import encode_continuation, last_subject_token, pad_right, token_position, token_span


@dataclass
class Rows:
    input_ids: torch.Tensor  # (rows, width), right-padded
    attention_mask: torch.Tensor
    site: torch.Tensor  # (rows,) the edit site: the last subject token, or the token class asked for
    start: torch.Tensor  # (rows,) the first position δ changes: the site, but a guard row's first subject token
    row_request: torch.Tensor  # (rows,) which request a row belongs to
    is_kl: torch.Tensor  # (rows,) bool: a KL row (else a rewrite row)
    is_guard: torch.Tensor  # (rows,) bool: a KL row of another subject in the request's prompt (``reach.py``)
    target_ids: torch.Tensor  # (n_target,) the target tokens of every rewrite row
    target_rows: torch.Tensor  # (n_target,) their row ...
    target_cols: torch.Tensor  # (n_target,) ... and the position whose logits predict them
    kl_cols: torch.Tensor  # (n_kl,) last position of each KL row, in the order of ``kl_rows``
    guard_ids: torch.Tensor  # (n_guard_target,) the new target's tokens after each guard row's prompt ...
    guard_rows: torch.Tensor  # (n_guard_target,) their row ...
    guard_cols: torch.Tensor  # (n_guard_target,) ... and the position whose logits predict them
    n_requests: int

    @property
    def kl_rows(self) -> torch.Tensor:
        return self.is_kl.nonzero()[:, 0]

    @property
    def first_rows(self) -> torch.Tensor:
        """(n_requests,) the first row of each request: its first context template ("{}": the bare prompt)."""
        r = self.row_request
        first = torch.ones_like(r, dtype=torch.bool)
        first[1:] = r[1:] != r[:-1]
        return first.nonzero()[:, 0]


def subject_row(lm: LanguageModel, template: str, subject: str, token: str = "last_subject") -> tuple[str, int | None]:
    """Fill ``template`` ('... {} ...') with the subject; return the text and its edit site: the last
    subject token, or the position of another token class (``tokens.TOKEN_CLASSES``; None where absent)."""
    text = fill(template, subject)
    start = template.index("{}")
    if token == "last_subject":
        return text, last_subject_token(lm.tokenizer, text, start + len(subject))
    first, end = token_span(lm.tokenizer, text, start, start + len(subject))
    return text, token_position(token, first, end - 1, len(lm.tokenizer(text)["input_ids"]))


def build_rows(
    lm: LanguageModel, requests: Request | Sequence[Request], templates: Sequence[str], kl_prompts: Sequence[str] = ("{} is a",),
    token: str = "last_subject", guards: Sequence[Sequence[str]] = (),
) -> Rows:
    """The rows of one request or of many (request by request: its rewrite rows, its KL rows, then its
    guard rows: ``guards[i]`` are other subjects put into request i's prompt, followed by its new target,
    teacher-forced: held by KL at the prompt's end and by the target's score), with the edit
    site at ``token`` (the last subject token; the sweep's other classes: ``tokens.TOKEN_CLASSES``). A KL
    row without a token of that class (``{} is a`` has no further token) is edited at its last token."""
    requests = [requests] if isinstance(requests, Request) else list(requests)
    if guards and len(guards) != len(requests):
        raise ValueError(f"{len(guards)} lists of guard subjects for {len(requests)} requests")
    if templates[0] != "{}":
        raise ValueError("the first context template must be the bare '{}' (its row gives the value v₀)")
    seqs, subj, begin, owner, kl, guard, t_ids, t_rows, t_cols, kl_cols = [], [], [], [], [], [], [], [], [], []
    g_ids, g_rows, g_cols = [], [], []
    for q, request in enumerate(requests):
        # the target is tokenised once, after the bare prompt, exactly as evaluation scores it
        _, t = encode_continuation(lm.tokenizer, request.text, request.target)
        for ctx in templates:
            text, s = subject_row(lm, fill(ctx, request.prompt), request.subject, token)
            p = lm.tokenizer(text)["input_ids"]
            if s is None:
                raise RequestError("token", f"{text!r} has no {token.replace('_', ' ')} token: edit it at another position")
            if s >= len(p):
                raise RequestError("subject", f"{request.subject!r} must occur before the target in {text!r}")
            r = len(seqs)
            seqs.append(p + t[:-1])
            subj.append(s)
            begin.append(s)
            owner.append(q)
            kl.append(False)
            guard.append(False)
            t_ids.extend(t)
            t_rows.extend([r] * len(t))
            t_cols.extend(range(len(p) - 1, len(p) - 1 + len(t)))
        kl_rows = [(kp, request.subject, False) for kp in kl_prompts]
        kl_rows += [(request.prompt, other, True) for other in (guards[q] if guards else ())]
        for kp, subject, is_guard in kl_rows:
            text, s = subject_row(lm, kp, subject, token)
            ids = lm.tokenizer(text)["input_ids"]
            s = len(ids) - 1 if s is None else s
            if is_guard:
                _, gt = encode_continuation(lm.tokenizer, text, request.target)
                g_ids.extend(gt)
                g_rows.extend([len(seqs)] * len(gt))
                g_cols.extend(range(len(ids) - 1, len(ids) - 1 + len(gt)))
                seqs.append(ids + gt[:-1])
            else:
                seqs.append(ids)
            subj.append(s)
            # the update reaches every token of a guard row (reach.py): from its subject's first token on
            at = kp.index("{}")
            begin.append(min(s, token_span(lm.tokenizer, text, at, at + len(subject))[0]) if is_guard else s)
            owner.append(q)
            kl.append(True)
            guard.append(is_guard)
            kl_cols.append(len(ids) - 1)
    dev = lm.device
    ids, mask = pad_right(seqs, lm.tokenizer.pad_token_id, dev)
    L = lambda xs: torch.tensor(xs, dtype=torch.long, device=dev)  # noqa: E731
    return Rows(
        ids, mask, L(subj), L(begin), L(owner), torch.tensor(kl, device=dev), torch.tensor(guard, device=dev), L(t_ids), L(t_rows), L(t_cols), L(kl_cols),
        L(g_ids), L(g_rows), L(g_cols), len(requests),
    )
