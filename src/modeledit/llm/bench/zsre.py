"""zsRE (Levy et al. 2017) in the MEND format, scored as the editing papers score it.

A record gives a question about a subject (``src``), its answer (``answers``), a new answer to edit in
(``alt``), a paraphrase of the question (``rephrase``) and an unrelated question with its answer (``loc``,
``loc_ans``). The edit request is the question with the new answer as its continuation (" {alt}").

- Efficacy: top-1 token accuracy of the new answer after the question, teacher-forced (the share of its
  tokens that are the model's top-1 prediction given the question and the answer's tokens before them).
- Paraphrase: the same after the rephrased question.
- Specificity: on the unrelated question followed by its answer, the share of the answer's positions
  where the edited model's top-1 prediction is the unedited model's (so the unedited model has 100 by
  definition). ``locality_accuracy`` beside it: the top-1 accuracy of the unrelated answer itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request
from modeledit.llm.score import score_continuations
from modeledit.report import mean, parse_records, read_json_list

METRICS = ("efficacy", "paraphrase", "specificity", "locality_accuracy")


@dataclass(frozen=True)
class ZsRECase:
    case_id: int
    request: Request
    paraphrase: str
    loc_prompt: str
    loc_answer: str


def _space(s: str) -> str:
    return s if s.startswith(" ") else " " + s


def load_zsre(path: str | Path, limit: int | None = None) -> list[ZsRECase]:
    """Read zsRE records (MEND format) in file order; the case id is the record's index."""
    records = read_json_list(path, "zsRE", "a zsRE JSON file in MEND's format (e.g. ../shared/data/zsre-train-1k.json)")
    return parse_records(path, records[:limit] if limit else records, _case, "a zsRE record in MEND's format")


def _case(i: int, rec: dict[str, Any]) -> ZsRECase:
    true = rec["answers"][0] if rec.get("answers") else None
    target = _space(rec["alt"])
    request = Request.from_text(rec["src"], rec["subject"], target, _space(true) if true and true.strip() != target.strip() else None)
    return ZsRECase(i, request, rec["rephrase"], rec["loc"] + "?", _space(rec["loc_ans"]))


class ZsRE:
    """The zsRE benchmark for the evaluation loop."""

    name = "zsre"

    def config(self) -> dict[str, Any]:
        return {}

    def load(self, path: str | Path, limit: int | None = None) -> list[ZsRECase]:
        return load_zsre(path, limit)

    def requests(self, case: ZsRECase) -> list[Request]:
        return [case.request]

    def score(self, lm: LanguageModel, case: ZsRECase, reference: dict[str, Any] | None = None) -> dict[str, Any]:
        """Fractions; ``reference`` is the unedited model's score of the case (None when scoring it)."""
        target = case.request.target
        eff, para, loc = score_continuations(lm, [(case.request.text, target), (case.paraphrase, target), (case.loc_prompt, case.loc_answer)])
        top1 = list(loc.top1)
        same = top1 if reference is None else reference["loc_top1"]
        return {
            "efficacy": eff.top1_accuracy,
            "paraphrase": para.top1_accuracy,
            "specificity": sum(a == b for a, b in zip(top1, same)) / len(top1),
            "locality_accuracy": loc.top1_accuracy,
            "loc_top1": top1,
        }

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {phase: {k: 100 * mean(r[phase][k] for r in records) for k in METRICS} for phase in ("pre", "post")}
