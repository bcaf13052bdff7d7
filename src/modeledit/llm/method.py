"""What every LM editing method shares: typed hyper-parameters with the paper's defaults, the check of a
batch of requests, and the two ways of editing a batch.

A method either edits a batch **jointly** (MEMIT, the fine-tuning baselines: one computation over all the
requests, one patch entry holding them all) or **one request at a time** (ROME: each edit is computed on
the model holding the edits before it, and the edits are composed into one patch). Either way ``edit``
takes one request or a sequence and returns one Patch; the model's weights are left as they were.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Callable, Sequence

from modeledit.errors import RequestError
from modeledit.llm.devices import offloaded
from modeledit.llm.model import LanguageModel
from modeledit.llm.outcome import record_outcomes
from modeledit.llm.request import Request
from modeledit.patch import Patch

Progress = Callable[[int, int], None]


def check_layers(lm: LanguageModel, layers, field: str = "layers") -> None:
    """A RequestError unless ``layers`` is a non-empty set of the model's layers."""
    bad = [l for l in layers if not isinstance(l, int) or not 0 <= l < lm.layout.n_layers]
    if bad or not layers:
        raise RequestError(field, f"{list(layers)} is not a non-empty set of this model's layers 0..{lm.layout.n_layers - 1}")
    away = offloaded(lm.model, [lm.layout.weight_name(l) for l in layers])
    if away:
        raise RequestError(field, f"{', '.join(away)} is offloaded by the device map (kept off the devices, read in for each pass): "
                                  "an edit changes weights in place, so keep the layers it edits on a device (a GPU or 'cpu') in --device-map")


def as_requests(requests: Request | Sequence[Request]) -> list[Request]:
    """A non-empty list of requests in which no subject and relation get two different targets."""
    reqs = [requests] if isinstance(requests, Request) else list(requests)
    if not reqs:
        raise RequestError("requests", "the batch is empty: give at least one request")
    for r in reqs:
        if not isinstance(r, Request):
            raise RequestError("requests", f"expected modeledit.Request objects, got {type(r).__name__}")
    seen: dict[tuple[str, str], Request] = {}
    for r in reqs:
        key = (r.prompt, r.subject)
        other = seen.setdefault(key, r)
        if other.target != r.target:
            raise RequestError(
                "requests",
                f"two requests give {r.subject!r} in {r.prompt!r} different targets ({other.target!r} and "
                f"{r.target!r}): one batch cannot hold both; keep one, or edit them in separate batches",
            )
    return reqs


class LLMMethod:
    """Base of the LM editors. Subclasses set ``name``, ``HyperParams``, ``joint`` and implement
    ``edit_batch(lm, requests, progress)`` (for ``joint = False`` it is called with one request at a time)."""

    family = "llm"
    joint = False
    name: str
    HyperParams: type

    def __init__(self, hparams: Any = None, **overrides: Any):
        base = hparams or self.HyperParams()
        self.hparams = self.HyperParams(**{**asdict(base), **overrides}) if overrides else base

    def default_layers(self, lm: LanguageModel) -> tuple[list[int], str]:
        """The layers this method edits on ``lm`` when none are given, and why."""
        return [], "this method edits no layer"

    def layers(self, lm: LanguageModel) -> list[int]:
        """The layers edited: the ``layers`` hyper-parameter, else the method's default; checked."""
        chosen = getattr(self.hparams, "layers", None)
        layers = list(chosen) if chosen is not None else self.default_layers(lm)[0]
        if layers:
            check_layers(lm, layers, "layers")
        return layers

    def layers_reason(self, lm: LanguageModel) -> str:
        return "chosen by the user" if getattr(self.hparams, "layers", None) is not None else self.default_layers(lm)[1]

    def prepare(self, lm: LanguageModel, progress: Progress | None = None) -> None:
        """Compute (or load) what every edit of this model reuses; the default needs nothing."""

    def edit(self, lm: LanguageModel, requests: Request | Sequence[Request], progress: Progress | None = None) -> Patch:
        """The edit of one request or a batch, as one Patch; the model's weights are left exactly as they
        were. Whether each request's edit took is checked and kept in the patch (``outcome.py``)."""
        reqs = as_requests(requests)
        return record_outcomes(lm, self._edit(lm, reqs, progress), reqs)

    def _edit(self, lm: LanguageModel, reqs: list[Request], progress: Progress | None) -> Patch:
        if self.joint:
            return self.edit_batch(lm, reqs, progress)
        patches: list[Patch] = []
        with ExitStack() as applied:  # each edit is made on the model holding the ones before; all reverted
            for r in reqs:
                patch = self.edit_batch(lm, [r], None)
                patches.append(patch)
                if len(patches) < len(reqs):
                    applied.enter_context(patch.applied(lm))
                if progress:
                    progress(len(patches), len(reqs))
        return Patch.compose(*patches)

    def edit_batch(self, lm: LanguageModel, requests: list[Request], progress: Progress | None = None) -> Patch:
        raise NotImplementedError

    def patch(self, lm: LanguageModel, deltas, requests: list[Request], hparams: dict, info: dict) -> Patch:
        """The Patch of ``deltas`` made on ``lm`` as it is now."""
        return Patch.from_deltas(
            lm.model,
            deltas,
            method=self.name,
            hparams=hparams,
            requests=[r.to_dict() for r in requests],
            info=info,
            meta={"model": lm.name, "model_identity": lm.identity},
        )


def parse_settings(hparams_type: type, settings: Sequence[str]) -> dict[str, Any]:
    """``["name=value", ...]`` checked against the fields of a hyper-parameter dataclass and converted to
    their types; an unknown field or a value of the wrong type is one RequestError naming it."""
    import typing

    if not is_dataclass(hparams_type):
        raise RequestError("set", f"{hparams_type.__name__} has no settable hyper-parameters")
    hints = typing.get_type_hints(hparams_type)
    names = [f.name for f in fields(hparams_type)]
    out: dict[str, Any] = {}
    for item in settings:
        name, eq, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq:
            raise RequestError("set", f"{item!r} is not name=value, e.g. --set lr=0.1")
        if name not in names:
            raise RequestError("set", f"{hparams_type.__name__} has no field {name!r}; its fields are {', '.join(names)}")
        try:
            out[name] = _convert(text.strip(), hints[name])
        except (ValueError, TypeError) as exc:
            raise RequestError("set", f"{name}={text!r}: expected {_type_name(hints[name])} ({exc})") from None
    return out


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _convert(text: str, t: Any) -> Any:
    import json
    import types
    import typing

    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(text, a)
            except (ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if t is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{text!r} is not true or false")
    if t is int:
        return int(text)
    if t is float:
        return float(text)
    if t is str:
        return text
    if origin is tuple:
        items = json.loads(text) if text.startswith("[") else [x for x in text.split(",") if x.strip()]
        if not isinstance(items, list):
            raise ValueError(f"{text!r} is not a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(json.dumps(x) if not isinstance(x, str) else x.strip(), args[0]) for x in items)
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} items")
        return tuple(_convert(json.dumps(x) if not isinstance(x, str) else x.strip(), a) for x, a in zip(items, args))
    raise TypeError(f"cannot set a field of type {_type_name(t)} from the command line")
