"""Editing in a row: batches edited one after another, each on the model holding every earlier edit.

The cases are cut into consecutive batches of ``batch_size``. Batch i is edited on the model holding the
edits of batches 0..i-1 (its edit computed there), saved as ``chain/NNNNN.safetensors`` and kept applied:
the chain of patches applies and reverts exactly, like any patch. When the number of edits reaches a
checkpoint (and after the last batch), every case edited so far is scored on the model as it is, against
its score on the unedited model (computed once: ``pre.jsonl``), and the general ability is measured
(``llm/ability.py``: held-out perplexity, known facts retained); one record per checkpoint in
``checkpoints.jsonl``, and ``sequential.json`` / ``sequential.png`` (the curves) at the end.

Interrupted at any point (even ``kill -9``) and run again, it re-applies the saved chain and goes on from
the first batch without a saved patch: no edit lost, none applied twice, and a checkpoint that was cut
short is measured on the same model. (AlphaEdit's memory of earlier keys is on disk, keyed by the weights.)
A run directory holding other settings is refused, nothing overwritten.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

from modeledit.errors import RequestError
from modeledit.report import CaseLog, run_settings, settings_before, start_run, write_json

log = logging.getLogger(__name__)


def check_plan(n_cases: int, batch_size: int, checkpoints: Sequence[int]) -> list[int]:
    """The checkpoints (numbers of edited cases), checked; the last case count is always one."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RequestError("batch-size", f"must be a positive number of cases, got {batch_size!r}")
    if batch_size > n_cases:
        raise RequestError("batch-size", f"{batch_size} is more than the {n_cases} cases: lower it or raise --limit")
    cps = list(checkpoints)
    if any(not isinstance(c, int) or c < 1 for c in cps) or cps != sorted(set(cps)):
        raise RequestError("checkpoints", f"{cps}: give increasing positive numbers of edits, e.g. 10,100,500,1000")
    if cps and cps[-1] > n_cases:
        raise RequestError("checkpoints", f"{cps[-1]} is beyond the {n_cases} cases edited: drop it or raise --limit")
    return cps if cps and cps[-1] == n_cases else [*cps, n_cases]


def run_sequential(
    lm: Any,
    method: Any,
    bench: Any,
    cases: Sequence[Any],
    out_dir: str | Path,
    *,
    batch_size: int,
    checkpoints: Sequence[int] = (),
    ability: Any = None,
    known_pre: dict[Any, dict[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """``known_pre``: the unedited model's scores of cases (by id) that another run of the same model and
    benchmark settings has computed already (``compare_sequential`` passes them on), not computed again."""
    from modeledit.api import load_edit

    cps = check_plan(len(cases), batch_size, checkpoints)
    run = {"protocol": "sequential", "benchmark": bench.name, "benchmark_config": bench.config(), "method": method.name,
           "model": lm.name, "model_identity": lm.identity, "hparams": run_settings(method.hparams),
           "batch_size": batch_size, "checkpoints": cps, "cases": [c.case_id for c in cases]}
    out = start_run(out_dir, run, {"hparams": settings_before(method.hparams)})
    method.prepare(lm)
    pre_log = CaseLog(out / "pre.jsonl")
    for c in cases:  # the unedited model's scores, once
        if c.case_id not in pre_log.done:
            pre_log.write({"case_id": c.case_id, "pre": (known_pre or {}).get(c.case_id) or bench.score(lm, c)})
    pre = {r["case_id"]: r["pre"] for r in pre_log.records}
    cp_log = CaseLog(out / "checkpoints.jsonl", key="edits")
    if ability is not None and not ability.baseline:
        base = out / "ability-unedited.json"
        if not base.exists():
            write_json(base, ability.measure(lm))
        ability.baseline = _read(base)
    chain = out / "chain"
    times = CaseLog(out / "batches.jsonl", key="batch")  # each batch's edit time, kept across resumes
    batches = [list(cases[b : b + batch_size]) for b in range(0, len(cases), batch_size)]
    done = 0
    with ExitStack() as held:
        for i, batch in enumerate(batches):
            f = chain / f"{i:05d}.safetensors"
            requests = [r for c in batch for r in bench.requests(c)]
            if f.exists():  # made before an interruption: the same edit, applied again
                patch = load_edit(f)
                if patch.requests != [r.to_dict() for r in requests]:
                    raise RequestError("out", f"{f} holds the edit of other requests: this directory belongs to another run")
                seconds = None
            else:
                t0 = time.perf_counter()
                patch = method.edit(lm, requests)
                seconds = time.perf_counter() - t0
                patch.save(f)
                times.write({"batch": i, "seconds": seconds})
                log.info("batch %d (%d requests) edited in %.1f s", i, len(requests), seconds)
            held.enter_context(patch.applied(lm))
            done += len(batch)
            if progress:
                progress(done, len(cases))
            if done in _due(cps, done, batch_size) and done not in cp_log.done:
                spent = [r["seconds"] for r in times.records if r["batch"] <= i]
                rec = _checkpoint(lm, bench, cases[:done], pre, ability, done, i + 1, seconds)
                cp_log.write({**rec, "edit_seconds": sum(spent) if len(spent) == i + 1 else None})
    records = sorted(cp_log.records, key=lambda r: r["edits"])
    result = {"run": run, "checkpoints": records}
    write_json(out / "sequential.json", result)
    plot_sequential([(method.name, records)], out / "sequential.png", f"{bench.name}, {lm.name}, batches of {batch_size}")
    return {**result, "pre": pre}  # the unedited scores too, for the next run on the same cases


def _due(cps: Sequence[int], done: int, batch_size: int) -> set[int]:
    """``done`` when a checkpoint falls in the batch that ended at it."""
    return {done} if any(done - batch_size < c <= done for c in cps) else set()


def _read(path: Path) -> dict[str, Any] | None:
    import json

    return json.loads(path.read_text()) if path.exists() else None


def _checkpoint(lm, bench, cases, pre, ability, edits: int, batches: int, seconds: float | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    records = [{"case_id": c.case_id, "pre": pre[c.case_id], "post": bench.score(lm, c, pre[c.case_id])} for c in cases]
    summary = bench.summarize(records)
    rec = {"edits": edits, "batches": batches, "benchmark": bench.name, "pre": summary["pre"], "post": summary["post"],
           "last_batch_seconds": seconds, "measure_seconds": None}
    if ability is not None:
        now = ability.measure(lm, [r for c in cases for r in bench.requests(c)])
        rec["ability"] = {k: v for k, v in now.items() if k != "known_ids"}
        rec["ability_unedited"] = {k: v for k, v in ability.baseline.items() if k != "known_ids"}
        if "known_ids" in ability.baseline:
            rec["ability_unedited"]["known_count"] = len(ability.baseline["known_ids"])
    rec["measure_seconds"] = time.perf_counter() - t0
    log.info("after %d edits: %s", edits, {k: round(v, 1) for k, v in summary["post"].items() if isinstance(v, float)})
    return rec


def plot_sequential(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: Path, title: str) -> Path:
    """One panel per measure, one curve per run, against the number of edits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modeledit.compare import CHART

    bench = runs[0][1][0].get("benchmark", "counterfact")
    keys = [k for k in CHART.get(bench, []) if k in runs[0][1][0]["post"]]
    extra = [k for k in ("perplexity", "known_retained") if "ability" in runs[0][1][0] and runs[0][1][0]["ability"].get(k) is not None]
    panels = keys + extra
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, k in zip(axes.ravel(), panels):
        for name, recs in runs:
            xs = [r["edits"] for r in recs]
            ys = [r["post"][k] if k in r["post"] else r["ability"][k] for r in recs]
            ax.plot(xs, ys, marker="o", label=name)
        first = runs[0][1]
        if k in keys:  # the unedited model on the same cases: they grow with the edits, so a curve too
            ax.plot([r["edits"] for r in first], [r["pre"][k] for r in first], color="k", ls="--", lw=1, zorder=5, label="unedited")
        elif first[0].get("ability_unedited", {}).get(k) is not None:
            ax.axhline(first[0]["ability_unedited"][k], color="k", ls="--", lw=1, zorder=5, label="unedited")
        ax.set_title(k.replace("_", " "), fontsize=9)
        ax.set_xlabel("edits")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
