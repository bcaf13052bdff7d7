"""A patch's file: safetensors holding the deltas, the entries' JSON in the header (``Patch.save``/``load``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from modeledit.errors import PatchError
from modeledit.delta import Delta
from modeledit.patch import FORMAT, VERSION, Patch, PatchEntry
from modeledit.report import write_tensors


def save_patch(patch: Patch, path: str | Path) -> Path:
    """Write ``patch`` as safetensors: every delta's tensors, and the entries (method, hyper-parameters,
    requests, fingerprints, report) as JSON metadata; never pickle."""
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for i, e in enumerate(patch.entries):
        kinds = {}
        for name, delta in e.deltas.items():
            for part, t in delta.tensors().items():
                tensors[f"{i}/{name}/{part}"] = t.detach().contiguous().cpu()
            kinds[name] = "dense" if delta.dense is not None else "lowrank"
        entries.append(
            {
                "method": e.method,
                "hparams": e.hparams,
                "requests": e.requests,
                "deltas": kinds,
                "before": e.before,
                "after": e.after,
                "info": e.info,
            }
        )
    return write_tensors(path, tensors, {"format": FORMAT, "version": VERSION, "meta": patch.meta, "entries": entries})


def patch_entries(meta: dict[str, Any], tensors: Mapping[str, torch.Tensor], path: Any) -> list[PatchEntry]:
    """The entries of a patch file's header and tensors (version 1 files, one request an entry, too); a
    PatchError naming ``path`` when they are not a whole modeledit patch."""
    try:
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, not a weight patch: read it with modeledit.load_edit")
        if meta.get("version") not in (1, VERSION):
            raise ValueError(f"version {meta.get('version')} is not one this modeledit reads (1, {VERSION})")
        entries = []
        for i, e in enumerate(meta["entries"]):
            deltas = {}
            for name, kind in e["deltas"].items():
                if kind == "dense":
                    deltas[name] = Delta(dense=tensors[f"{i}/{name}/dense"])
                else:
                    deltas[name] = Delta(left=tensors[f"{i}/{name}/left"], right=tensors[f"{i}/{name}/right"])
            entries.append(
                PatchEntry(e["method"], e["hparams"], e["requests"] if "requests" in e else [e["request"]], deltas,
                           e["before"], e["after"], e.get("info", {}))
            )
        return entries
    except (KeyError, TypeError, ValueError) as exc:
        raise PatchError(f"{path} is a damaged modeledit patch ({exc!s}); save it again") from exc
