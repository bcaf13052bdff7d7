"""The one registry of editing methods: name -> class. Static (no registration at import time)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Protocol

from modeledit.classifier.enn import ENN
from modeledit.diffusion.imagic import Imagic
from modeledit.diffusion.repaint import RePaint
from modeledit.errors import RequestError
from modeledit.llm.rome import ROME


class Method(Protocol):
    """A method has typed hyper-parameters, may prepare per-model caches, and turns a request into a Patch
    (ROME, ENN), an edit holding one (Imagic: UNet deltas and embeddings), or, changing no weight, the
    edited output itself (RePaint: images)."""

    name: str
    hparams: Any

    def prepare(self, model: Any, progress: Any = None) -> None: ...

    def edit(self, model: Any, request: Any, progress: Any = None) -> Any: ...


METHODS = MappingProxyType({"rome": ROME, "enn": ENN, "repaint": RePaint, "imagic": Imagic})


def get_method(name: str, **hparams: Any) -> Method:
    """A method by name, with hyper-parameters overriding the paper's defaults."""
    try:
        cls = METHODS[name.lower()]
    except KeyError:
        raise RequestError("method", f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None
    try:
        return cls(**hparams)
    except TypeError as exc:
        raise RequestError("hparams", f"{exc}; the hyper-parameters of {name} are the fields of {cls.HyperParams.__name__}") from exc


def list_methods() -> list[str]:
    return list(METHODS)
