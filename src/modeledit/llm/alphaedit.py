"""AlphaEdit (Fang et al., ICLR 2025): MEMIT's update projected onto the null space of the preserved keys.

MEMIT trades the new facts against the corpus's keys with λ·C in its solve; AlphaEdit instead removes
from the update every direction the corpus's keys use, so that, to first order, no preserved key's value
moves at all. At each layer of the range (MEMIT's targets, residuals and spreading, ``memit.py``):

    P  = U₀U₀ᵀ, U₀ the eigenvectors of C = E[k kᵀ] whose eigenvalues are below ``nullspace_threshold``
         (or, ``nullspace_energy``, the smallest ones holding at most that share of C's trace)
    ΔW = R Kᵀ P (P (K Kᵀ + K_p K_pᵀ) + λ I)⁻ᵀ        (solved in float64; λ = ``l2``)

with K_p the keys of the edits made before (sequential editing: each batch is computed on the model holding
the earlier ones, and must not undo them). The keys of each batch are read after its update, on the
edited model, and remembered with the weights they produced: an edit computed on a model whose edited
weights are exactly those that an AlphaEdit edit produced continues from its keys; on any other model
(the unedited one, after a revert) it starts from none — so batches evaluated independently do not leak
into each other. Each batch's keys are saved in the cache directory (``alphaedit/<model>/<weights>``, with
a link to the state before), so a sequential run resumed in a new process continues from them.

Paper defaults (Llama3-8B): the null-space threshold 2e-2 on C's eigenvalues, λ = 10, and MEMIT's targets
(clamp 0.75, KL 0.0625, weight decay 0.5). Layers as MEMIT's defaults here.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modeledit.errors import EditFailedError, RequestError
from modeledit.llm.memit import MEMIT, MEMITHyperParams
from modeledit.llm.cache import cache_dir
from modeledit.llm.model import LanguageModel
from modeledit.fingerprint import fingerprint

MEMORY = 2  # key states kept in memory per model (each: one d×d float64 matrix per layer); all are on disk


@dataclass(frozen=True)
class AlphaEditHyperParams(MEMITHyperParams):
    nullspace_threshold: float = 2e-2  # eigenvalues of C below this span the null space (the paper's value)
    l2: float = 10.0  # λ: the solve's ridge term (the paper's L2)
    # instead of the threshold (None: the paper's): the null space is spanned by C's smallest eigenvectors that
    # together hold at most this share of its trace — scale-free, for models whose key spectrum is flat
    nullspace_energy: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retarget:
            raise RequestError("retarget", "new targets on the edited model are MEMIT's option: AlphaEdit's remembered keys "
                                           "belong to the weights of one spread; leave retarget at 0")
        if self.nullspace_energy is not None and not (isinstance(self.nullspace_energy, (int, float)) and 0 < self.nullspace_energy < 1):
            raise RequestError("nullspace_energy", f"must be a share of the trace between 0 and 1, got {self.nullspace_energy!r}")
        for name in ("nullspace_threshold", "l2"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise RequestError(name, f"must be a positive finite number, got {v!r}")


def null_space_projector(C: torch.Tensor, threshold: float, energy: float | None = None) -> tuple[torch.Tensor, int]:
    """(P, rank): the projector onto the span of C's eigenvectors with eigenvalues below ``threshold`` —
    or, with ``energy``, of its smallest eigenvectors whose eigenvalues sum to at most that share of the trace."""
    vals, vecs = torch.linalg.eigh(C.to(torch.float64))  # ascending
    keep = vals < threshold if energy is None else vals.cumsum(0) <= energy * vals.sum()
    small = vecs[:, keep]
    return small @ small.T, small.shape[1]


def alphaedit_update(resid: torch.Tensor, keys: torch.Tensor, P: torch.Tensor, preserved: torch.Tensor | None,
                     l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, A) with ΔW = R Aᵀ of shape (out, in): A = (P(KKᵀ + K_pK_pᵀ) + λI)⁻¹ P K, R = residᵀ; float64.
    ``preserved``: K_pK_pᵀ of the earlier edits (None: none)."""
    K = keys.to(torch.float64).T  # (in, n)
    KK = K @ K.T if preserved is None else K @ K.T + preserved.to(torch.float64)
    M = P @ KK + l2 * torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
    A = torch.linalg.solve(M, P @ K)
    R = resid.to(torch.float64).T
    if not (torch.isfinite(A).all() and torch.isfinite(R).all()):
        raise EditFailedError("the AlphaEdit solve is not finite; collect the statistics over more tokens")
    return R, A


class AlphaEdit(MEMIT):
    name = "alphaedit"
    HyperParams = AlphaEditHyperParams

    def edit_batch(self, lm: LanguageModel, requests, progress=None):
        layers = self.layers(lm)
        self._parent = _weights_key(lm, layers)
        self._earlier = remembered(lm, self._parent)  # the keys of the AlphaEdit edits these weights hold
        patch = super().edit_batch(lm, requests, progress)
        info = patch.entries[0].info
        info["null_space_rank"] = {layer: self._ranks[layer] for layer in layers}
        info["earlier_edits_remembered"] = bool(self._earlier)
        return patch

    def layer_update(self, lm: LanguageModel, layer: int, resid: torch.Tensor, keys: torch.Tensor, C: torch.Tensor,
                     held: torch.Tensor | None = None):
        P, rank = self.projector(lm, layer, C)
        self._ranks = {**getattr(self, "_ranks", {}), layer: rank}
        earlier = self._earlier.get(layer)
        if held is not None:  # the batch's own other tokens join the earlier edits' keys
            earlier = held if earlier is None else earlier + held.to(earlier)
        return alphaedit_update(resid, keys, P, earlier, self.hparams.l2)

    def projector(self, lm: LanguageModel, layer: int, C: torch.Tensor) -> tuple[torch.Tensor, int]:
        memo = lm.memo.setdefault("alphaedit_projectors", {})
        hp = self.hparams
        key = (layer, hp.nullspace_threshold, hp.nullspace_energy, hp.stats, lm.identity)
        if key not in memo:
            P, rank = null_space_projector(C, hp.nullspace_threshold, hp.nullspace_energy)
            if rank == 0 and hp.nullspace_energy is not None:
                raise RequestError("nullspace_energy", f"C's smallest eigenvalue at layer {layer} holds more than "
                                   f"{hp.nullspace_energy} of its trace: raise it (the null space is empty)")
            if rank == 0:
                raise RequestError("nullspace_threshold", f"no eigenvalue of layer {layer}'s key statistics is below "
                                   f"{self.hparams.nullspace_threshold} (smallest {float(torch.linalg.eigvalsh(C.double())[0]):.3g}): "
                                   "raise it (the null space is empty)")
            memo[key] = (P, rank)
        return memo[key]

    def after_update(self, lm: LanguageModel, reader, layers: Sequence[int]) -> None:
        """Remember the batch's keys (read on the edited model) under the weights this edit produces, on
        disk beside the statistics, with a link to the state it started from (so a resumed run finds it)."""
        keys = {layer: self.fitted(reader, layer)[0].T.contiguous() for layer in layers}  # (in, n) float64: the keys written
        key = _weights_key(lm, layers)
        f = _store(lm) / f"{key}.safetensors"
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f.name + ".tmp")
        save_file({str(layer): k.cpu() for layer, k in keys.items()}, str(tmp), metadata={"parent": self._parent})
        tmp.replace(f)
        state = {layer: (K @ K.T if self._earlier.get(layer) is None else self._earlier[layer] + K @ K.T) for layer, K in keys.items()}
        _remember(lm, key, state)


def _store(lm: LanguageModel) -> Path:
    return cache_dir() / "alphaedit" / lm.identity


def _remember(lm: LanguageModel, key: str, state: dict[int, torch.Tensor]) -> None:
    memo = lm.memo.setdefault("alphaedit_keys", OrderedDict())
    memo[key] = state
    while len(memo) > MEMORY:
        memo.popitem(last=False)


def remembered(lm: LanguageModel, key: str) -> dict[int, torch.Tensor]:
    """K_pK_pᵀ per layer of the AlphaEdit edits that produced the weights ``key`` names ({} if none did)."""
    memo = lm.memo.setdefault("alphaedit_keys", OrderedDict())
    if key in memo:
        return memo[key]
    f = _store(lm) / f"{key}.safetensors"
    if not key or not f.exists():
        return {}
    with safe_open(str(f), framework="pt") as g:
        parent = (g.metadata() or {}).get("parent", "")
        keys = {int(name): g.get_tensor(name).to(lm.device) for name in g.keys()}
    before = remembered(lm, parent)
    state = {layer: (K @ K.T if before.get(layer) is None else before[layer] + K @ K.T) for layer, K in keys.items()}
    _remember(lm, key, state)
    return state


def _weights_key(lm: LanguageModel, layers: Sequence[int]) -> str:
    h = hashlib.sha256()
    for layer in layers:
        h.update(fingerprint(lm.model.get_parameter(lm.layout.weight_name(layer))).encode())
    return h.hexdigest()[:32]
