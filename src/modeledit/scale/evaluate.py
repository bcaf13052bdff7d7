"""The evaluation loop's cases on Ray workers: ``run_evaluation(..., compute=RayRecords(n))``.

The batches still to do are cut into the groups one process edits together (``evaluation.edit_groups``:
ROME's runs of side-by-side edits, or one batch), and each group goes to a free worker, which computes
its records with ``evaluation.batch_records`` — the same code, so the same records. The driver writes them
as groups finish (in any order), so ``cases.jsonl``, resuming and the refusal of mixed settings are as in
one process. Sequential editing (each batch on the model holding the ones before) is not spread.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from modeledit.scale.runtime import workers


class RayRecords:
    """``compute`` for ``run_evaluation``: records computed by ``n`` workers (a local Ray runtime, or the
    cluster at ``address``). ``retries``: how often a worker that died is restarted and its group run
    again. ``pids``: the processes of the workers of the current run (for tests and monitoring)."""

    def __init__(self, n: int | None = None, address: str | None = None, *, retries: int = 1,
                 cpus: float | None = None, gpus: float | None = None):
        self.n, self.address, self.retries, self.cpus, self.gpus = n, address, retries, cpus, gpus
        self.pids: list[int] = []

    def __call__(self, lm: Any, method: Any, bench: Any, batches: Sequence[tuple[int, list[Any]]],
                 todo_of: Callable[[list[Any]], list[Any]], known_pre: dict[Any, Any] | None = None) -> Iterator[dict[str, Any]]:
        from modeledit.evaluation import edit_groups

        groups = []
        for group in edit_groups(method, bench, batches, todo_of):
            todo = {c.case_id for _, batch, _ in group for c in todo_of(batch)}
            pre = {k: v for k, v in (known_pre or {}).items() if k in todo}
            groups.append(([(b, batch) for b, batch, _ in group], todo, pre))
        if not groups:
            return
        with workers(lm, self.n, self.address, most=len(groups), retries=self.retries, cpus=self.cpus, gpus=self.gpus) as pool:
            self.pids = pool.pids
            work = pool.pool().map_unordered(
                lambda actor, g: actor.evaluate.remote(type(method), method.hparams, bench, *g), groups)
            for records in work:
                yield from records
