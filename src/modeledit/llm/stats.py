"""Second-moment statistics C = E[k kᵀ] of the inputs k of MLP output projections over a text corpus.

All requested layers are collected in one pass; the pass stops after the deepest of them (upper layers
and the unembedding are never computed). Texts are tokenised once, sorted by length and batched under a
token budget, so padding costs almost nothing; padded positions are masked out of the sums. Products are
taken in float32 per batch and summed in float64. Results are cached on disk, keyed by everything that
changes them: the model's weights, the layer, the corpus, the token count and the context length.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from modeledit.llm.corpus import Corpus, resolve_corpus
from modeledit.llm.devices import module_device
from modeledit.llm.hooks import Hooks
from modeledit.llm.cache import cache_dir
from modeledit.llm.model import LanguageModel
from modeledit.llm.tokens import pad_right

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (tokens done so far, tokens in all)


@dataclass(frozen=True)
class StatsConfig:
    """How the statistics are estimated. The ROME paper used 100k Wikipedia texts; offline we default to
    100k tokens of the embedded Wikipedia leads (C is 1536x1536 for SmolLM2: ~65 samples per dimension)."""

    corpus: str | tuple[str, ...] | None = None  # None: the embedded Wikipedia leads
    n_tokens: int = 100_000
    max_len: int = 256  # tokens per text (longer texts are cut)
    batch_tokens: int = 8192  # token budget of one forward pass


def _cache_file(lm: LanguageModel, digest: str, corpus: Corpus, layer: int, cfg: StatsConfig) -> Path:
    name = lm.layout.mlp_out[layer]
    return cache_dir() / "stats" / digest / f"{corpus.id}-{cfg.n_tokens}tok-{cfg.max_len}ctx" / f"{name}.safetensors"


def _tokenised(lm: LanguageModel, corpus: Corpus, cfg: StatsConfig) -> list[list[int]]:
    seqs, total = [], 0
    for text in corpus.texts():
        ids = lm.tokenizer(text, truncation=True, max_length=cfg.max_len)["input_ids"]
        if len(ids) < 2:
            continue
        ids = ids[: cfg.n_tokens - total]
        seqs.append(ids)
        total += len(ids)
        if total >= cfg.n_tokens:
            break
    if total < cfg.n_tokens:
        log.warning("corpus %s has only %d tokens (asked for %d)", corpus.id, total, cfg.n_tokens)
    return seqs


def _batches(seqs: list[list[int]], budget: int) -> list[list[list[int]]]:
    """Group length-sorted sequences so that (rows x longest) stays under the token budget."""
    out, cur = [], []
    for s in sorted(seqs, key=len):
        if cur and (len(cur) + 1) * len(s) > budget:
            out.append(cur)
            cur = []
        cur.append(s)
    if cur:
        out.append(cur)
    return out


@torch.no_grad()
def collect_second_moments(
    lm: LanguageModel, layers: Sequence[int], corpus: Corpus, cfg: StatsConfig, progress: Progress | None = None
) -> dict[int, tuple[torch.Tensor, int]]:
    """One pass over the corpus: {layer: (E[k kᵀ] as float64, number of tokens)}."""
    batches = _batches(_tokenised(lm, corpus, cfg), cfg.batch_tokens)
    sums, count = moment_sums(lm, layers, batches, progress)
    return {l: (sums[l] / max(count, 1), count) for l in sums}


@torch.no_grad()
def moment_sums(
    lm: LanguageModel, layers: Sequence[int], batches: Sequence[Sequence[Sequence[int]]], progress: Progress | None = None
) -> tuple[dict[int, torch.Tensor], int]:
    """Σ k kᵀ (float64, on each layer's device) over the tokens of ``batches`` (from ``_batches``), for every
    layer in one pass, and the number of tokens. Sums of shards of the batches add up to the sums of all of
    them (``scale.moments`` spreads the shards over workers)."""
    layers = sorted(set(layers))
    total = sum(len(s) for b in batches for s in b)
    dim = lm.layout.intermediate_size
    where = {l: module_device(lm.model, lm.layout.mlp_out[l]) for l in layers}  # a device map may spread them
    sums = {l: torch.zeros(dim, dim, dtype=torch.float64, device=where[l]) for l in layers}
    count, done = 0, 0
    for batch in batches:
        ids, mask = pad_right([list(s) for s in batch], lm.tokenizer.pad_token_id, lm.device)
        with Hooks(lm.model) as hooks:
            recs = {l: hooks.record(lm.layout.mlp_out[l], inputs=True, outputs=False) for l in layers}
            hooks.stop_after(lm.layout.mlp_out[layers[-1]])
            lm.run(ids, attention_mask=mask)
        keep = mask.bool()
        for l in layers:
            k = recs[l].input[keep.to(recs[l].input.device)].to(torch.float32)
            sums[l] += (k.T @ k).to(device=where[l], dtype=torch.float64)
        count += int(keep.sum())
        done += sum(map(len, batch))
        if progress:
            progress(done, total)
    return sums, count


def second_moments(
    lm: LanguageModel,
    layers: Sequence[int],
    cfg: StatsConfig = StatsConfig(),
    progress: Progress | None = None,
    collect: Callable[..., dict[int, tuple[torch.Tensor, int]]] | None = None,
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] for each layer (on the layer's device), from the disk cache where present; the missing layers
    in one pass, by ``collect`` (default ``collect_second_moments``; ``scale.moments.RayMoments`` spreads the
    pass over workers: the same result, cached under the same key)."""
    collect = collect or collect_second_moments
    corpus = resolve_corpus(cfg.corpus)
    digest = lm.identity
    out: dict[int, torch.Tensor] = {}
    missing = []
    for l in sorted(set(layers)):
        f = _cache_file(lm, digest, corpus, l, cfg)
        if f.exists():
            out[l] = load_file(str(f))["mom2"].to(module_device(lm.model, lm.layout.mlp_out[l]))
        else:
            missing.append(l)
    if missing:
        log.info("collecting statistics for layers %s over %d tokens of %s", missing, cfg.n_tokens, corpus.id)
        for l, (c, n) in collect(lm, missing, corpus, cfg, progress).items():
            f = _cache_file(lm, digest, corpus, l, cfg)
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f.name + ".tmp")
            meta = {k: str(v) for k, v in asdict(cfg).items()} | {"tokens": str(n), "corpus": corpus.id}
            save_file({"mom2": c.to(torch.float32).cpu().contiguous()}, str(tmp), metadata=meta)
            tmp.replace(f)
            out[l] = c.to(module_device(lm.model, lm.layout.mlp_out[l]), torch.float32)
    return out

