"""An edit kept in a codebook beside a layer (GRACE's adaptor): keys, values and deferral radii.

While applied, the output of one module (a block's MLP output projection) is replaced at every token
whose input to that module lies within the radius of its nearest key: the output there becomes that key's
value. Every other token passes unchanged, and no weight of the model is touched. Applying registers a
forward hook; reverting removes it, so the model computes exactly what it computed before.

Entries compose in order (``then``): applied together, a later entry's hook runs after an earlier one's and
wins where both match (GRACE's radii keep keys of different answers apart, ``grace.py``). Saved as
safetensors (keys, values, radii per entry + JSON header, format ``modeledit.codebook``), written
atomically; ``modeledit.load_edit`` tells it from a weight patch.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from modeledit.errors import PatchError
from modeledit.llm.devices import module_device
from modeledit.patch import Edit
from modeledit.report import read_tensors, write_tensors

FORMAT = "modeledit.codebook"
VERSION = 1


@dataclass
class CodebookEntry:
    """The keys one edit added at one module: key i answers for request ``owner[i]``."""

    method: str
    hparams: dict[str, Any]
    requests: list[dict[str, Any]]
    module: str  # the module whose output is replaced (by name in the model's tree)
    keys: torch.Tensor  # (K, d_in) float32: the module's input at the edited tokens
    values: torch.Tensor  # (K, d_out) float32: its output there, trained for the new target
    radii: torch.Tensor  # (K,) deferral radii (Euclidean)
    owner: torch.Tensor  # (K,) long: index into ``requests``
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = self.keys.shape[0]
        if not (self.values.shape[0] == self.radii.shape[0] == self.owner.shape[0] == k) or k == 0:
            raise PatchError("a codebook entry needs as many values, radii and owners as keys (at least one)")


def lookup(x: torch.Tensor, keys: torch.Tensor, radii: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``x`` (n, d): its nearest key and whether it lies within that key's radius."""
    dist = torch.cdist(x.float(), keys)
    nearest_dist, nearest = dist.min(1)
    return nearest, nearest_dist <= radii[nearest]


def _replace(entry: CodebookEntry, device: torch.device):
    keys, values, radii = (t.to(device) for t in (entry.keys, entry.values, entry.radii))

    def hook(_module, args, out):
        x = args[0]
        flat = x.reshape(-1, x.shape[-1])
        nearest, hit = lookup(flat, keys, radii)
        if not bool(hit.any()):
            return None
        new = out.reshape(-1, out.shape[-1]).clone()
        new[hit] = values[nearest[hit]].to(new.dtype)
        return new.view_as(out)

    return hook


class CodebookEdit(Edit):
    """Codebook entries that replace a module's output near their keys while applied; no weight changes."""

    kind = "codebook"

    def __init__(self, entries: Sequence[CodebookEntry], meta: dict[str, Any] | None = None):
        self.entries = list(entries)
        self.meta = dict(meta or {})
        if not self.entries:
            raise PatchError("a codebook edit needs at least one entry")
        self.token = uuid.uuid4().hex  # names this edit in the model's state while applied (caches key on it)

    @property
    def parameters(self) -> list[str]:
        return []  # no weight is touched

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(e.module for e in self.entries))

    @contextmanager
    def applied(self, lm: Any) -> Iterator["CodebookEdit"]:
        """Inside the block the codebook answers for its keys; on exit the hooks are removed."""
        if not hasattr(lm, "codebooks"):
            raise PatchError("a codebook edit applies to a modeledit LanguageModel (load_model(...)), not a bare module")
        handles = []
        try:
            for e in self.entries:
                try:
                    module = lm.model.get_submodule(e.module)
                except AttributeError:
                    raise PatchError(f"the model has no module '{e.module}': this edit was made for another architecture") from None
                if getattr(module, "in_features", e.keys.shape[1]) != e.keys.shape[1]:
                    raise PatchError(f"'{e.module}' takes inputs of size {module.in_features}, the edit's keys are "
                                     f"{e.keys.shape[1]}: it was made for another model")
                handles.append(module.register_forward_hook(_replace(e, module_device(lm.model, e.module))))
            lm.codebooks.append(self)
            yield self
        finally:
            for h in handles:
                h.remove()
            if any(c is self for c in lm.codebooks):
                lm.codebooks.remove(self)

    def then(self, other: "CodebookEdit") -> "CodebookEdit":
        return CodebookEdit(self.entries + other.entries, {**other.meta, **self.meta})

    # -- saving ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        tensors, entries = {}, []
        for i, e in enumerate(self.entries):
            for part in ("keys", "values", "radii", "owner"):
                tensors[f"{i}/{part}"] = getattr(e, part)
            entries.append({"method": e.method, "hparams": e.hparams, "requests": e.requests, "module": e.module, "info": e.info})
        return write_tensors(path, tensors, {"format": FORMAT, "version": VERSION, "kind": self.kind, "meta": self.meta,
                                             "entries": entries})

    @classmethod
    def load(cls, path: str | Path) -> "CodebookEdit":
        header, tensors = read_tensors(path, "codebook edit")
        return cls.from_header(header, tensors, path)

    @classmethod
    def from_header(cls, header: dict[str, Any], tensors: dict[str, torch.Tensor], where: Any) -> "CodebookEdit":
        try:
            if header.get("format") != FORMAT or header.get("version") != VERSION:
                raise ValueError(f"format {header.get('format')!r} version {header.get('version')!r}")
            entries = [CodebookEntry(e["method"], e["hparams"], e["requests"], e["module"], tensors[f"{i}/keys"],
                                     tensors[f"{i}/values"], tensors[f"{i}/radii"], tensors[f"{i}/owner"], e.get("info", {}))
                       for i, e in enumerate(header["entries"])]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise PatchError(f"{where} is not a modeledit codebook edit ({exc}); save it again") from exc
        return cls(entries, header.get("meta", {}))

    def describe(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "edits": [
                {"method": e.method, "requests": e.requests, "hparams": e.hparams, "parameters": {},
                 "codebook": {"module": e.module, "keys": int(e.keys.shape[0]),
                              "radius_min": float(e.radii.min()), "radius_max": float(e.radii.max())},
                 "info": e.info}
                for e in self.entries
            ],
        }

    def __repr__(self) -> str:
        keys = sum(int(e.keys.shape[0]) for e in self.entries)
        return f"CodebookEdit({len(self.requests)} request(s), {keys} key(s) at {', '.join(self.modules)}; no weight changed)"
