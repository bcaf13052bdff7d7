"""The precision the heavy loops (the value optimisation of ROME and MEMIT) compute in.

``computing_in(model, "bfloat16")`` makes every linear layer of the model multiply in bfloat16 — on
bfloat16 copies of its weights made once when the block starts — and hand back float32, until the block
ends; everything else (norms, activations, attention, softmax, losses) stays float32. The weights
themselves are never touched, so nothing needs restoring but the layers' ``forward``.

Why not ``torch.autocast``: it casts each weight again at every use, which on a CPU costs more than the
bfloat16 matmul saves (measured: 6.9 s against 4.9 s per ROME edit). Why not a bfloat16 copy of the whole
model: an AMX CPU's bfloat16 elementwise kernels and differentiated fused attention are slower than float32
ones, so one ROME edit that way was slower than float32 (8.8 s against 7.8 s on the Eiffel Tower request
here) while bfloat16 matmuls alone took it to 5.1 s. ``benchmarks/precision_smollm2.py`` measures both
precisions side by side.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from modeledit.errors import RequestError
from modeledit.llm.devices import input_device

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHOICES = ("auto", *PRECISIONS)  # auto: bfloat16 where the hardware multiplies it fast, else float32


def check_precision(name: str, field: str = "precision", choices: tuple[str, ...] = CHOICES) -> str:
    if name not in choices:
        raise RequestError(field, f"must be one of {', '.join(choices)}, got {name!r}")
    return name


def fast_bfloat16(device: torch.device) -> bool:
    """Whether "auto" means bfloat16 on ``device``: a CUDA GPU that supports it, or a CPU with AMX (where
    bfloat16 was checked side by side against float32). Not on AVX-512 BF16 alone: on the AMD EPYC CI got on
    2026-12-01 its matmuls ran 2.7-4x faster, but ROME's guarded Gemma-3 edit of the Eiffel Tower did not take
    in bfloat16 there (it does in float32, and in bfloat16 on AMX); ``precision="bfloat16"`` still asks for it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: absent means unknown
        return bool(amx and amx())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``precision`` means on ``device`` ("auto" resolved)."""
    if check_precision(precision) != "auto":
        return precision
    return "bfloat16" if fast_bfloat16(device) else "float32"


def _linear_weights(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight as (out, in), bias) of a linear map: nn.Linear, or GPT-2's Conv1D (weight stored (in, out))."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    if isinstance(module, Conv1D):
        return module.weight.T, module.bias
    return None


@contextmanager
def computing_in(model: nn.Module, precision: str) -> Iterator[None]:
    """Until the block ends, ``model``'s linear layers multiply in ``precision`` ("auto": see
    ``resolve_precision``) and return their input's dtype (a no-op for float32). Gradients flow to the
    inputs; the copies get none."""
    dtype = PRECISIONS[resolve_precision(precision, input_device(model))]
    swapped: list[tuple[nn.Module, object]] = []
    try:
        if dtype != torch.float32:
            for module in model.modules():
                found = _linear_weights(module)
                if found is None or found[0].dtype == dtype or found[0].device.type == "meta":  # offloaded: left as is
                    continue
                w, b = found
                w = w.detach().to(dtype).contiguous()
                b = None if b is None else b.detach().to(dtype)

                def forward(x, w=w, b=b):
                    return F.linear(x.to(w.dtype), w, b).to(x.dtype)

                swapped.append((module, module.__dict__.get("forward")))
                module.forward = forward
        yield
    finally:
        for module, previous in reversed(swapped):
            if previous is None:
                del module.forward
            else:
                module.forward = previous
