"""The batch an LM edit optimises over: one row per context template (prompt + target, teacher-forced)
and one row per KL prompt, right-padded, with the positions of the last subject token and of the
targets. Built once per edit and shared by every method that optimises a value at the subject token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from modeledit.errors import RequestError
from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request, fill
from modeledit.llm.tokens import encode_continuation, last_subject_token, pad_right


@dataclass
class Rows:
    input_ids: torch.Tensor  # (rows, width), right-padded
    attention_mask: torch.Tensor
    subject_pos: torch.Tensor  # (rows,) index of the last subject token
    n_rewrite: int  # the first n_rewrite rows are rewrite rows, the rest KL rows
    target_ids: torch.Tensor  # (n_target,) the target tokens, rewrite row by row
    target_rows: torch.Tensor  # (n_target,) their row ...
    target_cols: torch.Tensor  # (n_target,) ... and the position whose logits predict them
    target_len: int
    kl_cols: torch.Tensor  # (rows - n_rewrite,) last position of each KL row

    @property
    def kl_rows(self) -> torch.Tensor:
        return torch.arange(self.n_rewrite, self.input_ids.shape[0], device=self.input_ids.device)


def subject_row(lm: LanguageModel, template: str, subject: str) -> tuple[str, int]:
    """Fill ``template`` ('... {} ...') with the subject; return the text and its last subject token."""
    text = fill(template, subject)
    end = template.index("{}") + len(subject)
    return text, last_subject_token(lm.tokenizer, text, end)


def build_rows(
    lm: LanguageModel, request: Request, templates: Sequence[str], kl_prompts: Sequence[str] = ("{} is a",)
) -> Rows:
    seqs, subj, t_ids, t_rows, t_cols, kl_cols = [], [], [], [], [], []
    # the target is tokenised once, after the bare prompt, exactly as evaluation scores it
    _, t = encode_continuation(lm.tokenizer, request.text, request.target)
    for r, ctx in enumerate(templates):
        text, s = subject_row(lm, fill(ctx, request.prompt), request.subject)
        p = lm.tokenizer(text)["input_ids"]
        if s >= len(p):
            raise RequestError("subject", f"{request.subject!r} must occur before the target in {text!r}")
        seqs.append(p + t[:-1])
        subj.append(s)
        t_ids.extend(t)
        t_rows.extend([r] * len(t))
        t_cols.extend(range(len(p) - 1, len(p) - 1 + len(t)))
    for kp in kl_prompts:
        text, s = subject_row(lm, kp, request.subject)
        ids = lm.tokenizer(text)["input_ids"]
        seqs.append(ids)
        subj.append(s)
        kl_cols.append(len(ids) - 1)
    dev = lm.device
    ids, mask = pad_right(seqs, lm.tokenizer.pad_token_id, dev)
    L = lambda xs: torch.tensor(xs, dtype=torch.long, device=dev)  # noqa: E731
    return Rows(
        ids, mask, L(subj), len(templates), L(t_ids), L(t_rows), L(t_cols), len(t), L(kl_cols)
    )
