"""One worker (a Ray actor): it loads the model once, as the driver loaded it, and then computes what it is
given — the records of evaluation batches, the sums of a corpus shard's key products, the traces of facts —
with the same functions one process uses. It writes nothing: it returns its results to the driver."""

from __future__ import annotations

import os
from typing import Any, Sequence

from modeledit.errors import ModelEditError, ScaleError


class Worker:
    def __init__(self, spec: dict[str, Any], identity: str, threads: int | None = None):
        self.error: ModelEditError | None = None
        self.method: Any = None
        if threads:  # the driver's count: a matmul's bits depend on it (see runtime.workers)
            import torch

            torch.set_num_threads(threads)
        try:
            from modeledit.llm.model import load_model

            self.lm = load_model(**spec)
            if self.lm.identity != identity:
                raise ScaleError(f"a worker loaded {spec['name']!r} with other weights than the driver's (identity {self.lm.identity}, "
                                 f"not {identity}): give every node the same model files")
        except ModelEditError as exc:  # raised by the worker's first task, so that the driver sees it as it is
            self.error = exc

    def _ready(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.lm

    def pid(self) -> int:
        self._ready()
        return os.getpid()

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def evaluate(self, method_class: type, hparams: Any, bench: Any, group: Sequence[tuple[int, list[Any]]], todo: set,
                 known_pre: dict[Any, Any]) -> list[dict[str, Any]]:
        """The records of one edit group's cases still to do (``evaluation.batch_records``)."""
        from modeledit.evaluation import batch_records

        lm = self._ready()
        if self.method is None or type(self.method) is not method_class or self.method.hparams != hparams:
            self.method = method_class(hparams)
            self.method.prepare(lm)  # the driver prepared it: statistics come from the shared cache
        todo_of = lambda batch: [c for c in batch if c.case_id in todo]  # noqa: E731
        return list(batch_records(lm, self.method, bench, group, todo_of, known_pre))

    def moment_sums(self, layers: Sequence[int], batches: Sequence[Sequence[Sequence[int]]]) -> tuple[dict[int, Any], int]:
        """Σ k kᵀ (float64, as numpy arrays) of one shard of the corpus's batches for every layer, in one pass."""
        from modeledit.llm.stats import moment_sums

        sums, count = moment_sums(self._ready(), layers, batches)
        return {l: s.cpu().numpy() for l, s in sums.items()}, count

    def trace(self, facts: Sequence[Any], config: Any) -> list[dict[str, Any]]:
        """The records of a run of facts (``trace_many.fact_records``)."""
        from modeledit.llm.trace_many import fact_records

        return list(fact_records(self._ready(), facts, config))
