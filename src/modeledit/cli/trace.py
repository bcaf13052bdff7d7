"""Causal tracing commands: trace, trace-many."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from modeledit.cli.common import _bar, _errors, _load, app, console, err
from modeledit.cli.options import DEVICE_MAP, DTYPE, MODEL, RAY_ADDRESS, SETTINGS, WORKERS

TRACE_KINDS = {"hidden": "hidden state", "mlp": "MLP window", "attn": "attention window"}


@app.command()
def trace(
    prompt: str = typer.Option(..., help="The prompt, with {} for the subject or with the subject written out."),
    subject: str = typer.Option(..., help="The subject whose embeddings are corrupted, e.g. 'Vinson Massif'."),
    out: Path = typer.Option(..., help="Output directory: trace.json and trace_hidden/mlp/attn.png."),
    target: Optional[str] = typer.Option(None, help="The answer to trace, as it continues the prompt (' Antarctica'); default: the model's own next token."),
    model: str = MODEL,
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
    model: str = MODEL,
    limit: Optional[int] = typer.Option(None, help="Stop after tracing N facts that the model gets right (default: all)."),
    set_layer: bool = typer.Option(False, "--set-layer", help="Store the MLP peak as ROME's default layer for this model."),
    samples: int = typer.Option(10, help="Noisy runs per cell."),
    window: Optional[int] = typer.Option(None, help="Layers restored together for MLP/attention."),
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
) -> None:
    """Causal tracing over many known facts: average indirect effect per layer at the last subject token."""
    from modeledit.api import trace_facts
    from modeledit.scale import check_workers

    with _errors():
        check_workers(workers, ray_address)
        lm = _load(model, device_map, dtype)
        with _bar("known facts traced", "") as bar:
            agg = trace_facts(lm, data, out, limit=limit, set_layer=set_layer, workers=workers, ray_address=ray_address,
                              progress=bar, samples=samples, window=window)
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
def sweep(
    data: Path = typer.Option(..., help="CounterFact JSON, e.g. ../shared/data/counterfact-val.json."),
    out: Path = typer.Option(..., help="Output directory: cells.jsonl (resumable), sweep.json, sweep.png."),
    model: str = MODEL,
    method: str = typer.Option("rome", help="A method placed at a layer and a token (rome)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N cases."),
    layers: str = typer.Option("", help="Comma-separated layers (default: every layer)."),
    tokens: str = typer.Option("", help="Comma-separated token positions (default: all six of the paper: first_subject, "
                                        "middle_subject, last_subject, first_after, further, last)."),
    set_layer: bool = typer.Option(False, "--set-layer", help="Store the layer of the best S at the last subject token as ROME's default for this model."),
    settings: list[str] = SETTINGS,
) -> None:
    """Where to edit: edit each case at every layer and token position, score ES, PS, NS and S (the ROME paper's sweep)."""
    from modeledit.api import sweep as run
    from modeledit.errors import RequestError
    from modeledit.llm.method import parse_settings
    from modeledit.methods import method_class

    with _errors():
        try:
            chosen = [int(x) for x in layers.split(",") if x.strip()] or None
        except ValueError:
            raise RequestError("layers", f"{layers!r}: give layer numbers separated by commas, e.g. 4,6,8") from None
        names = [t.strip() for t in tokens.split(",") if t.strip()] or None
        hparams = parse_settings(method_class(method).HyperParams, settings)
        lm = _load(model)
        with _bar("edits", "") as bar:
            result = run(lm, data, out, method=method, limit=limit, layers=chosen, tokens=names, set_layer=set_layer,
                         progress=bar, **hparams)
        best, base = result["best_last_subject"], result["unedited"]
        if best:
            console.print(f"best S at the last subject token: layer {best['layer']} (S {best['score']:.1f}: ES {best['efficacy_score']:.1f}, "
                          f"PS {best['paraphrase_score']:.1f}, NS {best['neighborhood_score']:.1f}; unedited NS {base['neighborhood_score']:.1f})")
            if set_layer:
                console.print(f"ROME's default layer for {lm.name} is now {best['layer']}")
        console.print(f"written: {out / 'sweep.json'}, {out / 'sweep.png'}, {out / 'cells.jsonl'}")
