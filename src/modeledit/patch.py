"""Patch: an edit kept apart from the model, as weight deltas that apply and revert exactly.

A patch is an ordered list of entries, one per edit. Each entry holds the deltas of the parameters it
touches (low-rank factors ``left @ right.T`` or a dense tensor), the request, the method and its
hyper-parameters, and for every touched parameter a fingerprint of its bytes before and after the edit.

- ``apply`` refuses a model whose touched parameters differ from the fingerprints the patch was made on;
- ``revert`` writes back the original tensors it kept, so the weights are restored bit for bit;
- ``save``/``load`` use safetensors (tensors + JSON metadata, never pickle);
- ``compose`` chains patches in order, checking that each one was made on the result of the one before.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from modeledit.delta import Delta, add_delta
from modeledit.errors import PatchError
from modeledit.fingerprint import fingerprint, remember
from modeledit.report import read_tensors

log = logging.getLogger(__name__)

FORMAT = "modeledit.patch"
VERSION = 2  # 2: an entry holds a list of requests (a joint edit of many); version 1 files (one request) load too


@dataclass
class PatchEntry:
    """One edit: its deltas and where they came from (one request, or many edited jointly)."""

    method: str
    hparams: dict[str, Any]
    requests: list[dict[str, Any]]
    deltas: dict[str, Delta]
    before: dict[str, str]
    after: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def request(self) -> dict[str, Any]:
        """The request of a one-request entry."""
        if len(self.requests) != 1:
            raise PatchError(f"this edit holds {len(self.requests)} requests jointly: read .requests")
        return self.requests[0]


class Edit:
    """What every kind of edit shares — a weight Patch, a codebook (``llm/codebook.py``), a context
    (``llm/context_edit.py``): ordered entries, each holding the requests it edited."""

    entries: list

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request the edit holds, in the order they were edited."""
        return [r for e in self.entries for r in e.requests]

    def __len__(self) -> int:
        return len(self.entries)


class Patch(Edit):
    """An ordered list of edits that can be applied to, and reverted from, a model."""

    def __init__(self, entries: Iterable[PatchEntry], meta: Mapping[str, Any] | None = None):
        self.entries = list(entries)
        self.meta = dict(meta or {})
        if not self.entries:
            raise PatchError("a patch needs at least one edit")

    @classmethod
    def from_deltas(
        cls,
        model: torch.nn.Module,
        deltas: Mapping[str, Delta],
        *,
        method: str,
        hparams: Mapping[str, Any],
        request: Mapping[str, Any] | None = None,
        requests: Iterable[Mapping[str, Any]] | None = None,
        info: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> "Patch":
        """A one-edit patch (of one ``request`` or of many ``requests`` edited jointly) whose fingerprints
        are taken from ``model`` as it is now (unedited)."""
        model = _module(model)
        reqs = [dict(r) for r in requests] if requests is not None else [dict(request or {})]
        def both(name: str) -> tuple[str, str]:
            p = _parameter(model, name)
            return fingerprint(p), fingerprint(add_delta(p, deltas[name]))

        workers = min(len(deltas), torch.get_num_threads())
        if workers > 1:  # hashing releases the GIL: the parameters' fingerprints side by side
            with ThreadPoolExecutor(workers) as pool:
                pairs = dict(zip(deltas, pool.map(both, deltas)))
        else:
            pairs = {name: both(name) for name in deltas}
        before = {name: fp for name, (fp, _) in pairs.items()}
        after = {name: fp for name, (_, fp) in pairs.items()}
        entry = PatchEntry(method, dict(hparams), reqs, dict(deltas), before, after, dict(info or {}))
        return cls([entry], meta)

    # -- applying --------------------------------------------------------------------------------
    @property
    def parameters(self) -> list[str]:
        """Every parameter the patch touches, in first-touched order."""
        seen: dict[str, None] = {}
        for e in self.entries:
            seen.update(dict.fromkeys(e.deltas))
        return list(seen)

    def check(self, model: torch.nn.Module) -> None:
        """Raise PatchError unless every touched parameter of ``model`` is what the patch was made on."""
        model = _module(model)
        first = {}
        for e in self.entries:
            for name, fp in e.before.items():
                first.setdefault(name, fp)
        for name, fp in first.items():
            have = fingerprint(_parameter(model, name))
            if have != fp:
                raise PatchError(
                    f"this patch was made for a different base model: parameter '{name}' has fingerprint "
                    f"{have}, the patch expects {fp}. Load the model it was made on "
                    f"({self.meta.get('model', 'see `modeledit patch show`')}), unedited, and apply it there"
                )

    def apply(self, model: torch.nn.Module) -> "AppliedPatch":
        """Write the deltas into ``model`` (a module, or a LanguageModel) in place; returns a handle whose
        ``revert`` undoes it exactly."""
        model = _module(model)
        self.check(model)
        originals = {name: _parameter(model, name).detach().clone() for name in self.parameters}
        try:
            with torch.no_grad():
                for e in self.entries:
                    for name, delta in e.deltas.items():
                        p = _parameter(model, name)
                        p.copy_(add_delta(p, delta))
        except BaseException:
            _restore(model, originals)
            raise
        return AppliedPatch(self, model, originals)

    def applied(self, model: torch.nn.Module) -> "AppliedPatch":
        """Same as ``apply``; reads well as ``with patch.applied(model): ...`` (reverted on exit)."""
        return self.apply(model)

    def revert(self, model: torch.nn.Module, originals: Mapping[str, torch.Tensor] | None = None) -> None:
        """Undo this patch on a model that has it applied.

        With ``originals`` (the tensors from before the patch, e.g. saved by ``modeledit patch apply``)
        the bytes are restored exactly and checked against the patch's fingerprints. Without them the
        deltas are subtracted, which restores the weights only up to float rounding (a warning says so).
        """
        model = _module(model)
        last_after: dict[str, str] = {}
        for e in self.entries:
            last_after.update(e.after)
        for name, fp in last_after.items():
            if fingerprint(_parameter(model, name)) != fp:
                raise PatchError(
                    f"the model does not hold this patch: parameter '{name}' is not what applying it gives; "
                    "revert only a model that this patch was applied to"
                )
        if originals is not None:
            missing = [n for n in self.parameters if n not in originals]
            if missing:
                raise PatchError(f"the saved originals lack parameters {missing}; they belong to another patch")
            for name in self.parameters:
                expected = next(e.before[name] for e in self.entries if name in e.before)
                if fingerprint(originals[name]) != expected:
                    raise PatchError(f"the saved original of '{name}' is not the tensor this patch was made on")
            _restore(model, {n: originals[n] for n in self.parameters})
            return
        log.warning("reverting by subtracting the deltas: exact only up to float rounding (no originals given)")
        with torch.no_grad():
            for e in reversed(self.entries):
                for name, delta in e.deltas.items():
                    p = _parameter(model, name)
                    p.copy_((p.to(torch.float32) - delta.materialize(p)).to(p.dtype))

    # -- composing -------------------------------------------------------------------------------
    def then(self, other: "Patch") -> "Patch":
        """This patch followed by ``other``; ``other`` must have been made on the result of this one."""
        last_after: dict[str, str] = {}
        for e in self.entries:
            last_after.update(e.after)
        for e in other.entries:
            for name, fp in e.before.items():
                if name in last_after and last_after[name] != fp:
                    raise PatchError(
                        f"cannot compose: the second patch was not made on the result of the first "
                        f"(parameter '{name}'); make it with the first patch applied"
                    )
                last_after[name] = e.after[name]
        return Patch(self.entries + other.entries, {**other.meta, **self.meta})

    @staticmethod
    def compose(*patches: "Patch") -> "Patch":
        if not patches:
            raise PatchError("compose needs at least one patch")
        out = patches[0]
        for p in patches[1:]:
            out = out.then(p)
        return out

    # -- saving (patch_file.py) -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from modeledit.patch_file import save_patch

        return save_patch(self, path)

    @classmethod
    def load(cls, path: str | Path) -> "Patch":
        meta, tensors = read_tensors(path, "patch")
        return cls.from_header(meta, tensors, path)

    @classmethod
    def from_header(cls, meta: dict[str, Any], tensors: Mapping[str, torch.Tensor], path: Any) -> "Patch":
        from modeledit.patch_file import patch_entries

        return cls(patch_entries(meta, tensors, path), meta.get("meta", {}))

    # -- showing ---------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "edits": [
                {
                    "method": e.method,
                    "requests": e.requests,
                    "hparams": e.hparams,
                    "parameters": {
                        n: {"kind": "dense" if d.dense is not None else f"rank {d.rank}", "before": e.before[n]}
                        for n, d in e.deltas.items()
                    },
                    "info": e.info,
                }
                for e in self.entries
            ],
        }

    def __repr__(self) -> str:
        methods = ", ".join(e.method for e in self.entries)
        return f"Patch({len(self.entries)} edit(s): {methods}; parameters: {', '.join(self.parameters)})"


class AppliedPatch:
    """A patch written into a model; ``revert`` (or leaving the ``with`` block) restores the exact bytes."""

    def __init__(self, patch: Patch, model: torch.nn.Module, originals: dict[str, torch.Tensor]):
        self.patch, self.model, self.originals = patch, model, originals
        self.active = True

    def revert(self) -> None:
        if self.active:
            _restore(self.model, self.originals)
            for name in self.originals:  # the bytes apply checked against the patch's fingerprint, copied back
                remember(_parameter(self.model, name), next(e.before[name] for e in self.patch.entries if name in e.before))
            self.active = False

    def __enter__(self) -> "AppliedPatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.revert()


def _module(model: Any) -> torch.nn.Module:
    """The module of a wrapper that holds one (a LanguageModel's ``.model``), or the module itself."""
    inner = getattr(model, "model", None)
    return inner if not isinstance(model, torch.nn.Module) and isinstance(inner, torch.nn.Module) else model


def _parameter(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    try:
        p = model.get_parameter(name)
    except AttributeError as exc:
        raise PatchError(f"the model has no parameter '{name}': this patch was made for another architecture") from exc
    if p.device.type == "meta":
        raise PatchError(f"parameter '{name}' is offloaded by the model's device map (not held on a device): a patch changes "
                         "weights in place, so load the model with that layer on a device (a GPU or 'cpu')")
    return p


def _restore(model: torch.nn.Module, originals: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, t in originals.items():
            _parameter(model, name).copy_(t)
