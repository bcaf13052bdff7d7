"""The one registry of editing methods: name -> class. Static (no registration at import time)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Protocol, Sequence

from modeledit.errors import RequestError


class Method(Protocol):
    """A method has typed hyper-parameters (``HyperParams``, a dataclass with the paper's defaults), a
    ``family`` ("llm", "classifier", "diffusion"), may prepare per-model caches, and turns requests into
    an edit: a Patch (ROME, MEMIT, FT, LoRA, MEND, ENN), an edit holding one (Imagic: UNet deltas and
    embeddings), a codebook beside a layer that answers near its keys (GRACE), or, changing no weight, a context read before every prompt (IKE), a memory that answers
    questions by decomposition (MeLLo), or the edited output itself (RePaint: images). LM methods take one
    request or a sequence and say whether they edit a batch jointly (``joint``) or one request at a time."""

    name: str
    family: str
    hparams: Any

    def prepare(self, model: Any, progress: Any = None) -> None: ...

    def edit(self, model: Any, request: Any, progress: Any = None) -> Any: ...


# name → (module, class, family). A class is imported on first use: listing the methods (the command line's
# help, the browser page) imports no torch. tests/test_methods.py checks each entry against its class.
METHODS = MappingProxyType(
    {
        "rome": ("modeledit.llm.rome", "ROME", "llm"),
        "memit": ("modeledit.llm.memit", "MEMIT", "llm"),
        "alphaedit": ("modeledit.llm.alphaedit", "AlphaEdit", "llm"),
        "grace": ("modeledit.llm.grace", "GRACE", "llm"),
        "ft-l": ("modeledit.llm.ft", "FT", "llm"),
        "ft-m": ("modeledit.llm.ft", "FTM", "llm"),
        "lora": ("modeledit.llm.lora", "LoRA", "llm"),
        "ike": ("modeledit.llm.ike", "IKE", "llm"),
        "mello": ("modeledit.llm.mello", "MeLLo", "llm"),
        "mend": ("modeledit.llm.mend", "MEND", "llm"),
        "enn": ("modeledit.classifier.enn", "ENN", "classifier"),
        "repaint": ("modeledit.diffusion.repaint", "RePaint", "diffusion"),
        "imagic": ("modeledit.diffusion.imagic", "Imagic", "diffusion"),
    }
)


def get_method(name: str, **hparams: Any) -> Method:
    """A method by name, with hyper-parameters overriding the paper's defaults."""
    cls = method_class(name)
    try:
        return cls(**hparams)
    except TypeError as exc:
        raise RequestError("hparams", f"{exc}; the hyper-parameters of {name} are the fields of {cls.HyperParams.__name__}") from exc


def configured_method(name: str, layer: int | None = None, stats_tokens: int | None = None,
                      corpus: Sequence[str] | None = None, settings: Sequence[str] = ()) -> Method:
    """A method from the command line's options (and the UI's): ``--layer`` (``layer`` or a one-layer
    ``layers``), ``--stats-tokens``, ``--corpus``, and ``--set name=value`` checked against its dataclass."""
    from dataclasses import fields

    from modeledit.llm.method import parse_settings

    cls = method_class(name)
    names = {f.name for f in fields(cls.HyperParams)}
    out: dict[str, Any] = {}
    if layer is not None:
        if "layer" in names:
            out["layer"] = layer
        elif "layers" in names:
            out["layers"] = (layer,)
        else:
            raise RequestError("layer", f"{name} takes no layer")
    if stats_tokens is not None:
        out["stats_tokens"] = stats_tokens
    if corpus:
        out["corpus"] = corpus[0] if len(corpus) == 1 else tuple(corpus)
    unknown = [k for k in out if k not in names]
    if unknown:
        raise RequestError(unknown[0], f"{name} has no such hyper-parameter (its fields: {', '.join(sorted(names))})")
    out.update(parse_settings(cls.HyperParams, list(settings or [])))
    return get_method(name, **out)


def method_class(name: str) -> type:
    import importlib

    try:
        module, cls, _ = METHODS[name.lower()]
    except (KeyError, AttributeError):
        raise RequestError("method", f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None
    return getattr(importlib.import_module(module), cls)


def list_methods(family: str | None = None) -> list[str]:
    """The registered methods' names, of one family ("llm", "classifier", "diffusion") or all."""
    return [n for n, (_, _, fam) in METHODS.items() if family is None or fam == family]
