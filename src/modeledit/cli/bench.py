"""The benchmark commands: ``modeledit eval counterfact|zsre|mquake`` (batches, or ``--sequential``) and
``modeledit compare``, thin layers over ``api.evaluate`` and ``api.compare``."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from modeledit.cli.common import _bar, _errors, _load, app, console, eval_app
from modeledit.cli.llm import _method
from modeledit.cli.options import (BATCH_SIZE, CHECKPOINTS, CORPUS, DEVICE_MAP, DTYPE, KNOWN, LAYER, LIMIT, METHOD, MODEL,
                                    RAY_ADDRESS, RUN_OUT, SEQUENTIAL, SETTINGS, STATS_BAR, STATS_TOKENS, WORKERS)


def _eval(benchmark: str, data: Path, out: Path, model: str, method: str, limit, batch_size: int | str, layer, stats_tokens, corpus,
          settings, scale: dict, **options) -> None:
    from modeledit.api import evaluate
    from modeledit.scale import check_workers

    with _errors():
        m = _method(method, layer, stats_tokens, corpus, settings)
        check_workers(scale["workers"], scale["ray_address"], sequential=bool(options.get("sequential")))  # before loading
        lm = _load(model, scale["device_map"], scale["dtype"])
        with _bar(STATS_BAR, "tokens") as sbar, _bar("cases", "") as bar:
            summary = evaluate(lm, data, out, method=m, benchmark=benchmark, limit=limit, batch_size=batch_size, progress=bar,
                               prepare_progress=sbar, workers=scale["workers"], ray_address=scale["ray_address"], **options)
        if options.get("sequential"):
            _print_sequential(summary, out)
            return
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
            f"peak RSS {c['peak_rss_mb']:.0f} MiB; failed edits: {summary['failed_edits']}; "
            f"edits that did not take: {summary['edits_not_taken']}"
        )
        console.print(f"written: {out / 'cases.jsonl'}, {out / 'summary.json'}")


def _print_sequential(result: dict, out: Path) -> None:
    recs = result["checkpoints"]
    from modeledit.compare import CHART, COLUMNS

    keys = [k for k in CHART[result["run"]["benchmark"]] if k in recs[0]["post"]]
    titles = dict(COLUMNS[result["run"]["benchmark"]])
    table = Table(title=f"{result['run']['benchmark']}, {result['run']['method']} on {result['run']['model']}, edited in a row, "
                        f"batches of {result['run']['batch_size']} (×100; first row: unedited)")
    for col in ["edits", *[titles[k] for k in keys], "perplexity", "known facts kept"]:
        table.add_column(col, justify="right")
    a0 = recs[0].get("ability_unedited", {})
    fmt = lambda v, f="{:.1f}": "—" if v is None else f.format(v)  # noqa: E731
    table.add_row("0", *[fmt(recs[0]["pre"][k]) for k in keys], fmt(a0.get("perplexity"), "{:.2f}"),
                  "—" if a0.get("known_count") is None else f"{a0['known_count']} known")
    for r in recs:
        a = r.get("ability", {})
        table.add_row(str(r["edits"]), *[fmt(r["post"][k]) for k in keys], fmt(a.get("perplexity"), "{:.2f}"), fmt(a.get("known_retained"), "{:.0%}"))
    console.print(table)
    console.print(f"written: {out / 'sequential.json'}, {out / 'sequential.png'}, the chain of patches in {out / 'chain'}")


@eval_app.command("counterfact")
def eval_counterfact(
    data: Path = typer.Option(..., help="CounterFact JSON (short form, e.g. ../shared/data/counterfact-val.json, or the original form)."),
    out: Path = RUN_OUT,
    model: str = MODEL,
    method: str = METHOD,
    limit: Optional[int] = LIMIT,
    batch_size: int = BATCH_SIZE,
    layer: Optional[int] = LAYER,
    stats_tokens: Optional[int] = STATS_TOKENS,
    corpus: Optional[list[str]] = CORPUS,
    settings: list[str] = SETTINGS,
    gen_tokens: int = typer.Option(0, help="Tokens per free generation for the generation entropy GE (default 0: GE skipped, it costs more than the scoring; the ROME paper uses 40 with --gen-tokens 40)."),
    compare: str = typer.Option("mean", help="Compare answers by their 'mean' token log-probability (the papers') or 'sum'."),
    sequential: bool = SEQUENTIAL,
    checkpoints: str = CHECKPOINTS,
    known: Optional[Path] = KNOWN,
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
) -> None:
    """Edit the cases N at a time, each batch from the unedited model (or, --sequential, one after another),
    and score them (ES, PS, NS, S, GE), pre and post."""
    _eval("counterfact", data, out, model, method, limit, batch_size, layer, stats_tokens, corpus, settings,
          _scale(workers, ray_address, device_map, dtype), gen_tokens=gen_tokens, compare=compare, **_seq(sequential, checkpoints, known))


@eval_app.command("zsre")
def eval_zsre(
    data: Path = typer.Option(..., help="zsRE JSON in MEND's format, e.g. ../shared/data/zsre-train-1k.json."),
    out: Path = RUN_OUT,
    model: str = MODEL,
    method: str = METHOD,
    limit: Optional[int] = LIMIT,
    batch_size: int = BATCH_SIZE,
    layer: Optional[int] = LAYER,
    stats_tokens: Optional[int] = STATS_TOKENS,
    corpus: Optional[list[str]] = CORPUS,
    settings: list[str] = SETTINGS,
    sequential: bool = SEQUENTIAL,
    checkpoints: str = CHECKPOINTS,
    known: Optional[Path] = KNOWN,
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
) -> None:
    """Edit the cases N at a time and score efficacy, paraphrase (top-1 token accuracy) and specificity."""
    _eval("zsre", data, out, model, method, limit, batch_size, layer, stats_tokens, corpus, settings,
          _scale(workers, ray_address, device_map, dtype), **_seq(sequential, checkpoints, known))


def _scale(workers: Optional[int], ray_address: Optional[str], device_map: Optional[str], dtype: str) -> dict:
    return {"workers": workers, "ray_address": ray_address, "device_map": device_map, "dtype": dtype}



def _seq(sequential: bool, checkpoints: str, known: Optional[Path]) -> dict:
    if not sequential:
        if checkpoints or known:
            raise typer.BadParameter("--checkpoints and --known go with --sequential", param_hint="--checkpoints")
        return {}
    try:
        cps = [int(x) for x in checkpoints.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{checkpoints!r}: give numbers of edits separated by commas, e.g. 10,100,1000", param_hint="--checkpoints") from None
    return {"sequential": True, "checkpoints": cps, "known": known}


@eval_app.command("mquake")
def eval_mquake(
    data: Path = typer.Option(..., help="MQuAKE JSON, e.g. ../shared/data/mquake-hard.json (its prompt files in mquake-prompts/ beside it)."),
    out: Path = RUN_OUT,
    model: str = MODEL,
    method: str = METHOD,
    limit: Optional[int] = LIMIT,
    edits_per_batch: str = typer.Option("1", help="Cases whose edits are applied together: a number, or 'all'."),
    cot: bool = typer.Option(False, "--cot", help="Chain-of-thought prompting of the multi-hop questions (multihop-cot-prompts.txt)."),
    layer: Optional[int] = LAYER,
    stats_tokens: Optional[int] = STATS_TOKENS,
    corpus: Optional[list[str]] = CORPUS,
    settings: list[str] = SETTINGS,
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
) -> None:
    """Edit the cases' facts N cases at a time and score edit-wise, multi-hop and hop-wise accuracy, unedited
    (original answers) and edited (new answers)."""
    from modeledit.errors import RequestError

    with _errors():
        size = edits_per_batch.strip().lower()
        if size != "all" and not (size.isdigit() and int(size) > 0):
            raise RequestError("edits-per-batch", f"{edits_per_batch!r}: give a positive number of cases or 'all'")
    _eval("mquake", data, out, model, method, limit, size if size == "all" else int(size), layer, stats_tokens, corpus, settings,
          _scale(workers, ray_address, device_map, dtype), cot=cot)


@app.command("compare")
def compare_cmd(
    methods: str = typer.Option("rome,memit,ft-l,ft-m,lora", help="Comma-separated methods; METHOD@N runs it at batch size N (e.g. memit@200), METHOD@all on every case at once."),
    data: Path = typer.Option(..., help="The benchmark file (CounterFact, zsRE or MQuAKE)."),
    out: Path = typer.Option(..., help="Directory: one resumable run per method, comparison.md/.json/.png."),
    benchmark: str = typer.Option("counterfact", help="counterfact, zsre or mquake."),
    model: str = MODEL,
    limit: Optional[int] = LIMIT,
    batch_size: int = typer.Option(1, help="Batch size of the methods named without @N."),
    settings: list[str] = typer.Option([], "--set", help="A method's hyper-parameter as METHOD.name=value (repeat), e.g. --set memit.layers=6,7,8."),
    gen_tokens: int = typer.Option(0, help="CounterFact: tokens per free generation for GE (default 0: skipped; 40 as in the ROME paper)."),
    cot: bool = typer.Option(False, "--cot", help="MQuAKE: chain-of-thought prompting of the multi-hop questions."),
    sequential: bool = typer.Option(False, "--sequential", help="Each method edits the batches in a row; their curves in one plot."),
    checkpoints: str = CHECKPOINTS,
    known: Optional[Path] = KNOWN,
    device_map: Optional[str] = DEVICE_MAP,
    dtype: str = DTYPE,
) -> None:
    """Run several methods on the same cases and write the comparison table and chart (--sequential: the curves)."""
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
        lm = _load(model, device_map, dtype)
        with ExitStack() as stack:
            bars: dict = {}

            def bar(kind: str):
                def update(label: str, done: int, total: int) -> None:
                    if (kind, label) not in bars:
                        bars[(kind, label)] = stack.enter_context(_bar(f"{label}: {kind}", ""))
                    bars[(kind, label)](done, total)
                return update

            seq = _seq(sequential, checkpoints, known)
            if seq:
                from modeledit.api import _known_default
                from modeledit.compare import compare_sequential
                from modeledit.llm.ability import default_ability

                known_file = seq["known"] if seq["known"] is not None else _known_default()
                compare_sequential(lm, names, data, out, benchmark=benchmark, limit=limit, batch_size=batch_size,
                                   checkpoints=seq["checkpoints"], ability=default_ability(known_file), settings=hparams, progress=bar("edits"))
                console.print(f"written: {out / 'sequential.json'}, {out / 'sequential.png'} (each method's run in {out}/METHOD/)")
                return
            compare(lm, names, data, out, benchmark=benchmark, limit=limit, batch_size=batch_size, gen_tokens=gen_tokens, cot=cot,
                    settings=hparams, progress=bar("cases"), prepare_progress=bar(STATS_BAR))
        console.print((out / "comparison.md").read_text())
        console.print(f"written: {out / 'comparison.md'}, {out / 'comparison.json'}, {out / 'comparison.png'}")
