"""The fingerprint of a tensor's bytes: how a patch knows the weights it was made on and what it makes of
them (and AlphaEdit which weights its remembered edits belong to, a classifier edit its input)."""

from __future__ import annotations

import hashlib

import torch


def fingerprint(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (first 32 hex digits). A parameter keeps its last
    fingerprint with its version counter (bumped by every in-place write, ``copy_`` included), so that the
    checks of apply, revert and the next edit do not hash the same unchanged weights again (a MEND edit
    touches 9 matrices, 32 MB: hashing them was half its time). Writes through ``.data`` escape the counter."""
    memo = getattr(tensor, "_modeledit_fingerprint", None)
    if memo is not None and memo[:2] == (tensor._version, tensor.data_ptr()):
        return memo[2]
    t = tensor.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.view(torch.uint8).numpy() if t.numel() else b"")  # the tensor's own buffer, not a copy
    fp = h.hexdigest()[:32]
    remember(tensor, fp)
    return fp


def remember(tensor: torch.Tensor, fp: str) -> None:
    """Keep ``fp`` as the fingerprint of a parameter's bytes as they are now (see ``fingerprint``)."""
    if isinstance(tensor, torch.nn.Parameter):
        tensor._modeledit_fingerprint = (tensor._version, tensor.data_ptr(), fp)
