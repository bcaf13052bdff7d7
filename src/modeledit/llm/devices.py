"""Where a model's parts live when ``accelerate`` spreads it over devices (``load_model(device_map=...)``).

A model loaded with a device map computes each block on that block's *execution device* (accelerate's
hooks move the activations between them); a block offloaded to the CPU or to disk keeps its weights there
(its parameters read as the ``meta`` device) and brings them in for each forward pass. Methods therefore
ask for the device of the module they touch (``module_device``), never assume one device for the model,
and read an offloaded weight's values through ``stored``. Editing writes weights, so the layers an edit
changes must be held on a device (``offloaded`` says which are not).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import torch
from torch import nn

from modeledit.errors import RequestError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``float32`` (default), ``bfloat16`` or ``float16``, as a name or a torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise RequestError("dtype", f"{dtype} is not supported: choose {', '.join(DTYPES)}")
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name not in DTYPES:
        raise RequestError("dtype", f"{dtype!r} is not a dtype modeledit loads models in: choose {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def parse_device_map(device_map: str | dict | None) -> str | dict | None:
    """``auto``, ``balanced`` (and accelerate's ``balanced_low_0``, ``sequential``), a dict of module name →
    device, or that dict as JSON text (``'{"model.layers.0": 0, "model.layers.1": "cpu", ...}'``)."""
    if device_map is None or isinstance(device_map, dict):
        return device_map
    text = str(device_map).strip()
    if text in DEVICE_MAPS:
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or not parsed:
        raise RequestError("device-map", f"{device_map!r}: give auto, balanced, or a JSON object of module name → device, "
                                         'e.g. \'{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "lm_head": 0}\'')
    return parsed


def _hooks(module: nn.Module) -> Iterator[Any]:
    hook = getattr(module, "_hf_hook", None)
    if hook is not None:
        yield from getattr(hook, "hooks", None) or (hook,)


def _as_device(d: Any) -> torch.device:
    return torch.device(d)  # an index means the machine's accelerator (torch.device(0) is cuda:0 on a CUDA machine)


def execution_device(module: nn.Module) -> torch.device | None:
    """Where ``module`` computes: its accelerate hook's execution device, else its first parameter that is
    held somewhere (not ``meta``); None when it has neither."""
    for h in _hooks(module):
        d = getattr(h, "execution_device", None)
        if d is not None:
            return _as_device(d)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return None


def module_device(model: nn.Module, name: str) -> torch.device:
    """The device on which the named module computes (a device-mapped model's layers differ); its
    ancestors' device when it holds no parameter; the input device at worst."""
    parts = name.split(".") if name else []
    for i in range(len(parts), -1, -1):
        d = execution_device(model.get_submodule(".".join(parts[:i])))
        if d is not None:
            return d
    return input_device(model)


def input_device(model: nn.Module) -> torch.device:
    """The device token ids go to: the input embedding's execution device."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    d = execution_device(embed) if embed is not None else None
    if d is None:
        d = execution_device(model)
    return d if d is not None else torch.device("cpu")


def stored(model: nn.Module, name: str) -> torch.Tensor:
    """A parameter's values wherever they are kept: the parameter itself, or, for a weight that accelerate
    offloaded (to the CPU or disk: the parameter is on ``meta``), the copy in its hook's weights map."""
    p = model.get_parameter(name)
    if p.device.type != "meta":
        return p
    owner, _, attr = name.rpartition(".")
    for h in _hooks(model.get_submodule(owner)):
        weights = getattr(h, "weights_map", None)
        if weights is not None:
            return weights[attr]
    raise RuntimeError(f"parameter {name} is on the meta device and no offloaded copy of it was found")


def offloaded(model: nn.Module, names: list[str]) -> list[str]:
    """Those of the named parameters that are offloaded (not held on a device, so not editable in place)."""
    return [n for n in names if model.get_parameter(n).device.type == "meta"]
