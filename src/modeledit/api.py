"""The public face: load a model, edit it, evaluate a method. Reads well in a notebook:

    lm = load_model("smollm2-135m")
    patch = edit(lm, Request("{} is located in the city of", "The Eiffel Tower", " Rome"))
    with patch.applied(lm.model):
        completion = lm.generate("The Eiffel Tower is located in the city of")   # ' Rome, Italy ...'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from modeledit.llm.model import LanguageModel, load_model
from modeledit.llm.request import Request
from modeledit.methods import get_method, list_methods
from modeledit.patch import Patch

__all__ = ["edit", "evaluate", "get_method", "list_methods", "load_model"]


def edit(lm: LanguageModel, request: Request, method: str | Any = "rome", progress: Callable | None = None, **hparams: Any) -> Patch:
    """Compute the edit of ``request`` as a Patch. The model's weights are not changed: apply the patch."""
    m = get_method(method, **hparams) if isinstance(method, str) else method
    return m.edit(lm, request, progress)


def evaluate(
    lm: LanguageModel,
    data: str | Path,
    out_dir: str | Path,
    *,
    method: str | Any = "rome",
    benchmark: str = "counterfact",
    limit: int | None = None,
    gen_tokens: int = 40,
    progress: Callable[[int, int], None] | None = None,
    prepare_progress: Callable[[int, int], None] | None = None,
    **hparams: Any,
) -> dict[str, Any]:
    """Edit each case of a benchmark file from the unedited model and score it; resumable. Returns the
    summary also written to ``out_dir/summary.json`` (per-case records in ``out_dir/cases.jsonl``)."""
    from modeledit.evaluation import run_evaluation
    from modeledit.llm.bench.counterfact import CounterFact, load_counterfact

    if benchmark != "counterfact":
        from modeledit.errors import RequestError

        raise RequestError("benchmark", f"unknown benchmark {benchmark!r}: 'counterfact' is available")
    m = get_method(method, **hparams) if isinstance(method, str) else method
    cases = load_counterfact(data, limit)
    return run_evaluation(lm, m, CounterFact(gen_tokens=gen_tokens), cases, out_dir, progress=progress, prepare_progress=prepare_progress)
