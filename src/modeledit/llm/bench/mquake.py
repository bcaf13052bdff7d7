"""MQuAKE (Zhong et al. 2023): do edits carry through questions that chain facts?

A case holds edits (``requested_rewrite``: a cloze prompt, its subject, the new and the true answer), three
phrasings of one multi-hop question, its original and new answer (with aliases), and the single hops of
the original and of the new path (a question, a cloze and an answer each). Scored as the paper does,
greedy decoding, answers matched after normalising case, punctuation and articles (``answer.py``):

- edit-wise: each edited fact's cloze prompt, continued, starts with its answer;
- multi-hop: any of the three questions is answered with the answer or an alias (few-shot prompting with
  ``multihop-prompts.txt``, or chain-of-thought with ``multihop-cot-prompts.txt``);
- hop-wise: multi-hop correct *and* every single hop of the path answered correctly (each asked after
  its relation's few-shot examples, ``rel-prompts.json``).

Each phase is scored against both answers; the summary reads the unedited model (``pre``) on the
original answers and path, and the edited model (``post``) on the new ones. The prompt files are the
paper's, read from ``mquake-prompts/`` beside the data file (or ``prompts_dir``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from modeledit.errors import DataError
from modeledit.llm.answer import ask, matches
from modeledit.llm.request import Request
from modeledit.report import mean, parse_records, read_json_list

PROMPT_FILES = ("multihop-prompts.txt", "multihop-cot-prompts.txt", "rel-prompts.json")


@dataclass(frozen=True)
class Hop:
    question: str
    relation: str
    answers: tuple[str, ...]  # the answer, then its aliases


@dataclass(frozen=True)
class MQuAKECase:
    case_id: int
    requests: tuple[Request, ...]
    edit_answers: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # per edit: (new + aliases, true + aliases)
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    new_answers: tuple[str, ...]
    hops: tuple[Hop, ...]
    new_hops: tuple[Hop, ...]


def _space(s: str) -> str:
    return s if s.startswith(" ") else " " + s


def _hops(rec: dict[str, Any], key: str, triples: str) -> tuple[Hop, ...]:
    rels = [t[1] for t in rec["orig"][triples]]
    hops = rec[key]
    if len(rels) != len(hops):
        raise DataError(f"{len(hops)} {key} but {len(rels)} {triples}")
    return tuple(Hop(h["question"], r, (h["answer"], *h.get("answer_alias", ()))) for h, r in zip(hops, rels))


def _case(i: int, rec: dict[str, Any]) -> MQuAKECase:
    rewrites = rec["requested_rewrite"]
    if not rewrites or len(rec["questions"]) == 0:
        raise DataError("a case needs at least one requested_rewrite and one question")
    hops, new_hops = _hops(rec, "single_hops", "triples"), _hops(rec, "new_single_hops", "new_triples")
    aliases = {h.answers[0]: h.answers for h in (*hops, *new_hops)}
    requests, edit_answers = [], []
    for r in rewrites:
        new, true = r["target_new"]["str"], r["target_true"]["str"]
        requests.append(Request(r["prompt"], r["subject"], _space(new), _space(true)))
        edit_answers.append((aliases.get(new, (new,)), aliases.get(true, (true,))))
    return MQuAKECase(
        int(rec.get("case_id", i)),
        tuple(requests),
        tuple(edit_answers),
        tuple(rec["questions"]),
        (rec["answer"], *rec.get("answer_alias", ())),
        (rec["new_answer"], *rec.get("new_answer_alias", ())),
        hops,
        new_hops,
    )


def load_mquake(path: str | Path, limit: int | None = None) -> list[MQuAKECase]:
    """MQuAKE cases in file order (the paper's format, e.g. ``../shared/data/mquake-hard.json``)."""
    records = read_json_list(path, "MQuAKE", "an MQuAKE JSON file (e.g. ../shared/data/mquake-hard.json)")
    return parse_records(path, records[:limit] if limit else records, _case,
                         "an MQuAKE case (requested_rewrite, questions, answer, new_answer, single_hops, new_single_hops, orig)")


class MQuAKE:
    """The MQuAKE benchmark for the evaluation loop."""

    name = "mquake"

    def __init__(self, cot: bool = False, prompts_dir: str | Path | None = None):
        self.cot = cot
        self.prompts_dir = Path(prompts_dir) if prompts_dir is not None else None
        self._prompts: dict[str, Any] | None = None

    def load(self, path: str | Path, limit: int | None = None) -> list[MQuAKECase]:
        if self.prompts_dir is None:
            self.prompts_dir = Path(path).parent / "mquake-prompts"
        cases = load_mquake(path, limit)
        self.prompts()  # a missing prompt file is said before any edit
        return cases

    def prompts(self) -> dict[str, Any]:
        if self._prompts is None:
            d = self.prompts_dir or Path("mquake-prompts")
            missing = [f for f in PROMPT_FILES if not (d / f).is_file()]
            if missing:
                raise DataError(f"MQuAKE's prompt files {', '.join(missing)} are not in {d}: pass prompts_dir "
                                "(CLI: --prompts DIR) holding MQuAKE's multihop-prompts.txt, multihop-cot-prompts.txt and rel-prompts.json")
            texts = {f: (d / f).read_text(encoding="utf-8") for f in PROMPT_FILES}
            try:
                rel = json.loads(texts["rel-prompts.json"])
                assert isinstance(rel, dict) and all(isinstance(v, str) for v in rel.values())
            except (json.JSONDecodeError, AssertionError) as exc:
                raise DataError(f"{d / 'rel-prompts.json'} should map relation ids to few-shot text") from exc
            self._prompts = {"multihop": texts["multihop-prompts.txt"], "cot": texts["multihop-cot-prompts.txt"], "rel": rel,
                             "sha": hashlib.sha256("".join(texts[f] for f in PROMPT_FILES).encode()).hexdigest()[:16]}
        return self._prompts

    def config(self) -> dict[str, Any]:
        return {"cot": self.cot, "prompts_sha": self.prompts()["sha"]}

    def requests(self, case: MQuAKECase) -> list[Request]:
        return list(case.requests)

    def score(self, lm: Any, case: MQuAKECase, reference: dict[str, Any] | None = None) -> dict[str, Any]:
        p = self.prompts()
        clozes = lm.generate([r.text for r in case.requests], 12, stop=("\n",))
        hops = (*case.hops, *case.new_hops)  # each hop after its own relation's examples
        hop_q, hop_shots = [h.question for h in hops], [p["rel"].get(h.relation, "") for h in hops]
        if self.cot:
            answers, traces = ask(lm, case.questions, p["cot"], cot=True)
            got, hop_traces = ask(lm, hop_q, hop_shots)
        else:  # one batch (one MeLLo loop) for all the case's questions
            k = len(case.questions)
            a, t = ask(lm, [*case.questions, *hop_q], [p["multihop"]] * k + hop_shots)
            answers, traces, got, hop_traces = a[:k], t[:k], a[k:], t[k:]
        out: dict[str, Any] = {
            "edit_new": [matches(g, new, prefix=True) for g, (new, _) in zip(clozes, case.edit_answers)],
            "edit_true": [matches(g, true, prefix=True) for g, (_, true) in zip(clozes, case.edit_answers)],
            "multihop_new": [matches(a, case.new_answers) for a in answers],
            "multihop_true": [matches(a, case.answers) for a in answers],
            "clozes": clozes,
            "answers": answers,
        }
        if not all(isinstance(t, str) for t in traces):  # an answering edit's record of how it answered
            out["traces"] = traces
        n = len(case.hops)
        out["hops_true"] = [matches(g, h.answers) for g, h in zip(got[:n], case.hops)]
        out["hops_new"] = [matches(g, h.answers) for g, h in zip(got[n:], case.new_hops)]
        out["hop_answers_true"], out["hop_answers_new"] = got[:n], got[n:]
        if not all(isinstance(t, str) for t in hop_traces):
            out["hop_traces"] = hop_traces
        return out

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """×100: edit-wise over edited facts, multi-hop and hop-wise over cases; ``pre`` on the original
        answers and path, ``post`` on the new; ``multihop_correct``: how many cases that is."""

        def phase(scores: list[dict[str, Any]], side: str) -> dict[str, Any]:
            facts = [x for s in scores for x in s[f"edit_{side}"]]
            multi = [any(s[f"multihop_{side}"]) for s in scores]
            hopwise = [m and all(s[f"hops_{side}"]) for m, s in zip(multi, scores)]
            return {"edit_wise": 100 * mean(facts), "multi_hop": 100 * mean(multi), "hop_wise": 100 * mean(hopwise),
                    "multihop_correct": sum(multi), "single_hops": 100 * mean(x for s in scores for x in s[f"hops_{side}"])}

        return {
            "pre": phase([r["pre"] for r in records], "true"),
            "post": phase([r["post"] for r in records], "new"),
            "answers": "pre: the original answers and path; post: the new answers and path",
        }
