"""CounterFact (Meng et al. 2022): load both forms and score an edit as the ROME paper defines it.

- Efficacy: on the rewrite prompt, does the new answer beat the true one? Answers are compared by their
  token-mean log-probability, teacher-forced, as the reference evaluation does (``compare="mean"``, the
  default); ``compare="sum"`` compares summed log-probabilities instead, which favours the shorter answer
  and does not reproduce the papers' tables (the summary names the comparison used).
- Paraphrase: the same on paraphrases. Neighbourhood: on prompts about other subjects that share the
  true answer, does the true answer beat the new one?
- Magnitudes: the differences of token-mean probabilities exp(mean log-prob).
- Neighbourhood kept: the share of the neighbourhood answers' tokens (teacher-forced on the true answer)
  whose top-1 prediction is the unedited model's (EasyEdit's locality; zsRE's specificity): unlike NS, it
  counts any drift of the neighbours, not only a flip to the new answer (100 for the unedited model).
- Score S: harmonic mean of ES, PS, NS. Generation entropy GE: n-gram entropy of free generations.

The short form (``../shared/data/counterfact-*.json``: one rephrase and one neighbourhood prompt) has no
generation prompts: its rewrite and rephrase prompts are used for GE instead.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from modeledit.errors import ModelEditError
from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request
from modeledit.llm.score import ngram_entropy, score_continuations
from modeledit.report import parse_records, read_json_list
from modeledit.report import harmonic_mean, mean

METRICS = (
    "efficacy_score",
    "efficacy_magnitude",
    "paraphrase_score",
    "paraphrase_magnitude",
    "neighborhood_score",
    "neighborhood_magnitude",
    "neighborhood_kept",
    "score",
    "generation_entropy",
)


@dataclass(frozen=True)
class CounterFactCase:
    case_id: int
    request: Request
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[str, ...]
    generation_prompts: tuple[str, ...] = field(default=())


def _answer(s: str) -> str:
    """CounterFact writes answers without their leading space; as continuations they need one."""
    return s if s.startswith(" ") else " " + s


def _case(i: int, rec: dict[str, Any]) -> CounterFactCase:
    if "requested_rewrite" in rec:  # the original, long form
        rw = rec["requested_rewrite"]
        req = Request(rw["prompt"], rw["subject"], _answer(rw["target_new"]["str"]), _answer(rw["target_true"]["str"]))
        return CounterFactCase(
            int(rec["case_id"]),
            req,
            tuple(rec.get("paraphrase_prompts", ())),
            tuple(rec.get("neighborhood_prompts", ())),
            tuple(rec.get("generation_prompts", ())),
        )
    req = Request.from_text(rec["prompt"], rec["subject"], _answer(rec["target_new"]), _answer(rec["ground_truth"]))
    para = tuple(p for p in [rec.get("rephrase_prompt")] if p)
    return CounterFactCase(
        int(rec["case_id"]),
        req,
        para,
        tuple(p for p in [rec.get("locality_prompt")] if p),
        (req.text, *para),
    )


def load_counterfact(path: str | Path, limit: int | None = None) -> list[CounterFactCase]:
    """Read CounterFact cases, the long (original) or the short form, keeping the file's order."""
    records = read_json_list(path, "CounterFact", "a counterfact JSON file (e.g. ../shared/data/counterfact-val.json)")
    return parse_records(path, records[:limit] if limit else records, _case, "a CounterFact case")


class CounterFact:
    """The CounterFact benchmark for the evaluation loop: cases, their requests, per-case scores and their summary."""

    name = "counterfact"

    def __init__(self, gen_tokens: int = 0, gen_seed: int = 0, compare: str = "mean"):
        if compare not in ("mean", "sum"):
            raise ModelEditError(f"compare must be 'mean' (the papers' token-mean log-probability) or 'sum', not {compare!r}")
        self.gen_tokens = gen_tokens
        self.gen_seed = gen_seed
        self.compare = compare

    def config(self) -> dict[str, Any]:
        return {"gen_tokens": self.gen_tokens, "gen_seed": self.gen_seed, "answer_comparison": self.compare}

    def load(self, path: str | Path, limit: int | None = None) -> list[CounterFactCase]:
        return load_counterfact(path, limit)

    def requests(self, case: CounterFactCase) -> list[Request]:
        return [case.request]

    def score(self, lm: LanguageModel, case: CounterFactCase, reference: dict[str, Any] | None = None) -> dict[str, Any]:
        """Case-level metrics as fractions (the summary multiplies by 100); ``reference``: the unedited
        model's score of the case (None when scoring it)."""
        new, true = case.request.target, case.request.target_true
        groups = {
            "efficacy": [case.request.text],
            "paraphrase": list(case.paraphrase_prompts),
            "neighborhood": list(case.neighborhood_prompts),
        }
        pairs = [(p, a) for ps in groups.values() for p in ps for a in (new, true)]
        scored = iter(score_continuations(lm, pairs))
        out: dict[str, Any] = {}
        top1: list[list[int]] = []
        for g, prompts in groups.items():
            wins, mags = [], []
            for _ in prompts:
                s_new, s_true = next(scored), next(scored)
                if g == "neighborhood":
                    top1.append(list(s_true.top1))
                v_new, v_true = (s_new.mean_logprob, s_true.mean_logprob) if self.compare == "mean" else (s_new.logprob, s_true.logprob)
                if g == "neighborhood":
                    wins.append(float(v_true > v_new))
                    mags.append(s_true.mean_prob - s_new.mean_prob)
                else:
                    wins.append(float(v_new > v_true))
                    mags.append(s_new.mean_prob - s_true.mean_prob)
            out[f"{g}_score"] = mean(wins)
            out[f"{g}_magnitude"] = mean(mags)
        same = top1 if reference is None else reference.get("neighborhood_top1")
        if top1 and same is not None:
            out["neighborhood_kept"] = mean(sum(a == b for a, b in zip(t, u)) / len(t) for t, u in zip(top1, same))
        out["neighborhood_top1"] = top1
        if self.gen_tokens > 0 and case.generation_prompts:
            seed = self.gen_seed + zlib.crc32(str(case.case_id).encode())
            gens = lm.generate(list(case.generation_prompts), self.gen_tokens, do_sample=True, top_k=5, seed=seed)
            texts = [p + g for p, g in zip(case.generation_prompts, gens)]
            out["generation_entropy"] = ngram_entropy(texts)
            out["generations"] = texts
        return out

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Means over cases, ×100, for the unedited (pre) and edited (post) model."""
        summary: dict[str, Any] = {}
        for phase in ("pre", "post"):
            # a metric no case measured (GE without --gen-tokens) is left out, not written as NaN
            m = {k: 100 * mean(r[phase][k] for r in records if k in r[phase])
                 for k in METRICS if k != "score" and any(k in r[phase] for r in records)}
            m["score"] = harmonic_mean([m["efficacy_score"], m["paraphrase_score"], m["neighborhood_score"]])
            summary[phase] = {k: m[k] for k in METRICS if k in m}
        summary["answer_comparison"] = self.compare
        return summary
