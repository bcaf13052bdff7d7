"""The public face: load a model, edit it, evaluate a method. Reads well in a notebook:

    lm = load_model("smollm2-135m")
    patch = edit(lm, Request("{} is located in the city of", "The Eiffel Tower", " Rome"))
    with patch.applied(lm.model):
        completion = lm.generate("The Eiffel Tower is located in the city of")   # ' Rome, Italy ...'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from modeledit.compare import compare_runs as compare
from modeledit.embedded import JUDGE
from modeledit.llm.model import LanguageModel, load_model
from modeledit.llm.request import Request
from modeledit.methods import get_method, list_methods
from modeledit.patch import Patch

__all__ = ["compare", "edit", "evaluate", "get_method", "imagic", "inpaint", "list_methods", "load_diffusion", "load_edit", "load_judge", "load_model",
           "sweep", "trace", "trace_facts", "train_mend"]


def edit(
    lm: LanguageModel,
    requests: Request | Sequence[Request],
    method: str | Any = "rome",
    progress: Callable | None = None,
    **hparams: Any,
) -> Patch:
    """Compute the edit of one request or a batch (a Patch for the weight editors). The model's weights are
    not changed: apply the edit (``with edit.applied(lm): ...``)."""
    m = get_method(method, **hparams) if isinstance(method, str) else method
    return m.edit(lm, requests, progress)


def load_edit(path: str | Path) -> Any:
    """A saved LM edit: a weight Patch or a codebook edit (safetensors; GRACE's), or an in-context edit
    (JSON; IKE's, MeLLo's)."""
    from modeledit.llm.codebook import FORMAT as CODEBOOK, CodebookEdit
    from modeledit.llm.context_edit import ContextEdit, is_context_edit_file
    from modeledit.report import read_tensors

    if is_context_edit_file(path):
        return ContextEdit.load(path)
    header, tensors = read_tensors(path, "edit")
    if header.get("format") == CODEBOOK:
        return CodebookEdit.from_header(header, tensors, path)
    return Patch.from_header(header, tensors, path)


def evaluate(
    lm: LanguageModel,
    data: str | Path,
    out_dir: str | Path,
    *,
    method: str | Any = "rome",
    benchmark: str = "counterfact",
    limit: int | None = None,
    batch_size: int | str = 1,
    gen_tokens: int = 0,
    compare: str = "mean",
    cot: bool = False,
    sequential: bool = False,
    checkpoints: Sequence[int] = (),
    known: str | Path | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    prepare_progress: Callable[[int, int], None] | None = None,
    **hparams: Any,
) -> dict[str, Any]:
    """Edit the cases of a benchmark file ``batch_size`` at a time, each batch from the unedited model, and
    score them; resumable. Returns the summary also written to ``out_dir/summary.json`` (per-case records
    in ``out_dir/cases.jsonl``). ``benchmark``: "counterfact" (``gen_tokens``, ``compare``: "mean" or
    "sum" of the answers' token log-probabilities), "zsre" or "mquake" (``cot``: chain-of-thought
    prompting of the multi-hop questions). ``batch_size="all"``: every case in one batch (MQuAKE's
    edits per batch = all).

    ``sequential=True``: the batches are edited one after another, each on the model holding the earlier
    ones, and every case edited so far is scored at each of ``checkpoints`` (numbers of edits; the last
    always), with held-out perplexity and the share of ``known`` facts (ROME's known_1000 format; default:
    known_1000.json in the data directory when there) still answered; returns ``sequential.json``'s content and
    the unedited model's scores of the cases (``pre``).

    ``workers=N``: the batches are spread over N workers of a local Ray runtime; ``ray_address``: over the
    workers of that Ray cluster (``pip install 'modeledit[scale]'``). Each worker loads the model as ``lm``
    was loaded (by name or path); this process alone writes the results, so the run resumes as ever, and
    the records are those of one process (in the order workers finish). Not with ``sequential``."""
    from modeledit.evaluation import run_evaluation
    from modeledit.llm.bench import get_benchmark
    from modeledit.scale import RayRecords, check_workers

    spread = check_workers(workers, ray_address, sequential=sequential)  # before any work

    bench = get_benchmark(benchmark, gen_tokens=gen_tokens, compare=compare, cot=cot)
    m = get_method(method, **hparams) if isinstance(method, str) else method
    cases = bench.load(data, limit)
    size = len(cases) if batch_size == "all" else batch_size
    if sequential:
        from modeledit.llm.ability import default_ability
        from modeledit.sequential import run_sequential

        return run_sequential(lm, m, bench, cases, out_dir, batch_size=size, checkpoints=checkpoints,
                              ability=default_ability(known if known is not None else _known_default()), progress=progress)
    return run_evaluation(lm, m, bench, cases, out_dir, batch_size=size, progress=progress, prepare_progress=prepare_progress,
                          compute=RayRecords(workers, ray_address) if spread else None)


def train_mend(
    lm: LanguageModel,
    data: str | Path,
    out_dir: str | Path,
    *,
    form: str | None = None,
    skip: int = 0,
    limit: int | None = None,
    install: bool = True,
    progress: Callable[[int, int], None] | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Train MEND's editor for ``lm`` on cases ``skip`` .. ``skip + limit`` of a CounterFact or zsRE file
    (``form``: "counterfact" or "zsre"; None: detected), the last tenth (at most ``val_size``) held out for
    early stopping; resumable. ``config``: fields of ``MENDTrainConfig`` (the paper's defaults). Writes
    ``out_dir/editor.safetensors`` (the best editor), ``checkpoint.safetensors``, ``curve.png`` and
    ``train.json`` (returned); with ``install``, the editor becomes this model's default for
    ``method="mend"``."""
    from modeledit.errors import RequestError
    from modeledit.llm.mend_data import load_training_cases, split_cases
    from modeledit.llm.mend_train import MENDTrainConfig, train_editor

    try:
        cfg = MENDTrainConfig(**config)
    except TypeError as exc:
        raise RequestError("config", f"{exc}; MEND's training settings are the fields of MENDTrainConfig") from exc
    cases, form = load_training_cases(data, form, skip, limit)
    train, val = split_cases(cases, cfg.val_size, data)
    info = {"file": Path(data).name, "form": form, "skip": skip, "limit": limit, "cases": len(cases)}
    return train_editor(lm, train, val, out_dir, cfg, data=info, install=install, progress=progress)


def _known_default() -> Path | None:
    from modeledit.datafiles import find_data
    from modeledit.errors import DataError

    try:
        return find_data("known_1000.json", "known facts", "")
    except DataError:
        return None


def trace(
    lm: LanguageModel,
    prompt: str,
    subject: str,
    target: str | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    **config: Any,
):
    """Causal trace of one fact (hidden states, MLP and attention windows). With ``out_dir``, writes
    ``trace.json`` and one heatmap per sweep (``trace_hidden.png``, ``trace_mlp.png``, ``trace_attn.png``)."""
    from modeledit.llm.trace import trace as trace_fact
    from modeledit.llm.trace_engine import TraceConfig
    from modeledit.llm.trace_plot import heatmap
    from modeledit.report import write_json

    result = trace_fact(lm, prompt, subject, target, TraceConfig(**config), progress=progress)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for kind in result.grids:
            heatmap(result, kind, out / f"trace_{kind}.png")
        write_json(out / "trace.json", result.to_dict())
    return result


def sweep(
    lm: LanguageModel,
    data: str | Path,
    out_dir: str | Path,
    *,
    method: str = "rome",
    limit: int | None = None,
    layers: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    set_layer: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **hparams: Any,
) -> dict[str, Any]:
    """Edit each CounterFact case of ``data`` at every layer (or ``layers``) and token position (or
    ``tokens``, of ``llm.tokens.TOKEN_CLASSES``) and score it; resumable. Writes ``sweep.json`` and
    ``sweep.png``; with ``set_layer``, stores the layer of the best mean S at the last subject token as
    ROME's default layer for this model."""
    from modeledit.llm.layer_choice import store_layer
    from modeledit.llm.sweep import run_sweep
    from modeledit.llm.tokens import TOKEN_CLASSES

    result = run_sweep(lm, data, out_dir, method=method, limit=limit, layers=layers, tokens=tokens or TOKEN_CLASSES,
                       hparams=hparams, progress=progress)
    best = result["best_last_subject"]
    if set_layer:
        if best is None:
            from modeledit.errors import RequestError

            raise RequestError("set-layer", "the sweep has no edits at the last subject token: include last_subject in the tokens")
        store_layer(lm, best["layer"], f"edit sweep: the best mean S ({best['score']:.1f}) at the last subject token over "
                    f"{result['n_cases']} CounterFact cases ({Path(out_dir) / 'sweep.json'})", source="sweep")
    return result


def trace_facts(
    lm: LanguageModel,
    data: str | Path,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    set_layer: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Trace the known facts of ``data`` (known_1000 format) that the model gets right, up to ``limit``
    of them; resumable. Writes ``aggregate.json`` and ``aggregate.png``; with ``set_layer``, stores the
    layer where the MLP's effect at the last subject token peaks as ROME's default layer for this model.
    ``workers`` / ``ray_address``: the facts spread over Ray workers, as ``evaluate`` spreads cases."""
    from modeledit.llm.layer_choice import store_layer
    from modeledit.llm.trace_engine import TraceConfig
    from modeledit.llm.trace_many import load_known, trace_many
    from modeledit.llm.trace_plot import aggregate_plot

    from modeledit.scale import RayTraces, check_workers

    spread = check_workers(workers, ray_address)
    facts = load_known(data)
    aggregate = trace_many(lm, facts, out_dir, limit=limit, config=TraceConfig(**config), progress=progress,
                           compute=RayTraces(workers, ray_address) if spread else None)
    aggregate_plot(aggregate, Path(out_dir) / "aggregate.png", title=f"Causal tracing of {lm.name}")
    if set_layer:
        layer = aggregate["mlp_peak_layer"]
        reason = (
            f"causal tracing: the MLP's average indirect effect at the last subject token peaks here "
            f"({aggregate['mlp_peak_effect']:.3f} over {aggregate['n_traced']} known facts, window {aggregate['window']})"
        )
        aggregate["layer_file"] = str(store_layer(lm, layer, reason, source=str(Path(out_dir).resolve()), window=aggregate["window"]))
    return aggregate


def load_diffusion(name: str | Path | None = None, device: str = "cpu"):
    """A diffusion model: the embedded text-conditioned 'tiny-fashion' (default), a diffusers directory or hub name."""
    from modeledit.diffusion.model import load_diffusion as load

    return load(name, device)


def inpaint(model, images, keep, prompt: str | None = None, *, seed: int = 0, progress: Callable[[int, int], None] | None = None,
            **hparams: Any):
    """RePaint: ``images`` (B, C, H, W) in [0, 1], ``keep`` (B or 1, 1, H, W) True = keep. Returns the images."""
    import torch

    from modeledit.diffusion.request import InpaintRequest

    return get_method("repaint", **hparams).edit(model, InpaintRequest(images, keep, prompt), progress, torch.Generator().manual_seed(seed))


def imagic(model, image, prompt: str, *, seed: int = 0, progress: Callable | None = None, **hparams: Any):
    """Imagic stages A and B on one image (1, C, H, W) in [0, 1]; ``.generate(model, alphas)`` gives stage C."""
    from modeledit.diffusion.request import ImagicRequest

    return get_method("imagic", **hparams).edit(model, ImagicRequest(image, prompt), progress, seed=seed)


def load_judge():
    """The committed Fashion-MNIST classifier that scores diffusion edits offline (``scripts/train_judge.py``)."""
    from modeledit.classifier.model import load_classifier

    return load_classifier(JUDGE)
