"""MEMIT's targets kept on disk, one file a request, as MEMIT's reference code keeps each case's z.

The targets (one value optimisation a request) are most of a joint edit's time — 500 zsRE requests take
about an hour on one core — while the spread over the layers that follows takes minutes. A rerun of the
same requests on the same weights (another λ, layers below the last, more passes, an interrupted
evaluation's batch run again) reads them instead of optimising again. The key holds everything a target
depends on: the weights as they are now (``LanguageModel.digest``, and the codebook edits applied, so a
model holding earlier edits never reads the targets of another state), the layer and edit site, the
request, the context templates, the KL prompts, the value settings and the precision they ran in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable, Sequence

from modeledit.errors import PatchError
from modeledit.llm.cache import cache_dir
from modeledit.llm.memory_hparams import VALUE_CHUNK, ValueHyperParams
from modeledit.llm.model import LanguageModel
from modeledit.llm.precision import resolve_precision
from modeledit.llm.request import Request
from modeledit.llm.value import ValueResult, by_tail, compute_values
from modeledit.report import read_tensors, write_tensors

TENSORS = ("k_star", "k_prompt", "v0", "delta")


def cached_values(
    lm: LanguageModel,
    layer: int,
    requests: Sequence[Request],
    templates: Sequence[str],
    kl_prompts: Sequence[str],
    hp: ValueHyperParams,
    *,
    at: str,
    chunk: int = VALUE_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[ValueResult], int]:
    """``compute_values`` of the requests whose targets are not on disk yet (each written as soon as its
    batch is done); (every request's values, how many were read from disk)."""
    root = cache_dir() / "targets" / lm.identity
    common = {"weights": lm.digest(), "codebooks": [repr(t) for t in lm.state()[1]], "layer": layer, "at": at,
              "templates": list(templates), "kl_prompts": list(kl_prompts),
              # the precision the loop ran in, resolved: "auto" and the precision it means here share their targets
              "value": {**asdict(hp), "precision": "auto"}, "precision": resolve_precision(hp.precision, lm.device),
              "device": lm.device.type}
    files = [root / f"{_key({**common, 'request': r.to_dict()})}.safetensors" for r in requests]
    out = [_read(f) for f in files]
    missing = [i for i, v in enumerate(out) if v is None]
    missing = [missing[j] for j in by_tail(lm, [requests[i] for i in missing])]  # batches of one length, as compute_values cuts them
    for b in range(0, len(missing), chunk):  # written batch by batch: an interrupted run keeps what it did
        idx = missing[b : b + chunk]
        for i, v in zip(idx, compute_values(lm, layer, [requests[i] for i in idx], templates, kl_prompts, hp, at=at, chunk=chunk)):
            _write(files[i], v)
            out[i] = v
        if progress:
            progress(b + len(idx), len(missing))
    return out, len(requests) - len(missing)  # type: ignore[return-value]


def _key(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _write(path: Path, v: ValueResult) -> None:
    tensors = {name: getattr(v, name) for name in TENSORS if getattr(v, name) is not None}
    header = {f.name: getattr(v, f.name) for f in fields(v) if f.name not in TENSORS}
    write_tensors(path, tensors, header)


def _read(path: Path) -> ValueResult | None:
    if not path.is_file():
        return None
    try:
        header, tensors = read_tensors(path, "cached MEMIT target")
    except PatchError:  # unreadable (a disk full at the time?): computed again
        return None
    header["target_prob"] = tuple(header["target_prob"])
    return ValueResult(**{name: tensors.get(name) for name in TENSORS}, **header)
