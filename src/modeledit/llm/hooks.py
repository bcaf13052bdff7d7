"""The one small tracer every method uses: read and change activations of named modules.

``Hooks`` is a context manager over a model. Inside it you can record a module's input or output,
change its output, replace its input, stop the forward pass after a module (so upper layers are never
computed), or skip modules whose results are already known. Everything is undone on exit, also on error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a ``stop_after`` hook to end a forward pass early; ``Hooks`` swallows it."""


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _with_first(x: Any, t: torch.Tensor) -> Any:
    return (t, *x[1:]) if isinstance(x, tuple) else t


@dataclass
class Recording:
    """What a recorded module saw in the last forward pass (first tensor of input and of output)."""

    input: torch.Tensor | None = None
    output: torch.Tensor | None = None
    raw_output: Any = field(default=None, repr=False)


class Hooks:
    def __init__(self, model: nn.Module):
        self.model = model
        self._handles: list[Any] = []
        self._forwards: list[tuple[nn.Module, Any]] = []

    def __enter__(self) -> "Hooks":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for h in self._handles:
            h.remove()
        for module, forward in reversed(self._forwards):
            if forward is None:
                del module.forward
            else:
                module.forward = forward
        self._handles.clear()
        self._forwards.clear()
        return exc_type is StopForward  # a stopped forward pass is not an error

    def _module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def record(self, name: str, *, inputs: bool = False, outputs: bool = True, keep_raw: bool = False) -> Recording:
        rec = Recording()
        module = self._module(name)
        if inputs:

            def pre(_m, args, kwargs):
                rec.input = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))

            self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        if outputs:

            def post(_m, _args, out):
                rec.output = _first(out)
                if keep_raw:
                    rec.raw_output = out

            self._handles.append(module.register_forward_hook(post))
        return rec

    def edit_output(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the module's output (its first tensor) by ``fn(output)``."""

        def post(_m, _args, out):
            return _with_first(out, fn(_first(out)))

        self._handles.append(self._module(name).register_forward_hook(post))

    def add_to_output(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Add ``fn(input)`` — computed from the module's first input — to its output (its first tensor):
        a change beside a linear map, e.g. a low-rank weight delta applied without writing the weight."""

        def post(_m, args, kwargs, out):
            x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input", next(iter(kwargs.values()), None)))
            return _with_first(out, _first(out) + fn(x))

        self._handles.append(self._module(name).register_forward_hook(post, with_kwargs=True))

    def replace_input(self, name: str, hidden: torch.Tensor | Callable[[], torch.Tensor]) -> None:
        """Feed ``hidden`` (a tensor, or a function giving one at each pass) to the module in place of its first input."""

        def pre(_m, args, kwargs):
            h = hidden() if callable(hidden) else hidden
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}

        self._handles.append(self._module(name).register_forward_pre_hook(pre, with_kwargs=True))

    def stop_after(self, name: str) -> None:
        def post(_m, _args, _out):
            raise StopForward

        self._handles.append(self._module(name).register_forward_hook(post))

    def skip(self, name: str, like: Any = None) -> None:
        """Make the module return its first input unchanged (shaped like ``like``, a recorded output).

        Used to avoid recomputing layers whose result is fed in by ``replace_input`` further up.
        """
        module = self._module(name)
        previous = module.__dict__.get("forward")

        def passthrough(*args, **kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            return _with_first(like, h) if isinstance(like, tuple) else h

        module.forward = passthrough
        self._forwards.append((module, previous))
