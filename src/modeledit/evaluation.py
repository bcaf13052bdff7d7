"""The one evaluation loop, for every method and benchmark.

The cases are cut into batches of ``batch_size`` in file order (a case whose edits contradict an earlier
case's in the batch waits for the next batch). For each batch: score its cases on the
unedited model, edit all the batch's requests in one edit (jointly or one after another, as the method
does), score each case with the whole batch's edit applied, undo the edit, and stream each case's record
to ``cases.jsonl``. ``batch_size=1`` edits each case alone. The edit is anything with ``applied(lm)``:
a weight patch, or an edit that changes no weight — the loop does not tell them apart.

A rerun skips the cases already written (a batch cut short is edited again — the same edit — and only
its missing cases are scored) and refuses a directory that holds a run with other settings.

The records may be computed elsewhere (``compute``: Ray workers, ``scale/evaluate.py``, each running
``batch_records`` on its share of the batches); this process alone writes them, in whatever order they
come, and the summary reads them in file order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from contextlib import closing
from typing import Any, Callable, Iterator, Sequence

from modeledit.errors import EditFailedError
from modeledit.report import CaseLog, cost_summary, reset_peak_rss, run_settings, settings_before, start_run, write_json

log = logging.getLogger(__name__)


def run_evaluation(
    lm: Any,
    method: Any,
    bench: Any,
    cases: Sequence[Any],
    out_dir: str | Path,
    *,
    batch_size: int = 1,
    known_pre: dict[Any, dict[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    prepare_progress: Callable[[int, int], None] | None = None,
    compute: Callable[..., Iterator[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """``known_pre``: the unedited model's scores of cases (by case id) that another run of the same model
    and benchmark settings has computed already (``compare`` passes them on), not computed again.
    ``compute``: what computes the cases' records, called as ``batch_records`` is (the default: here, in
    this process; ``scale.evaluate.RayRecords``: on Ray workers)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        from modeledit.errors import RequestError

        raise RequestError("batch_size", f"must be a positive integer, got {batch_size!r}")
    run = {"benchmark": bench.name, "benchmark_config": bench.config(), "method": method.name, "model": lm.name,
           "model_identity": lm.identity, "hparams": run_settings(method.hparams),
           "batch_size": batch_size}
    out = start_run(out_dir, run, {"hparams": settings_before(method.hparams)})
    reset_peak_rss()

    caselog = CaseLog(out / "cases.jsonl")
    method.prepare(lm, prepare_progress)  # one-off costs (statistics) stay out of the per-edit times
    done = sum(1 for c in cases if c.case_id in caselog.done)
    if done:
        log.info("resuming: %d of %d cases already done", done, len(cases))
    batches = cut_batches(cases, batch_size, bench.requests)
    todo_of = lambda batch: [c for c in batch if c.case_id not in caselog.done]  # noqa: E731
    # the one seam for spreading the work: ``compute`` gives the records of numbered batches (here, or on
    # workers: ``scale.evaluate``); this process alone writes them, so the run resumes as it always does
    with closing((compute or batch_records)(lm, method, bench, list(enumerate(batches)), todo_of, known_pre)) as stream:
        for record in stream:
            caselog.write(record)
            done += 1
            if progress:
                progress(done, len(cases))
    order = {c.case_id: i for i, c in enumerate(cases)}
    records = sorted((r for r in caselog.records if r["case_id"] in order), key=lambda r: order[r["case_id"]])  # file order, however written
    summary = {
        "n": len(records),
        "benchmark": bench.name,
        "method": method.name,
        "model": lm.name,
        "batch_size": batch_size,
        "protocol": (
            f"cases edited in batches of {batch_size} (one edit of the batch's requests), each batch from the "
            "unedited model (its edit undone before the next batch); 'pre' scores the unedited model, 'post' "
            "the model holding the batch's edit; neighbourhood/specificity prompts are scored on each"
        ),
        **bench.summarize(records),
        "batches": len(batches),
        "failed_edits": sum(1 for r in records if r.get("error")),
        "edits_not_taken": sum(1 for r in records for e in (r.get("edit") or []) if e.get("took") is False),
        "cost": {**cost_summary(r["seconds"] for r in records), "gradient_steps_mean": _mean_steps(records),
                 "score_seconds_per_case": _mean([r["score_seconds"] for r in records if "score_seconds" in r])},
        "benchmark_config": bench.config(),
        "hparams": asdict(method.hparams) if is_dataclass(method.hparams) else dict(method.hparams),
    }
    write_json(out / "summary.json", summary)
    return summary


def batch_records(lm: Any, method: Any, bench: Any, batches: Sequence[tuple[int, list[Any]]],
                  todo_of: Callable[[list[Any]], list[Any]], known_pre: dict[Any, dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    """The record of each case still to do (``todo_of``) of the numbered ``batches``, in order, each as soon
    as it is scored: the batch's cases scored unedited, its requests edited in one edit, every case scored
    with that edit applied; the edit is undone when the batch is done (or the caller stops early)."""
    for b, batch, edit, error, seconds in batch_edits(lm, method, bench, batches, todo_of):
        todo = todo_of(batch)
        per_case = [bench.requests(c) for c in batch]
        requests = [r for rs in per_case for r in rs]
        pre = {c.case_id: (known_pre or {}).get(c.case_id) or bench.score(lm, c) for c in todo}
        first = 0
        owned = {}
        for c, rs in zip(batch, per_case):
            owned[c.case_id] = list(range(first, first + len(rs)))
            first += len(rs)

        def record(case, post):
            idx = owned[case.case_id]
            return {
                "case_id": case.case_id,
                "batch": b,
                "requests": [requests[i].to_dict() for i in idx],
                "pre": pre[case.case_id],
                "post": post,
                "seconds": seconds * len(idx) / len(requests),  # the case's share of the batch's edit
                "batch_seconds": seconds,
                "edit": [request_info(edit, i) for i in idx] if edit is not None else None,
                "error": error,
            }

        if edit is None:
            for c in todo:  # a failed edit leaves the model unchanged
                yield record(c, pre[c.case_id])
        else:
            with edit.applied(lm):
                for c in todo:
                    t1 = time.perf_counter()
                    post = bench.score(lm, c, pre[c.case_id])
                    yield {**record(c, post), "score_seconds": time.perf_counter() - t1}


EACH_CHUNK = 16  # one-request batches whose edits a method computes side by side (edit_each)


def edit_groups(method: Any, bench: Any, batches: Sequence[tuple[int, list[Any]]],
                todo_of: Callable[[list[Any]], list[Any]]) -> list[list[tuple[int, list[Any], list[Any]]]]:
    """The numbered batches with cases to do, as (number, batch, requests), grouped as they are edited: a
    method that can edit independent requests side by side (``edit_each``: ROME) takes runs of up to
    EACH_CHUNK one-request batches at once; every other batch is a group of its own. Workers are given whole
    groups (``scale/evaluate.py``), so each edit is computed as it is in one process."""
    each = getattr(method, "edit_each", None) is not None
    pending = [(b, batch, [r for c in batch for r in bench.requests(c)]) for b, batch in batches if todo_of(batch)]
    groups, i = [], 0
    while i < len(pending):
        n = 0
        while each and i + n < len(pending) and n < EACH_CHUNK and len(pending[i + n][2]) == 1:
            n += 1
        groups.append(pending[i : i + max(n, 1)])
        i += max(n, 1)
    return groups


def batch_edits(lm: Any, method: Any, bench: Any, batches: Sequence[tuple[int, list[Any]]], todo_of: Callable[[list[Any]], list[Any]]):
    """(number, batch, edit, error, seconds) for each of the numbered batches with cases to do, in order: the
    batch's requests edited in one edit from the model as it is. A group of one-request batches
    (``edit_groups``) is edited side by side (``edit_each``) — each edit the one it gets alone, the time
    shared out; if one of them fails, each is edited alone again."""
    for group in edit_groups(method, bench, batches, todo_of):
        if len(group) > 1:
            t0 = time.perf_counter()
            try:
                edits = method.edit_each(lm, [reqs[0] for _, _, reqs in group])
            except EditFailedError as exc:
                log.info("side by side, one of %d edits failed (%s): each edited alone", len(group), exc)
            else:
                share = (time.perf_counter() - t0) / len(group)
                for (b, batch, _), e in zip(group, edits):
                    yield b, batch, e, None, share
                continue
        for b, batch, reqs in group:
            t0 = time.perf_counter()
            try:
                edit, error = method.edit(lm, reqs), None
            except EditFailedError as exc:
                edit, error = None, str(exc)
                log.warning("cases %s: edit failed: %s", [c.case_id for c in batch], exc)
            yield b, batch, edit, error, time.perf_counter() - t0


def cut_batches(cases: Sequence[Any], size: int, requests_of: Callable[[Any], Sequence[Any]]) -> list[list[Any]]:
    """Batches of ``size`` cases in file order, except that a case whose edits contradict one already in
    the batch (the same subject and prompt, another target: MQuAKE has such pairs) waits for the next."""
    batches, pending = [], list(cases)
    while pending:
        batch, targets, rest = [], {}, []
        for c in pending:
            rs = requests_of(c)
            if len(batch) == size or any(targets.get((r.prompt, r.subject), r.target) != r.target for r in rs):
                rest.append(c)
                continue
            targets.update({(r.prompt, r.subject): r.target for r in rs})
            batch.append(c)
        batches.append(batch)
        pending = rest
    return batches


def request_info(edit: Any, index: int) -> dict[str, Any]:
    """What the edit reports about its ``index``-th request: the info of the entry holding it, with the
    entry's per-request values (``info["per_request"]``: name -> list over its requests) cut to this one's."""
    at = 0
    for e in getattr(edit, "entries", ()):
        n = len(e.requests)
        if index < at + n:
            own = {k: v[index - at] for k, v in e.info.get("per_request", {}).items()}
            return {**{k: v for k, v in e.info.items() if k != "per_request"}, **own}
        at += n
    return dict(getattr(edit, "info", {}) or {})


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _mean_steps(records: Sequence[dict[str, Any]]) -> float | None:
    return _mean([e["gradient_steps"] for r in records for e in (r.get("edit") or []) if isinstance(e.get("gradient_steps"), (int, float))])
