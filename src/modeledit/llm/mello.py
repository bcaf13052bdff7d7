"""MeLLo (Zhong et al. 2023, the MQuAKE paper): edits kept in a memory, questions answered by decomposition.

The edits become a memory of fact sentences (each cloze prompt filled with its new answer); no weight
changes. A question is answered by the paper's loop, prompted with its ``MeLLo-prompt.txt`` examples:

1. the model proposes a subquestion and a tentative answer (it writes up to ``Retrieved fact:``);
2. the memory's fact most similar to the subquestion (all-MiniLM-L6-v2, as IKE) is put after it;
3. the model judges whether the fact contradicts its answer and continues with the intermediate answer,
   then the next subquestion, until it writes ``Final answer:`` — at most ``max_hops`` retrievals.

Every answer comes with its trace (each step's generated text and the fact retrieved), so a person can read
why it answered what it did. Applied to a model, the memory answers the questions that benchmarks ask
(``answer.ask``) and, for plain prompts, puts the nearest remembered fact before the prompt. The rows of
one question set step together: each step is one batched greedy pass after the prompt's cached keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from modeledit.datafiles import find_data
from modeledit.errors import DataError, RequestError
from modeledit.llm.context_edit import ContextEdit, ContextEntry, fact_sentence
from modeledit.llm.method import LLMMethod
from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request

STOP = ("Retrieved fact:", "\n\nQuestion:")


@dataclass(frozen=True)
class MeLLoHyperParams:
    max_hops: int = 4  # retrievals per question (the paper's loop bound)
    step_tokens: int = 128  # new tokens per step (a subquestion and its tentative answer; long questions need ~100)
    prompt: str | None = None  # MeLLo-prompt.txt; None: mquake-prompts/ in $MODELEDIT_DATA or ../shared/data

    def __post_init__(self) -> None:
        if not isinstance(self.max_hops, int) or self.max_hops < 1:
            raise RequestError("max_hops", f"must be a positive number of retrievals, got {self.max_hops!r}")
        if not isinstance(self.step_tokens, int) or self.step_tokens < 8:
            raise RequestError("step_tokens", f"must be at least 8 tokens, got {self.step_tokens!r}")


def read_prompt(path: str | None) -> str:
    p = Path(path) if path else find_data("mquake-prompts/MeLLo-prompt.txt", "MeLLo's prompt", "give one with --set prompt=PATH")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"MeLLo's prompt {p} cannot be read ({exc}): give MQuAKE's MeLLo-prompt.txt with --set prompt=PATH") from exc
    if "Subquestion:" not in text or "Final answer:" not in text:
        raise DataError(f"{p} is not MeLLo's prompt (no 'Subquestion:' and 'Final answer:' examples)")
    return text.strip()


class MeLLo(LLMMethod):
    name = "mello"
    HyperParams = MeLLoHyperParams
    joint = True

    def edit_batch(self, lm: LanguageModel, requests: list[Request], progress=None) -> "MemoryEdit":
        prompt = read_prompt(self.hparams.prompt)
        info = {"n_requests": len(requests), "gradient_steps": 0, "prompt": prompt, "memory": [fact_sentence(r.to_dict()) for r in requests]}
        entry = ContextEntry(self.name, asdict(self.hparams), [r.to_dict() for r in requests], [[] for _ in requests], info)
        return MemoryEdit([entry], {"model": lm.name, "model_identity": lm.identity})


class MemoryEdit(ContextEdit):
    """MeLLo's memory of edited facts; answers questions with the decomposition loop while applied."""

    kind = "memory"

    def answer_questions(self, lm: Any, questions: Sequence[str]) -> tuple[list[str], list[dict[str, Any]]]:
        from modeledit.llm.generate import Rows

        entry = self.entries[0]
        hp = MeLLoHyperParams(**entry.hparams)
        traces: list[dict[str, Any]] = [{"question": q, "steps": [], "answer": ""} for q in questions]
        before, lm.context = lm.context, None  # the loop reads the prompt, not the memory's prefixes
        try:
            rows = Rows(lm, entry.info["prompt"], [f"\n\nQuestion: {q}\n" for q in questions])
            active = list(range(len(questions)))
            for hop in range(hp.max_hops + 1):
                if not active:
                    break
                subs, still = [], []
                for i, (gen, read) in zip(active, rows.greedy(active, hp.step_tokens, STOP)):
                    lines = [ln.strip() for ln in gen.strip().splitlines() if ln.strip()]
                    traces[i]["steps"].append({"generated": gen, "ended_with": read[len(gen):]})  # the stop string read, if any
                    final = next((ln for ln in lines if ln.startswith("Final answer:")), None)
                    if final is not None:
                        traces[i]["answer"] = final[len("Final answer:") :].strip()
                        continue
                    sub = next((ln for ln in reversed(lines) if ln.startswith("Subquestion:")), None)
                    why = ("no subquestion" if sub is None else
                           f"the step ended without asking for a fact (within {hp.step_tokens} tokens)" if STOP[0] not in read else
                           f"no final answer after {hp.max_hops} retrievals" if hop == hp.max_hops else None)
                    if why:
                        traces[i]["stopped"] = why
                        continue
                    subs.append(sub[len("Subquestion:") :].strip())
                    still.append(i)
                facts = {i: self._facts[f] for i, f in zip(still, self.nearest(subs))} if still else {}
                for i, fact in facts.items():  # the model wrote "Retrieved fact:"; the memory completes it
                    traces[i]["steps"][-1]["retrieved"] = fact
                rows.extend({i: f" {fact}." for i, fact in facts.items()})  # as the paper: the model writes the newline
                active = still
        finally:
            lm.context = before
        return [t["answer"] for t in traces], traces
