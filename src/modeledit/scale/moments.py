"""Key statistics on Ray workers: ``second_moments(lm, layers, cfg, collect=RayMoments(n))``.

The driver tokenises the corpus and cuts it into the very batches one process would run
(``stats._batches``), deals them into one shard per worker (about equal token counts), and each worker sums
Σ k kᵀ in float64 over its shard for every requested layer in one pass (``stats.moment_sums``); the driver
adds the shards' sums in shard order and divides by the token count. Each batch is computed as in one
process, so the result differs from one process's only by the order of float64 additions; it is cached
under the same key (``second_moments`` does that).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from modeledit.scale.runtime import workers


def shards(batches: Sequence[Sequence[Sequence[int]]], n: int) -> list[list[Sequence[Sequence[int]]]]:
    """``batches`` dealt into at most ``n`` runs of consecutive batches with about equal token counts."""
    total = sum(len(s) for b in batches for s in b)
    out: list[list[Sequence[Sequence[int]]]] = [[]]
    seen = 0
    for b in batches:
        if out[-1] and seen >= total * len(out) / n and len(out) < n:
            out.append([])
        out[-1].append(b)
        seen += sum(map(len, b))
    return [s for s in out if s]


class RayMoments:
    """``collect`` for ``second_moments``: the one pass spread over ``n`` workers (a local Ray runtime, or
    the cluster at ``address``). A worker that dies is restarted and its shard summed again (``retries``)."""

    def __init__(self, n: int | None = None, address: str | None = None, *, retries: int = 1,
                 cpus: float | None = None, gpus: float | None = None):
        self.n, self.address, self.retries, self.cpus, self.gpus = n, address, retries, cpus, gpus

    def __call__(self, lm: Any, layers: Sequence[int], corpus: Any, cfg: Any,
                 progress: Callable[[int, int], None] | None = None) -> dict[int, tuple[torch.Tensor, int]]:
        from modeledit.llm.stats import _batches, _tokenised

        layers = sorted(set(layers))
        batches = _batches(_tokenised(lm, corpus, cfg), cfg.batch_tokens)
        total = sum(len(s) for b in batches for s in b)
        sums: dict[int, np.ndarray] = {}
        count = done = 0
        with workers(lm, self.n, self.address, most=len(batches), retries=self.retries, cpus=self.cpus, gpus=self.gpus) as pool:
            parts = shards(batches, len(pool.actors))
            for (part, n), shard in zip(pool.pool().map(lambda actor, s: actor.moment_sums.remote(layers, s), parts), parts):
                for l in layers:  # in shard order: the same additions every run
                    if l in sums:
                        sums[l] += part[l]
                    else:
                        sums[l] = np.array(part[l], dtype=np.float64)  # a writable copy of the shared result
                count += n
                done += sum(len(s) for b in shard for s in b)
                if progress:
                    progress(done, total)
        return {l: (torch.from_numpy(sums[l]) / max(count, 1), count) for l in layers}
