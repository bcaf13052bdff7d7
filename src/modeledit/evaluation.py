"""The one evaluation loop: for each case, score the unedited model, edit, score the edited model,
restore the weights, and stream the record to ``cases.jsonl``. A rerun skips the cases already there."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from modeledit.errors import EditFailedError
from modeledit.report import CaseLog, cost_summary, start_run, write_json

log = logging.getLogger(__name__)


def run_evaluation(
    lm: Any,
    method: Any,
    bench: Any,
    cases: Sequence[Any],
    out_dir: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    prepare_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    hparams = asdict(method.hparams) if is_dataclass(method.hparams) else dict(method.hparams)
    run = {"benchmark": bench.name, "method": method.name, "model": lm.name, "model_identity": lm.identity, "hparams": hparams}
    out = start_run(out_dir, run)

    caselog = CaseLog(out / "cases.jsonl")
    method.prepare(lm, prepare_progress)  # one-off costs (statistics) stay out of the per-edit times
    todo = [c for c in cases if c.case_id not in caselog.done]
    if len(todo) < len(cases):
        log.info("resuming: %d of %d cases already done", len(cases) - len(todo), len(cases))
    done = len(cases) - len(todo)
    for case in todo:
        pre = bench.score(lm, case)
        t0 = time.perf_counter()
        try:
            patch, error = method.edit(lm, bench.request(case)), None
        except EditFailedError as exc:
            patch, error = None, str(exc)
            log.warning("case %s: edit failed: %s", case.case_id, exc)
        seconds = time.perf_counter() - t0
        if patch is not None:
            with patch.applied(lm.model):
                post = bench.score(lm, case)
        else:
            post = pre  # a failed edit leaves the model unchanged
        caselog.write(
            {
                "case_id": case.case_id,
                "request": bench.request(case).to_dict(),
                "pre": pre,
                "post": post,
                "seconds": seconds,
                "edit": patch.entries[0].info if patch is not None else None,
                "error": error,
            }
        )
        done += 1
        if progress:
            progress(done, len(cases))
    wanted = {c.case_id for c in cases}
    records = [r for r in caselog.records if r["case_id"] in wanted]
    summary = {
        "n": len(records),
        "benchmark": bench.name,
        "method": method.name,
        "model": lm.name,
        **bench.summarize(records),
        "failed_edits": sum(1 for r in records if r.get("error")),
        "cost": {**cost_summary(r["seconds"] for r in records), "gradient_steps_mean": _mean_steps(records)},
        "hparams": hparams,
    }
    write_json(out / "summary.json", summary)
    return summary


def _mean_steps(records: Sequence[dict[str, Any]]) -> float | None:
    steps = [r["edit"]["gradient_steps"] for r in records if r.get("edit") and "gradient_steps" in r["edit"]]
    return sum(steps) / len(steps) if steps else None
