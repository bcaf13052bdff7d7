"""The one place that knows where a model keeps its blocks, MLPs and attention.

``find_layout`` walks the module tree (the ModuleList of ``num_hidden_layers`` blocks; in a block, the
linear map from the MLP's intermediate width back to the hidden width) instead of matching model names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modeledit.errors import UnsupportedModelError


def linear_dims(m: nn.Module) -> tuple[int, int, bool] | None:
    """(in, out, transposed) of a linear map: nn.Linear, or GPT-2's Conv1D whose weight is (in, out)."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features, False
    w = getattr(m, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 2 and hasattr(m, "nf") and hasattr(m, "nx"):
        return int(m.nx), int(m.nf), True
    return None


def _config_int(config, *names: str) -> int | None:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int):
            return v
    return None


@dataclass(frozen=True)
class Layout:
    """Module names of the parts methods touch, one entry per layer."""

    layers: str  # the ModuleList of blocks
    embed: str  # the input embedding (its output is what causal tracing corrupts)
    blocks: tuple[str, ...]
    mlp: tuple[str, ...]  # the block's MLP (its output is the MLP's contribution)
    mlp_out: tuple[str, ...]  # the MLP's output projection: the matrix ROME edits
    attn: tuple[str, ...]
    mlp_out_transposed: bool  # weight stored (in, out) as GPT-2's Conv1D, not (out, in)
    hidden_size: int
    intermediate_size: int

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def weight_name(self, layer: int) -> str:
        return f"{self.mlp_out[layer]}.weight"


def find_layout(model: nn.Module) -> Layout:
    """Find blocks, MLP output projections and attention modules by walking the module tree."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = _config_int(text_config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _config_int(text_config, "hidden_size", "n_embd", "d_model")
    if n_layers is None or hidden is None:
        raise UnsupportedModelError(
            f"{type(model).__name__}: its config names no layer count or hidden size "
            "(num_hidden_layers / n_layer, hidden_size / n_embd); modeledit edits transformer language models"
        )
    lists = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n_layers and len({type(b) for b in m}) == 1
    ]
    if not lists:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no list of {n_layers} identical blocks found in the module tree"
        )
    layers_name, layers = max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
    inter = _config_int(text_config, "intermediate_size", "n_inner", "ffn_dim", "d_ff") or 4 * hidden

    block = layers[0]
    linears = {n: d for n, m in block.named_modules() if n and (d := linear_dims(m)) is not None}
    to_hidden = {n: d for n, d in linears.items() if d[1] == hidden}
    candidates = [n for n, d in to_hidden.items() if d[0] == inter]
    if len(candidates) != 1:
        raise UnsupportedModelError(
            f"{type(model).__name__}: cannot find the MLP output projection in '{layers_name}.0' "
            f"(looked for one linear map {inter} -> {hidden}; found {candidates or 'none'} among "
            f"{sorted(to_hidden)}). Mixture-of-experts and other MLP shapes are not supported yet"
        )
    out_rel = candidates[0]
    mlp_rel = out_rel.split(".")[0]
    children = {n: c for n, c in block.named_children()}
    others = [(n, c) for n, c in children.items() if n != mlp_rel and any(True for _ in c.parameters())]
    attn_rel = max(others, key=lambda nc: sum(p.numel() for p in nc[1].parameters()))[0] if others else mlp_rel

    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embed = next((n for n, m in model.named_modules() if m is embeddings), None)
    if embed is None:
        raise UnsupportedModelError(f"{type(model).__name__}: no input embedding module (get_input_embeddings)")

    names = [f"{layers_name}.{i}" for i in range(n_layers)]
    for i, b in enumerate(names):
        try:
            model.get_submodule(f"{b}.{out_rel}")
        except AttributeError as exc:
            raise UnsupportedModelError(f"layer {i} has no '{out_rel}': blocks differ in shape") from exc
    return Layout(
        layers=layers_name,
        embed=embed,
        blocks=tuple(names),
        mlp=tuple(f"{b}.{mlp_rel}" for b in names),
        mlp_out=tuple(f"{b}.{out_rel}" for b in names),
        attn=tuple(f"{b}.{attn_rel}" for b in names),
        mlp_out_transposed=linears[out_rel][2],
        hidden_size=hidden,
        intermediate_size=inter,
    )


def mlp_projections(model: nn.Module, layout: Layout, layer: int) -> dict[str, tuple[int, int, bool]]:
    """The linear maps inside block ``layer``'s MLP, by module name: (in, out, transposed) of each
    (GPT-2: c_fc, c_proj; Llama-style: gate, up, down), found by walking the MLP's module tree."""
    mlp = layout.mlp[layer]
    return {f"{mlp}.{n}": d for n, m in model.get_submodule(mlp).named_modules() if n and (d := linear_dims(m)) is not None}
