"""Language-model commands: demo, edit, eval, compare, layer, stats, models."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from modeledit.cli.common import _bar, _errors, _load, app, console, err
from modeledit.cli.options import (CORPUS, DEVICE_MAP, DTYPE, LAYER, METHOD, MODEL, RAY_ADDRESS, SETTINGS, STATS_BAR, STATS_TOKENS,
                                    WORKERS)


def _method(name: str, layer: Optional[int] = None, stats_tokens: Optional[int] = None, corpus: Optional[list[str]] = None,
            settings: Optional[list[str]] = None):
    """The method, with the one-flag conveniences and ``--set name=value`` checked against its dataclass."""
    from modeledit.methods import configured_method

    return configured_method(name, layer, stats_tokens, corpus, settings or ())


def _show_edit(lm, requests, patch, prompts: list[str], tokens: int, shown: int = 10) -> None:
    """Completions before and after, and the answers' probabilities, for the first ``shown`` requests."""
    from modeledit.evaluation import request_info
    from modeledit.llm.score import score_continuations

    before = lm.generate(prompts, tokens)
    pairs = [(r.text, a) for r in requests for a in ([r.target] + ([r.target_true] if r.target_true else []))]
    p_before = iter(score_continuations(lm, pairs))
    with patch.applied(lm):
        after = lm.generate(prompts, tokens)
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
    if info.get("guarded"):
        held = ", ".join(f"{s} ({r:.2f})" for s, r in list(info["guarded"].items())[:4])
        console.print(f"guarded: {len(info['guarded'])} subjects the update reaches most were held (reach): {held}, ...")
    beats = 0
    for i, r in enumerate(requests):
        # after the edit: the probabilities the edit's outcome check took with the patch applied (outcome.py)
        own = request_info(patch, i)
        nb, na = next(p_before).mean_prob, own["target_prob_after"]
        tb, ta = (next(p_before).mean_prob, own["true_prob_after"]) if r.target_true else (None, None)
        if ta is not None and na > ta:
            beats += 1
        if i < shown:
            line = f"P(new {r.target!r} | {r.text!r}): {nb:.4f} → {na:.4f}"
            if tb is not None:
                line += f"; P(true {r.target_true!r}): {tb:.4f} → {ta:.4f}"
            console.print(line)
    if len(requests) > shown:
        console.print(f"... and {len(requests) - shown} more requests")
    with_true = sum(1 for r in requests if r.target_true)
    if with_true:
        console.print(f"efficacy: the new answer beats the old one after the edit for {beats} of {with_true} request(s)")
    from modeledit.llm.outcome import not_taken

    if not not_taken(patch):
        console.print("[green]the edit took[/]: the new target is now the model's greedy continuation"
                      + (" and beats the old answer" if with_true else "") + f" for all {len(requests)} request(s)")


@app.command()
def demo(
    model: str = MODEL,
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
        prompts = [
            req.text,
            "The Eiffel Tower is in",
            "Where is the Eiffel Tower? It is in the city of",
            "The Louvre is located in the city of",
            "The Brandenburg Gate is located in the city of",
        ]
        _show_edit(lm, [req], patch, prompts, tokens)
        console.print("Rows 1-3 should now say Rome (efficacy, generality); rows 4-5 should be as before (locality).")
    _exit_if_not_taken(patch, 1)


@app.command()
def edit(
    prompt: Optional[str] = typer.Option(None, help="The prompt with {} for the subject, e.g. '{} is located in the city of'."),
    subject: Optional[str] = typer.Option(None, help="The subject, e.g. 'The Eiffel Tower'."),
    target: Optional[str] = typer.Option(None, help="The new continuation, as given (mind the leading space: ' Rome')."),
    target_true: Optional[str] = typer.Option(None, help="The old answer, to compare against (optional)."),
    requests: Optional[Path] = typer.Option(None, help="A JSON list of requests ({prompt, subject, target} objects or CounterFact cases), edited as one batch."),
    model: str = MODEL,
    method: str = METHOD,
    layer: Optional[int] = LAYER,
    stats_tokens: Optional[int] = STATS_TOKENS,
    corpus: Optional[list[str]] = CORPUS,
    settings: list[str] = SETTINGS,
    save: Optional[Path] = typer.Option(None, help="Save the edit here (a weight patch or a codebook: .safetensors; an in-context edit: JSON)."),
    prompts: list[str] = typer.Option([], "--also", help="More prompts to complete before and after."),
    tokens: int = typer.Option(12, help="New tokens per completion."),
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
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
        lm = _load(model, device_map, dtype)
        with _bar(STATS_BAR, "tokens") as bar:
            m.prepare(lm, bar)
        with _bar("editing", "requests") as bar, err.status("editing ..."):
            patch = m.edit(lm, reqs, bar)
        _show_edit(lm, reqs, patch, [r.text for r in reqs[:10]] + prompts, tokens)
        if save:
            patch.save(save)
            console.print(f"edit saved to {save}")
    _exit_if_not_taken(patch, len(reqs))


def _exit_if_not_taken(patch, n: int, shown: int = 5) -> None:
    """One line per request whose edit did not take (the first few), then exit with status 3."""
    from modeledit.llm.outcome import not_taken

    failed = not_taken(patch)
    if not failed:
        return
    for r, why in failed[:shown]:
        err.print(f"[bold red]the edit did not take[/] for {r['prompt'].replace('{}', r['subject'])!r} → {r['target']!r}: {why}")
    if len(failed) > shown:
        err.print(f"... and {len(failed) - shown} more")
    err.print(f"{len(failed)} of {n} edits did not take (exit status 3)")
    raise typer.Exit(3)


@app.command()
def layer(
    model: str = MODEL,
    reset: bool = typer.Option(False, "--reset", help="Forget the stored layer choice (back to the packaged model's measured layer, else the paper's relative depth)."),
) -> None:
    """Show which layer ROME edits by default for a model, and why."""
    from modeledit.llm.layer_choice import clear_layer
    from modeledit.llm.rome import default_layer

    with _errors():
        lm = _load(model)
        if reset:
            console.print("stored layer choice removed" if clear_layer(lm) else "no stored layer choice")
        chosen, reason = default_layer(lm)
        console.print(f"{lm.name}: layer {chosen} of {lm.layout.n_layers} ({reason})")


@app.command()
def stats(
    model: str = MODEL,
    layers: str = typer.Option(..., help="Comma-separated layer indices, e.g. 10 or 3,4,5."),
    tokens: int = typer.Option(100_000, help="Corpus tokens to estimate over."),
    corpus: Optional[list[str]] = typer.Option(None, help="Text files (default: the embedded Wikipedia leads)."),
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
) -> None:
    """Collect (and cache) the key statistics C = E\\[k kᵀ] of several layers in one pass (--workers: the
    corpus in shards over workers, their sums added)."""
    from modeledit.llm.stats import StatsConfig, second_moments
    from modeledit.scale import RayMoments, check_workers

    with _errors():
        try:
            wanted = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise typer.BadParameter("give layer numbers separated by commas, e.g. 3,4,5", param_hint="--layers")
        spread = check_workers(workers, ray_address)
        lm = _load(model, device_map, dtype)
        with _bar("key statistics", "tokens") as bar:
            second_moments(lm, wanted, StatsConfig(corpus=tuple(corpus) if corpus else None, n_tokens=tokens), bar,
                           collect=RayMoments(workers, ray_address) if spread else None)
        console.print(f"statistics of layers {wanted} cached")


@app.command()
def models() -> None:
    """List the packaged models (usable offline)."""
    from modeledit.llm.packaged import PACKAGED

    for m in PACKAGED.values():
        console.print(f"{m.name:14} {m.description}  (pip: {m.pip_name})")

