"""Causal tracing over many known facts: the average indirect effect per layer, and a layer to edit.

For each fact of a known-facts file (ROME's ``known_1000.json``) that the model gets right (its greedy
continuation is the answer), trace the last subject token and the last prompt token, for hidden states,
MLP and attention. The average indirect effect (restored − corrupted probability) per layer at the last
subject token is the paper's Figure 2 aggregate; where the MLP's peaks is ROME's edit layer. Records stream
to ``cases.jsonl`` (facts the model does not know are recorded too), so an interrupted run resumes.
"""

from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from modeledit.errors import DataError
from modeledit.llm.model import LanguageModel
from modeledit.llm.tokens import encode_continuation, pad_right
from modeledit.llm.trace import trace
from modeledit.llm.trace_engine import KINDS, TraceConfig, default_window
from modeledit.llm.trace_prompt import prepare_prompt, subject_noise_level
from modeledit.report import CaseLog, mean, read_json_list, start_run, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownFact:
    known_id: int | str
    prompt: str  # subject written out
    subject: str
    answer: str  # as it continues the prompt (leading space included)


def load_known(path: str | Path) -> list[KnownFact]:
    """Facts in ROME's known_1000 format: ``known_id``, ``prompt``, ``subject``, ``attribute``."""
    rows = read_json_list(path, "known-facts", "ROME's known_1000.json (e.g. ../shared/data/known_1000.json)")
    facts = []
    for i, r in enumerate(rows):
        missing = [k for k in ("prompt", "subject", "attribute") if not isinstance(r, dict) or not r.get(k)]
        if missing:
            raise DataError(f"{path}: fact {i} has no {', '.join(missing)} (each fact needs prompt, subject, attribute)")
        if r["subject"] not in r["prompt"]:
            raise DataError(f"{path}: fact {i}: subject {r['subject']!r} does not occur in its prompt {r['prompt']!r}")
        answer = r["attribute"] if r["attribute"].startswith(" ") else " " + r["attribute"]
        facts.append(KnownFact(r.get("known_id", i), r["prompt"], r["subject"], answer))
    return facts


@torch.no_grad()
def knows(lm: LanguageModel, facts: Sequence[KnownFact], batch_size: int = 32) -> list[bool]:
    """Whether the model's greedy continuation of each prompt is its answer (every token)."""
    out = []
    for b in range(0, len(facts), batch_size):
        enc = [encode_continuation(lm.tokenizer, f.prompt, f.answer) for f in facts[b : b + batch_size]]
        ids, mask = pad_right([p + t[:-1] for p, t in enc], lm.tokenizer.pad_token_id, lm.device)
        hidden = lm.run(ids, attention_mask=mask)[0]
        for i, (p, t) in enumerate(enc):
            out.append(lm.logits(hidden[i, len(p) - 1 : len(p) - 1 + len(t)]).argmax(-1).tolist() == t)
    return out


def trace_many(
    lm: LanguageModel,
    facts: Sequence[KnownFact],
    out_dir: str | Path,
    *,
    limit: int | None = None,
    config: TraceConfig = TraceConfig(),
    progress: Callable[[int, int], None] | None = None,
    compute: Callable[..., Iterator[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Trace, in order, the facts the model knows until ``limit`` of them are traced (all if None);
    write ``cases.jsonl`` and ``aggregate.json``; return the aggregate. ``compute``: what gives the facts'
    records, called as ``fact_records`` is (default: here; ``scale.trace.RayTraces``: on Ray workers)."""
    noise = config.noise if config.noise is not None else subject_noise_level(lm, factor=config.noise_factor)
    window = config.window or default_window(lm.layout.n_layers)
    run = {"kind": "trace-many", "model": lm.name, "model_identity": lm.identity,
           "config": {**asdict(config), "noise": noise, "window": window}}
    out = start_run(out_dir, run)
    caselog = CaseLog(out / "cases.jsonl", key="known_id")
    fixed = TraceConfig(**{**asdict(config), "noise": noise, "window": window})
    wanted = limit if limit is not None else len(facts)
    traced = sum(1 for r in caselog.records if r.get("known"))
    todo = [f for f in facts if f.known_id not in caselog.done]
    if caselog.records:
        log.info("resuming: %d facts checked, %d traced", len(caselog.records), traced)
    if progress:
        progress(min(traced, wanted), wanted)
    # the one seam for spreading the work: ``compute`` gives the records of the facts in order (here, or on
    # workers: ``scale.trace``); this process alone writes them, up to the limit
    if traced < wanted:
        with closing((compute or fact_records)(lm, todo, fixed)) as stream:
            for record in stream:
                caselog.write(record)
                if record["known"]:
                    traced += 1
                    if progress:
                        progress(traced, wanted)
                    if traced >= wanted:
                        break
    aggregate = aggregate_traces(caselog.records, lm.layout.n_layers)
    aggregate.update(model=lm.name, noise=noise, window=window, samples=config.samples,
                     facts_checked=len(caselog.records))
    write_json(out / "aggregate.json", aggregate)
    return aggregate


def fact_records(lm: LanguageModel, facts: Sequence[KnownFact], config: TraceConfig) -> Iterator[dict[str, Any]]:
    """The record of each fact, in order, computed as it is asked for: whether the model knows it (checked
    32 facts at a time) and, if so, its trace at the last subject token and the last token (``config`` with
    its noise and window fixed)."""
    for b in range(0, len(facts), 32):
        batch = facts[b : b + 32]
        for fact, known in zip(batch, knows(lm, batch)):
            record: dict[str, Any] = {"known_id": fact.known_id, "prompt": fact.prompt, "subject": fact.subject,
                                      "answer": fact.answer, "known": known}
            if known:
                tp = prepare_prompt(lm, fact.prompt, fact.subject, fact.answer)
                subject_last, last = tp.subject_span[1] - 1, tp.n_prompt - 1
                res = trace(lm, fact.prompt, fact.subject, fact.answer, config, rows=[subject_last, last])
                record.update(
                    tokens=res.tokens, subject_span=res.subject_span, clean_prob=res.clean_prob,
                    corrupted_prob=res.corrupted_prob, seconds=res.seconds,
                    subject_last={k: g[res.rows.index(subject_last)] for k, g in res.grids.items()},
                    last={k: g[res.rows.index(last)] for k, g in res.grids.items()},
                )
            yield record


def aggregate_traces(records: Sequence[dict[str, Any]], n_layers: int) -> dict[str, Any]:
    """Average indirect effect (restored − corrupted probability) per layer, at the last subject token
    and at the last token, over the traced facts; and the layer where the MLP's effect at the last
    subject token peaks."""
    traced = [r for r in records if r.get("known")]
    if not traced:
        raise DataError("no fact was traced: the model knows none of the facts checked (raise --limit or use other facts)")
    agg: dict[str, Any] = {
        "n_traced": len(traced),
        "clean_prob_mean": mean(r["clean_prob"] for r in traced),
        "corrupted_prob_mean": mean(r["corrupted_prob"] for r in traced),
        "seconds_per_fact_mean": mean(r["seconds"] for r in traced),
    }
    for where in ("subject_last", "last"):
        agg[where] = {
            kind: [mean(r[where][kind][layer] - r["corrupted_prob"] for r in traced) for layer in range(n_layers)]
            for kind in KINDS
        }
    mlp = agg["subject_last"]["mlp"]
    peak = max(range(n_layers), key=lambda i: mlp[i])
    agg["mlp_peak_layer"] = peak
    agg["mlp_peak_effect"] = mlp[peak]
    return agg
