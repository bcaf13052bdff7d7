"""modeledit: edit trained models cheaply, reversibly, and measure what the edit did.

    >>> import modeledit as me
    >>> lm = me.load_model("smollm2-135m")
    >>> req = me.Request(prompt="{} is located in the city of", subject="The Eiffel Tower", target=" Rome")
    >>> patch = me.edit(lm, req)               # weights untouched; the change lives in the patch
    >>> with patch.applied(lm.model):
    ...     print(lm.generate("The Eiffel Tower is located in the city of"))
"""

from modeledit.errors import (
    DataError,
    EditFailedError,
    ModelEditError,
    ModelNotFoundError,
    PatchError,
    RequestError,
    ScaleError,
    UnsupportedModelError,
)
from typing import TYPE_CHECKING, Any

# Everything but the errors is imported on first use (PEP 562): `modeledit --help` and the browser UI's page
# come up without waiting for torch and transformers (~1.5 s), which the first edit then imports.
_LAZY = {
    "Patch": "modeledit.patch",
    "Request": "modeledit.llm.request",
    "LanguageModel": "modeledit.llm.model",
    "load_model": "modeledit.llm.model",
    **{name: "modeledit.api" for name in ("compare", "edit", "evaluate", "get_method", "imagic", "inpaint", "list_methods",
                                          "load_diffusion", "load_edit", "load_judge", "sweep", "trace", "trace_facts", "train_mend")},
}

if TYPE_CHECKING:  # pragma: no cover
    from modeledit.api import (compare, edit, evaluate, get_method, imagic, inpaint, list_methods, load_diffusion, load_edit, load_judge,
                               sweep, trace, trace_facts, train_mend)
    from modeledit.llm.model import LanguageModel, load_model
    from modeledit.llm.request import Request
    from modeledit.patch import Patch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modeledit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DataError",
    "EditFailedError",
    "LanguageModel",
    "ModelEditError",
    "ModelNotFoundError",
    "Patch",
    "PatchError",
    "Request",
    "RequestError",
    "ScaleError",
    "UnsupportedModelError",
    "compare",
    "edit",
    "evaluate",
    "get_method",
    "imagic",
    "inpaint",
    "list_methods",
    "load_diffusion",
    "load_edit",
    "load_judge",
    "load_model",
    "sweep",
    "trace",
    "trace_facts",
    "train_mend",
]
