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
from modeledit.patch import Patch
from modeledit.llm.request import Request
from modeledit.llm.model import LanguageModel, load_model
from modeledit.api import (compare, edit, evaluate, get_method, imagic, inpaint, list_methods, load_diffusion, load_edit, load_judge, sweep,
                           trace, trace_facts, train_mend)

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
