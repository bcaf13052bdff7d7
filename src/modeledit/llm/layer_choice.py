"""The edit layer chosen for a model's weights (by causal tracing, ``trace-many --set-layer``), stored
beside the caches and keyed by the weights' identity, so that every later edit of those weights uses it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from modeledit.llm.cache import cache_dir, made_dir
from modeledit.llm.model import LanguageModel

log = logging.getLogger(__name__)


def _layer_file(lm: LanguageModel) -> Path:
    return cache_dir() / "layers" / f"{lm.identity}.json"


def chosen_layer(lm: LanguageModel) -> dict | None:
    """The stored layer choice of this model's weights ({"layer", "reason", ...}), if any."""
    path = _layer_file(lm)
    if not path.exists():
        return None
    choice = json.loads(path.read_text())
    if not isinstance(choice.get("layer"), int) or not 0 <= choice["layer"] < lm.layout.n_layers:
        log.warning("ignoring %s: its layer is not one of this model's", path)
        return None
    return choice


def store_layer(lm: LanguageModel, layer: int, reason: str, **details) -> Path:
    """Make ``layer`` the default edit layer of this model's weights (until cleared or replaced)."""
    if not 0 <= layer < lm.layout.n_layers:
        raise ValueError(f"layer {layer} is outside 0..{lm.layout.n_layers - 1}")
    path = made_dir(_layer_file(lm).parent) / f"{lm.identity}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"layer": layer, "reason": reason, "model": lm.name, **details}, indent=1))
    tmp.replace(path)
    return path


def clear_layer(lm: LanguageModel) -> bool:
    path = _layer_file(lm)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed
