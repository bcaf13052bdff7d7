"""Where to edit: the ROME paper's sweep — each case edited at every layer and at each token position,
and scored (ES, PS, NS, S).

For each layer and each token class (``tokens.TOKEN_CLASSES``: the subject's first, middle and last
token, the first token after it, a further token, the prompt's last token), the method (ROME: ``layer``
and ``token`` hyper-parameters and ``edit_each``) edits each CounterFact case's request there, alone on
the unedited model — the values of ``chunk`` cases optimised side by side, each getting what it gets
alone —, each case is scored with its own edit applied, and the edit is reverted. One record per cell in
``cells.jsonl`` (streamed: an interrupted sweep resumes at the first missing cell; a directory holding
other settings is refused); a prompt without a token of some class (a one-token subject has no middle) is
recorded as skipped. ``sweep.json`` holds the means per layer and token (S: the harmonic mean of the mean
ES, PS and NS) and the best layer at the last subject token; ``sweep.png`` the heatmaps (``sweep_plot.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from modeledit.errors import RequestError
from modeledit.llm.bench.counterfact import CounterFact
from modeledit.llm.method import check_layers
from modeledit.llm.model import LanguageModel
from modeledit.llm.rows import build_rows
from modeledit.llm.tokens import TOKEN_CLASSES
from modeledit.report import CaseLog, harmonic_mean, mean, settings_before, start_run, write_json

log = logging.getLogger(__name__)

METRICS = ("efficacy_score", "paraphrase_score", "neighborhood_score")


def run_sweep(
    lm: LanguageModel,
    data: str | Path,
    out_dir: str | Path,
    *,
    method: str = "rome",
    limit: int | None = None,
    layers: Sequence[int] | None = None,
    tokens: Sequence[str] = TOKEN_CLASSES,
    hparams: dict[str, Any] | None = None,
    chunk: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    from modeledit.methods import get_method, method_class

    cls = method_class(method)
    names = {f.name for f in fields(cls.HyperParams)}
    if not {"layer", "token"} <= names or not hasattr(cls, "edit_each"):
        raise RequestError("method", f"{method} cannot be placed at a layer and a token; the sweep edits with rome")
    hparams = {k: v for k, v in (hparams or {}).items() if k not in ("layer", "token")}
    layers = list(range(lm.layout.n_layers)) if layers is None else list(layers)
    check_layers(lm, layers, "layers")
    bad = [t for t in tokens if t not in TOKEN_CLASSES]
    if bad or not tokens:
        raise RequestError("tokens", f"{bad or 'none'}: choose among {', '.join(TOKEN_CLASSES)}")
    bench = CounterFact()
    cases = bench.load(data, limit)
    base = get_method(method, **hparams)
    run = {"protocol": "sweep", "method": method, "model": lm.name, "model_identity": lm.identity, "data": str(data),
           "hparams": {k: v for k, v in asdict(base.hparams).items() if k not in ("layer", "token")},
           "layers": layers, "tokens": list(tokens), "cases": [c.case_id for c in cases]}
    out = start_run(out_dir, run, {"hparams": settings_before(base.hparams)})
    if getattr(base.hparams, "mom2_adjustment", False):  # every layer's statistics in one pass over the corpus
        from modeledit.llm.stats import second_moments

        second_moments(lm, layers, base.hparams.stats)
    pre_log, cells = CaseLog(out / "pre.jsonl"), CaseLog(out / "cells.jsonl", key="cell")
    for c in cases:
        if c.case_id not in pre_log.done:
            pre_log.write({"case_id": c.case_id, "pre": _metrics(bench.score(lm, c), "neighborhood_top1")})
    pre = {r["case_id"]: r["pre"] for r in pre_log.records}
    total, done = len(cases) * len(layers) * len(tokens), len(cells.done)
    # the last subject token's row first (it chooses the layer); the picture is redrawn after each row
    title = f"Edits of {lm.name} by {method} at each layer and token, {len(cases)} cases"
    order = sorted(tokens, key=lambda t: t != "last_subject")
    for token in order:
        before = done
        for layer in layers:
            m = get_method(method, **hparams, layer=layer, token=token)
            todo = [c for c in cases if f"{c.case_id}/{layer}/{token}" not in cells.done]
            for b in range(0, len(todo), chunk):
                here, skipped = [], {}
                for c in todo[b : b + chunk]:
                    try:  # a prompt without a token of this class (its context templates only prefix it)
                        build_rows(lm, bench.requests(c), ["{}"], (), token)
                        here.append(c)
                    except RequestError as exc:
                        if exc.field != "token":
                            raise
                        skipped[c.case_id] = str(exc)
                t0 = time.perf_counter()
                edits = m.edit_each(lm, [bench.requests(c)[0] for c in here]) if here else []
                share = (time.perf_counter() - t0) / max(1, len(here))
                for c, edit in zip(here, edits):
                    with edit.applied(lm):
                        post = _metrics(bench.score(lm, c, pre[c.case_id]))
                    info = edit.entries[0].info
                    cells.write({"cell": f"{c.case_id}/{layer}/{token}", "case_id": c.case_id, "layer": layer, "token": token,
                                 "pre": _metrics(pre[c.case_id]), "post": post, "took": info["per_request"]["took"][0],
                                 "gradient_steps": info.get("gradient_steps"), "edit_seconds": share})
                for case_id, why in skipped.items():
                    cells.write({"cell": f"{case_id}/{layer}/{token}", "case_id": case_id, "layer": layer, "token": token,
                                 "skipped": why})
                done += len(here) + len(skipped)
                if progress:
                    progress(done, total)
        if done > before and token != order[-1]:
            _write(out, run, cells.records, layers, tokens, title)
    return _write(out, run, cells.records, layers, tokens, title)


def _write(out: Path, run: dict[str, Any], records: Sequence[dict[str, Any]], layers: Sequence[int], tokens: Sequence[str],
           title: str) -> dict[str, Any]:
    """``sweep.json`` and ``sweep.png`` from the cells done so far (``complete``: every cell is done)."""
    from modeledit.llm.sweep_plot import sweep_plot

    result = {"run": run, **summarize(records, layers, tokens)}
    result["complete"] = len({r["cell"] for r in records}) == len(run["cases"]) * len(layers) * len(tokens)
    write_json(out / "sweep.json", result)
    sweep_plot(result, out / "sweep.png", title)
    return result


def _metrics(score: dict[str, Any], *extra: str) -> dict[str, Any]:
    return {k: score[k] for k in (*METRICS, *extra) if k in score}


def summarize(records: Sequence[dict[str, Any]], layers: Sequence[int], tokens: Sequence[str]) -> dict[str, Any]:
    """Means ×100 per (metric, token, layer) over the cases edited there, S, the unedited means, and the
    best layer at the last subject token (by S)."""
    grid: dict[str, dict[str, list[float | None]]] = {m: {t: [] for t in tokens} for m in (*METRICS, "score")}
    counts: dict[str, list[int]] = {t: [] for t in tokens}
    for t in tokens:
        for layer in layers:
            cell = [r for r in records if r["layer"] == layer and r["token"] == t and "post" in r]
            counts[t].append(len(cell))
            means = [100 * mean(r["post"][m] for r in cell) if cell else None for m in METRICS]
            for m, v in zip(METRICS, means):
                grid[m][t].append(v)
            grid["score"][t].append(harmonic_mean(means) if cell else None)
    seen = {r["case_id"]: r["pre"] for r in records if "pre" in r}
    unedited = {m: 100 * mean(p[m] for p in seen.values()) for m in METRICS} if seen else {}
    if unedited:
        unedited["score"] = harmonic_mean([unedited[m] for m in METRICS])
    best = None
    if "last_subject" in tokens:
        scored = [(s, layer) for s, layer in zip(grid["score"]["last_subject"], layers) if s is not None]
        if scored:
            s, layer = max(scored, key=lambda x: (x[0], -x[1]))  # a tie: the lower layer
            best = {"layer": layer, "score": s, **{m: grid[m]["last_subject"][layers.index(layer)] for m in METRICS}}
    return {"layers": list(layers), "tokens": list(tokens), "grid": grid, "cases_per_cell": counts, "unedited": unedited,
            "best_last_subject": best, "n_cases": len(seen)}
