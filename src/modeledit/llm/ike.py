"""IKE: In-context Knowledge Editing (Zheng et al., EMNLP 2023) — an edit with no gradient and no weight change.

The new fact and k demonstrations go into the context. Each demonstration shows a fact of a pool
(CounterFact cases) and a prompt answered as the edited model should answer it, in the paper's template
``New Fact: {fact} {new}\\nPrompt: {prompt} {answer}\\n\\n``, of three kinds:

- copy: the fact's own prompt, with the new answer;
- update: a paraphrase of the prompt, with the new answer;
- retain: a prompt about another subject (its neighbourhood prompt), with its unchanged answer.

For each edited fact, the demonstrations of each kind most similar to the query ``New Fact: <fact>
<new>\\nPrompt: <fact>`` (all-MiniLM-L6-v2 embeddings, the pool's computed once and cached) are taken in the
paper's ratio copy : update : retain = 1 : 3 : 4, k = 32 in all, and ordered by similarity with the most
similar last, nearest the query; then, as the paper's code (and EasyEdit) do, the edited fact's own copy
demonstration (``own_fact``; counted beyond k). ``retain=False`` is the paper's ablation (specificity
collapses without them). Pool records about the edited fact itself are never shown. When the model's
context cannot hold k demonstrations, the least similar are dropped and the edit's report says how many
were kept.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from modeledit.datafiles import find_data
from modeledit.errors import DataError, RequestError
from modeledit.llm.context_edit import ContextEdit, ContextEntry, fact_context, fact_sentence
from modeledit.llm.method import LLMMethod
from modeledit.llm.cache import cache_dir
from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request

log = logging.getLogger(__name__)

KINDS = ("copy", "update", "retain")
QUERY_ROOM = 64  # tokens left in the context for the prompt and its answer


@dataclass(frozen=True)
class IKEHyperParams:
    k: int = 32  # demonstrations per fact
    ratio: tuple[int, int, int] = (1, 3, 4)  # copy : update : retain
    retain: bool = True  # False: the paper's ablation without retain demonstrations
    pool: str | None = None  # a CounterFact file; None: counterfact-train.json in $MODELEDIT_DATA or ../shared/data
    own_fact: bool = True  # the edited fact's own copy demonstration last (the paper's code appends it beyond k)

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise RequestError("k", f"must be a positive number of demonstrations, got {self.k!r}")
        if len(self.ratio) != 3 or any(not isinstance(r, int) or r < 0 for r in self.ratio) or not any(self.ratio):
            raise RequestError("ratio", f"give three non-negative whole numbers copy,update,retain (e.g. 1,3,4), got {self.ratio!r}")


def default_pool() -> Path:
    """counterfact-train.json in the data directory ($MODELEDIT_DATA or ../shared/data)."""
    return find_data("counterfact-train.json", "IKE's demonstration pool", "give one with --set pool=PATH (any CounterFact file)")


@dataclass
class Pool:
    """The demonstrations of a CounterFact file, by kind, with their unit embeddings and their facts."""

    texts: dict[str, list[str]]
    emb: dict[str, torch.Tensor]
    facts: dict[str, list[tuple[str, str]]]  # (prompt, subject) of the pool fact behind each demonstration


def demonstration(fact: str, prompt: str, answer: str) -> str:
    return f"New Fact: {fact}\nPrompt: {prompt}{answer}\n\n"


def build_pool(path: str | Path, embedder) -> Pool:
    from modeledit.llm.bench.counterfact import load_counterfact

    cases = load_counterfact(path)
    texts: dict[str, list[str]] = {k: [] for k in KINDS}
    facts: dict[str, list[tuple[str, str]]] = {k: [] for k in KINDS}
    for c in cases:
        r = c.request
        fact = r.text + r.target
        key = (r.prompt, r.subject)
        texts["copy"].append(demonstration(fact, r.text, r.target))
        facts["copy"].append(key)
        for p in c.paraphrase_prompts:
            texts["update"].append(demonstration(fact, p.strip(), r.target))
            facts["update"].append(key)
        if r.target_true:
            for p in c.neighborhood_prompts:
                texts["retain"].append(demonstration(fact, p.strip(), r.target_true))
                facts["retain"].append(key)
    if not texts["copy"]:
        raise DataError(f"{path}: IKE's pool holds no CounterFact case")
    root = cache_dir() / "ike-pool"
    return Pool(texts, {k: embedder.cached(v, root) if v else torch.zeros(0, 384) for k, v in texts.items()}, facts)


class IKE(LLMMethod):
    name = "ike"
    HyperParams = IKEHyperParams
    joint = True

    def __init__(self, hparams=None, **overrides):
        super().__init__(hparams, **overrides)
        self._pool: Pool | None = None
        self._embedder = None

    def counts(self) -> dict[str, int]:
        """Demonstrations of each kind: k shared out in the ratio (the retain share dropped when ablated)."""
        ratio = dict(zip(KINDS, self.hparams.ratio))
        if not self.hparams.retain:
            ratio["retain"] = 0
        total = sum(ratio.values())
        if total == 0:
            raise RequestError("ratio", "no demonstrations left: give copy or update a share")
        out = {k: self.hparams.k * v // total for k, v in ratio.items()}
        for k in sorted(ratio, key=lambda k: -ratio[k]):  # the rounding remainder to the largest shares
            if sum(out.values()) >= self.hparams.k:
                break
            if ratio[k]:
                out[k] += 1
        return out

    def prepare(self, lm: LanguageModel, progress=None) -> None:
        self.pool()

    def pool(self) -> Pool:
        if self._pool is None:
            from modeledit.sentences import SentenceEmbedder

            path = Path(self.hparams.pool) if self.hparams.pool else default_pool()
            self._embedder = SentenceEmbedder()
            self._pool = build_pool(path, self._embedder)
            for kind, want in self.counts().items():
                if want > len(self._pool.texts[kind]):
                    raise RequestError("k", f"the pool {path} holds {len(self._pool.texts[kind])} {kind} demonstrations, "
                                            f"fewer than the {want} asked for: lower k or give a larger pool")
        return self._pool

    def edit_batch(self, lm: LanguageModel, requests: list[Request], progress=None) -> ContextEdit:
        pool = self.pool()
        counts = self.counts()
        queries = [f"New Fact: {fact_sentence(r.to_dict())}\nPrompt: {r.text}" for r in requests]
        q = self._embedder(queries)
        limit = _context_limit(lm)
        demos, kept = [], []
        for i, r in enumerate(requests):
            picked: list[tuple[float, str]] = []
            for kind, want in counts.items():
                if not want:
                    continue
                sim = pool.emb[kind] @ q[i]
                same = [j for j, f in enumerate(pool.facts[kind]) if f == (r.prompt, r.subject)]
                if same:
                    sim[same] = -float("inf")  # never show the edited fact's pool record
                top = torch.topk(sim, want)
                picked += [(float(s), pool.texts[kind][j]) for s, j in zip(top.values, top.indices.tolist())]
            ordered = [t for _, t in sorted(picked, key=lambda x: x[0])]  # most similar last, nearest the query
            own = demonstration(fact_sentence(r.to_dict()), r.text, r.target) if self.hparams.own_fact else None
            fitted = _fit(lm, r.to_dict(), ordered, limit, own)
            demos.append(fitted)
            kept.append(len(fitted))
            if progress:
                progress(i + 1, len(requests))
        wanted = self.hparams.k + int(self.hparams.own_fact)
        if min(kept) < wanted:
            log.warning("the model's context (%d tokens) holds only %d of the %d demonstrations", limit, min(kept), wanted)
        info = {
            "n_requests": len(requests),
            "demonstrations": wanted,
            "demonstrations_kept": min(kept),
            "per_kind": counts,
            "context_limit_tokens": limit,
            "gradient_steps": 0,
            "per_request": {"demonstrations_kept": kept},
        }
        entry = ContextEntry(self.name, asdict(self.hparams), [r.to_dict() for r in requests], demos, info)
        return ContextEdit([entry], {"model": lm.name, "model_identity": lm.identity}, embedder=self._embedder)


def _context_limit(lm: LanguageModel) -> int:
    n = getattr(lm.config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else 2048


def _fit(lm: LanguageModel, request: dict, demos: Sequence[str], limit: int, own: str | None = None) -> list[str]:
    """The most similar demonstrations (the last ones) that fit in the context with room for a query, and
    the fact's own demonstration (``own``) after them."""
    tok = lambda s: len(lm.tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    room = limit - QUERY_ROOM - tok(fact_context(request, [])) - (tok(own) if own else 0)
    if room < 0 or (demos and tok(demos[-1]) > room):
        raise RequestError("k", f"the model's context ({limit} tokens) cannot hold even one demonstration with the fact "
                                "and a prompt: use a model with a longer context")
    kept: list[str] = []
    for d in reversed(demos):
        room -= tok(d)
        if room < 0:
            break
        kept.insert(0, d)
    return kept + ([own] if own else [])
