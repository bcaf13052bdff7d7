"""MEND's editor network (Mitchell et al. 2022, "Fast Model Editing at Scale", §3).

The gradient of a loss with respect to a linear map's weight, on a sequence, is a sum of rank-one terms
∇W = Σ_t δ_t u_tᵀ: u_t the map's input at token t, δ_t the gradient of the loss with respect to its
output there. MEND learns a map (u_t, δ_t) → (ũ_t, δ̃_t) and edits with ΔW = −α Σ_t δ̃_t ũ_tᵀ.

As in the paper and its reference code (EasyEdit's hparams/MEND: ``combine``, ``shared``, ``norm``,
``init: id``, ``n_hidden: 1``, ``rank: 1920``):
- one network per weight *shape*, shared by every edited weight of that shape; each weight is a "mode"
  of it with its own scale and shift of the pre-activations;
- its input is [u; δ] concatenated, normalised by running statistics (mean and standard deviation per
  unit, updated while training, frozen when editing), and its output is split back into (ũ, δ̃);
- each of its ``n_hidden + 1`` layers is z + relu(s_m ⊙ (U V z + b) + o_m) with U V of rank ≤ ``rank``;
  U starts at zero, so the untrained network is the identity;
- each edited weight has its own learnt step size α (initially ``edit_lr``).

Before any statistics are gathered (an untrained editor) the normalisation is the identity too, so the
untrained editor's edit is the plain gradient step −α ∇W (tested). The editor is saved as safetensors
with the fingerprint of the model it was trained on (``lm.identity``) and refuses any other model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modeledit.errors import PatchError, RequestError
from modeledit.llm.cache import cache_dir
from modeledit.llm.model import LanguageModel
from modeledit.report import read_tensors, write_tensors

FORMAT = "modeledit.mend-editor"
VERSION = 1
FILE = "editor.safetensors"
EPS = 1e-7  # added to the standard deviation, as the reference code does


@dataclass(frozen=True)
class EditedWeight:
    """A linear map MEND edits: its module name, input and output widths, and whether its weight is
    stored (in, out) like GPT-2's Conv1D rather than (out, in)."""

    module: str
    d_in: int
    d_out: int
    transposed: bool

    @property
    def weight(self) -> str:
        return f"{self.module}.weight"

    @property
    def shape_key(self) -> str:
        return f"{self.d_in}x{self.d_out}"


class RunningNorm(nn.Module):
    """Per-unit running mean and variance (Welford / Chan), updated only by ``observe``."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def observe(self, z: torch.Tensor) -> None:
        z = z.detach().to(torch.float64)
        n = z.shape[0]
        if n == 0:
            return
        mean_b = z.mean(0)
        m2_b = ((z - mean_b) ** 2).sum(0)
        total = self.count + n
        d = mean_b - self.mean
        self.mean += d * (n / total)
        self.m2 += m2_b + d**2 * (self.count * n / total)
        self.count.fill_(float(total))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.count < 2:  # nothing seen yet: the identity
            return z
        std = (self.m2 / (self.count - 1)).sqrt()
        return (z - self.mean.to(z.dtype)) / (std.to(z.dtype) + EPS)


class LowRankResidual(nn.Module):
    """z + relu(s_m ⊙ (U V z + b) + o_m); U = 0 at first (the identity). A clamp, not relu: its gradient at
    0 is 1, so that U, starting at 0, learns (as the reference code notes)."""

    def __init__(self, dim: int, rank: int, n_modes: int, generator: torch.Generator):
        super().__init__()
        r = min(rank, dim)
        self.U = nn.Parameter(torch.zeros(dim, r))
        self.V = nn.Parameter(torch.randn(r, dim, generator=generator))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(n_modes, dim))
        self.shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, z: torch.Tensor, mode: torch.Tensor) -> torch.Tensor:
        """``mode``: the mode of each row of ``z``."""
        pre = (z @ self.V.T) @ self.U.T + self.bias
        return z + (pre * self.scale[mode] + self.shift[mode]).clamp(min=0)


class EditorNet(nn.Module):
    """The network shared by the edited weights of one shape (d_in → d_out): [u; δ] → (ũ, δ̃)."""

    def __init__(self, d_in: int, d_out: int, n_modes: int, n_hidden: int, rank: int, generator: torch.Generator):
        super().__init__()
        self.d_in = d_in
        self.norm = RunningNorm(d_in + d_out)
        self.layers = nn.ModuleList(LowRankResidual(d_in + d_out, rank, n_modes, generator) for _ in range(n_hidden + 1))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, mode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.norm(torch.cat([u, delta], -1))
        for layer in self.layers:
            z = layer(z, mode)
        return z[:, : self.d_in], z[:, self.d_in :]


class MENDEditor(nn.Module):
    """The editor networks of one model, one per weight shape, and the step size of each edited weight."""

    def __init__(self, weights: list[EditedWeight], n_hidden: int = 1, rank: int = 1920, edit_lr: float = 1e-4,
                 seed: int = 0, meta: dict[str, Any] | None = None):
        super().__init__()
        self.weights = list(weights)
        self.arch = {"n_hidden": n_hidden, "rank": rank}
        self.meta = dict(meta or {})
        shapes: dict[str, list[EditedWeight]] = {}
        for w in self.weights:
            shapes.setdefault(w.shape_key, []).append(w)
        gen = torch.Generator().manual_seed(seed)
        self.nets = nn.ModuleDict({k: EditorNet(ws[0].d_in, ws[0].d_out, len(ws), n_hidden, rank, gen) for k, ws in shapes.items()})
        self.mode = {w.module: ws.index(w) for ws in shapes.values() for w in ws}
        self.index = {w.module: i for i, w in enumerate(self.weights)}
        self.edit_lrs = nn.Parameter(torch.full((len(self.weights),), float(edit_lr)))

    def _groups(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for m in factors:
            groups.setdefault(self.weights[self.index[m]].shape_key, []).append(m)
        return groups

    def observe(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add the tokens' (u, δ) of each weight (module -> (u, δ)) to its network's running statistics
        (training only)."""
        for key, mods in self._groups(factors).items():
            self.nets[key].norm.observe(torch.cat([torch.cat([factors[m][0], factors[m][1]], -1) for m in mods]))

    def transform(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(ũ, −α δ̃) of each weight (module -> (u, δ) of its tokens): ΔW = Σ_t (−α δ̃_t) ũ_tᵀ. Each network
        runs once over the tokens of all its weights (each token in its weight's mode): its matrices are
        read once, not once per weight."""
        out = {}
        for key, mods in self._groups(factors).items():
            sizes = [factors[m][0].shape[0] for m in mods]
            dev = factors[mods[0]][0].device
            mode = torch.cat([torch.full((n,), self.mode[m], dtype=torch.long, device=dev) for m, n in zip(mods, sizes)])
            u = torch.cat([factors[m][0] for m in mods]).float()
            d = torch.cat([factors[m][1] for m in mods]).float()
            u_t, d_t = self.nets[key](u, d, mode)
            for m, ut, dt in zip(mods, u_t.split(sizes), d_t.split(sizes)):
                out[m] = (ut, -self.edit_lrs[self.index[m]] * dt)
        return out

    # -- the model it belongs to -----------------------------------------------------------------------
    def check_model(self, lm: LanguageModel) -> None:
        """A RequestError unless ``lm`` is the model (the same weights) this editor was trained for."""
        trained_for = self.meta.get("model_identity")
        if trained_for != lm.identity:
            raise RequestError(
                "editor",
                f"this MEND editor was trained for another model ({self.meta.get('model', '?')}, fingerprint {trained_for}); "
                f"{lm.name} has fingerprint {lm.identity}. Train one for it: {train_command(lm)}",
            )

    # -- saving ---------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        header = {"format": FORMAT, "version": VERSION, "meta": self.meta, "arch": self.arch,
                  "weights": [[w.module, w.d_in, w.d_out, w.transposed] for w in self.weights], **(extra or {})}
        return write_tensors(path, {k: v.detach().cpu() for k, v in self.state_dict().items()}, header)

    @classmethod
    def load(cls, path: str | Path) -> "MENDEditor":
        header, tensors = read_tensors(path, "MEND editor")
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise PatchError(f"{path} is not a MEND editor of this modeledit (format {header.get('format')!r}); "
                             "train one with `modeledit mend train`")
        try:
            weights = [EditedWeight(m, int(a), int(b), bool(t)) for m, a, b, t in header["weights"]]
            editor = cls(weights, meta=header.get("meta", {}), **header["arch"])
            editor.load_state_dict(tensors, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise PatchError(f"{path} is a damaged MEND editor ({exc}); train it again") from exc
        editor.header = header
        return editor.eval()


def default_editor_path(lm: LanguageModel) -> Path:
    """Where the editor trained for this model's weights is kept (``modeledit mend train`` puts it there)."""
    return cache_dir() / "mend" / lm.identity / FILE


def train_command(lm: LanguageModel) -> str:
    return f"`modeledit mend train --model {lm.name} --data ../shared/data/counterfact-train.json --out DIR`"


def editor_file(lm: LanguageModel, given: str | Path | None) -> Path:
    """The editor file: ``given`` (a directory written by ``modeledit mend train``, or its editor file),
    else the one trained for this model in the cache; a RequestError saying how to get one otherwise."""
    if given is None:
        path = default_editor_path(lm)
        if not path.is_file():
            raise RequestError("editor", f"no MEND editor has been trained for {lm.name} (looked in {path.parent}): "
                                         f"train one with {train_command(lm)}, or pass editor=DIR")
        return path
    path = Path(given).expanduser()
    path = path / FILE if path.is_dir() else path
    if not path.is_file():
        raise RequestError("editor", f"no MEND editor at {path}: pass the --out directory of `modeledit mend train` "
                                     f"(it holds {FILE}), or train one with {train_command(lm)}")
    return path


def load_editor(lm: LanguageModel, given: str | Path | None = None) -> MENDEditor:
    """The editor for ``lm`` (``editor_file``), checked against its weights, on its device; loaded once per
    file version and kept in the model's memo."""
    path = editor_file(lm, given)
    st = path.stat()
    key = f"mend-editor:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    editor = lm.memo.get(key)
    if editor is None:
        editor = MENDEditor.load(path)
        editor.check_model(lm)
        editor.to(lm.device)
        lm.memo[key] = editor
    editor.check_model(lm)
    return editor
