"""Tokenisation shared by editing and evaluation, so that both see exactly the same token sequences."""

from __future__ import annotations

import torch

from modeledit.errors import RequestError


def encode_continuation(tokenizer, prompt: str, target: str, special: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of ``target`` as it continues the prompt.

    The target is taken as given (no space added) and tokenised once, after the prompt: from the
    tokenisation of ``prompt + target`` when that starts with the prompt's own tokens, else on its own.
    ``special=False``: no BOS token before the prompt (it continues a text already read).
    """
    p = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    full = tokenizer(prompt + target, add_special_tokens=special)["input_ids"]
    if full[: len(p)] == p and len(full) > len(p):
        t = full[len(p) :]
    else:
        t = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not t:
        raise RequestError("target", f"{target!r} tokenises to nothing: give a non-empty continuation")
    return p, t


def token_span(tokenizer, text: str, start: int, end: int) -> tuple[int, int]:
    """Tokens [first, last + 1) that hold the characters text[start:end] (a subject)."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        hit = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
        if hit:
            return hit[0], hit[-1] + 1
    # slow tokenizers: count the tokens of the text before the subject and up to its end
    last = len(tokenizer(text[:end])["input_ids"])
    return min(len(tokenizer(text[:start])["input_ids"]), last - 1), last


# the token positions of the ROME paper's edit sweep (its Figure of edits at each layer and token)
TOKEN_CLASSES = ("first_subject", "middle_subject", "last_subject", "first_after", "further", "last")


def token_position(token: str, first: int, last: int, prompt_len: int) -> int | None:
    """The position of class ``token`` in a prompt of ``prompt_len`` tokens whose subject spans tokens
    ``first..last``: the subject's first, middle (strictly inside it) or last token, the first token after
    it, a further token (the middle of those after the first one after it, the last excluded), or the
    prompt's last token; None where the prompt has no such token (a one-token subject has no middle)."""
    if token not in TOKEN_CLASSES:
        raise RequestError("token", f"{token!r} is not a token position; choose one of {', '.join(TOKEN_CLASSES)}")
    end = prompt_len - 1
    if token == "first_subject":
        return first
    if token == "middle_subject":
        return (first + last) // 2 if last - first >= 2 else None
    if token == "last_subject":
        return last
    if token == "first_after":
        return last + 1 if last + 1 <= end else None
    if token == "further":
        return (last + 2 + end - 1) // 2 if last + 2 <= end - 1 else None
    return end


def last_subject_token(tokenizer, text: str, subject_end: int) -> int:
    """Index of the token that holds the last character of the subject (which ends at char ``subject_end``)."""
    return token_span(tokenizer, text, subject_end - 1, subject_end)[1] - 1


def pad_right(seqs: list[list[int]], pad: int | None, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token sequences, right-padded to the longest."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad or 0, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)
