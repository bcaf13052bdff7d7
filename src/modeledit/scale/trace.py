"""Causal tracing of many facts on Ray workers: ``trace_many(..., compute=RayTraces(n))``.

The facts still to check are cut into runs of 32 (the runs one process checks together), each run goes
to a free worker (``trace_many.fact_records``: the same code, so the same records), and the driver takes
the runs' records in order, writing them until the limit of traced facts is reached — exactly the
records one process writes. Workers may have checked runs past the limit: that work is dropped.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from modeledit.scale.runtime import workers

RUN = 32  # facts checked together (trace_many.fact_records)


class RayTraces:
    """``compute`` for ``trace_many``: the facts' records computed by ``n`` workers (a local Ray runtime,
    or the cluster at ``address``), handed back in the facts' order."""

    def __init__(self, n: int | None = None, address: str | None = None, *, retries: int = 1,
                 cpus: float | None = None, gpus: float | None = None):
        self.n, self.address, self.retries, self.cpus, self.gpus = n, address, retries, cpus, gpus

    def __call__(self, lm: Any, facts: Sequence[Any], config: Any) -> Iterator[dict[str, Any]]:
        runs = [list(facts[i : i + RUN]) for i in range(0, len(facts), RUN)]
        if not runs:
            return
        with workers(lm, self.n, self.address, most=len(runs), retries=self.retries, cpus=self.cpus, gpus=self.gpus) as pool:
            for records in pool.pool().map(lambda actor, run: actor.trace.remote(run, config), runs):
                yield from records
