"""What MEND trains on: edit cases read by the benchmarks' own parsers, and the rows of a batch of edits.

A training case is an edit request, the prompts it must carry over to (the edit prompt itself and its
paraphrases) and unrelated prompts with their answers whose predictions must not move (CounterFact's
neighbourhood prompts with the true answer they share; zsRE's ``loc`` question and answer). A case
without unrelated prompts borrows the next case's edit prompt and old answer.

The rows of a batch are teacher-forced (prompt + target, the target tokenised once after the prompt as
evaluation scores it), right-padded, each owned by one edit of the batch:
- kind EDIT: the edit prompt (its gradient is what the editor transforms);
- kind PARA: a paraphrase (with EDIT, the edit loss after the edit);
- kind LOC: an unrelated prompt and its answer (the locality KL at every position).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from modeledit.errors import DataError, ModelEditError
from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request
from modeledit.llm.tokens import encode_continuation, pad_right
from modeledit.report import read_json_list

log = logging.getLogger(__name__)

EDIT, PARA, LOC = 0, 1, 2
FORMS = ("counterfact", "zsre")


@dataclass(frozen=True)
class TrainCase:
    case_id: int
    request: Request
    paraphrases: tuple[str, ...]
    locality: tuple[tuple[str, str], ...]  # (prompt, answer) unrelated to the edit


def detect_form(path: str | Path) -> str:
    """"counterfact" or "zsre", from the keys of the file's first record; a DataError for anything else."""
    records = read_json_list(path, "training", "CounterFact (e.g. ../shared/data/counterfact-train.json) or zsRE "
                                               "(e.g. ../shared/data/zsre-train-1k.json) cases")
    first = records[0]
    if isinstance(first, dict) and ("requested_rewrite" in first or "target_new" in first):
        return "counterfact"
    if isinstance(first, dict) and "src" in first and "alt" in first:
        return "zsre"
    keys = sorted(first)[:8] if isinstance(first, dict) else type(first).__name__
    raise DataError(f"{path}: its records are neither CounterFact cases (prompt, subject, target_new, ground_truth, ...) nor "
                    f"zsRE records in MEND's format (src, alt, answers, rephrase, loc, loc_ans); the first has {keys}")


def load_training_cases(path: str | Path, form: str | None = None, skip: int = 0, limit: int | None = None) -> tuple[list[TrainCase], str]:
    """Cases ``skip`` .. ``skip + limit`` of a CounterFact or zsRE file (``form``; None: detected), each
    record read by the benchmark's own parser; and the form. A record that parses but makes no valid edit
    (zsRE has a few with an empty new answer) is left out with a warning; a record of another shape, or a
    file where most records make no edit, is a DataError."""
    from modeledit.llm.bench import counterfact, zsre

    form = form or detect_form(path)
    if form not in FORMS:
        raise DataError(f"MEND trains on {' or '.join(FORMS)} files, not {form!r}")
    if skip < 0 or (limit is not None and limit < 1):
        raise DataError(f"skip must be ≥ 0 and limit ≥ 1 (got skip={skip}, limit={limit})")
    records = read_json_list(path, form, f"a {form} JSON file")
    chosen = list(enumerate(records))[skip : None if limit is None else skip + limit]
    parse = counterfact._case if form == "counterfact" else zsre._case
    cases, left_out = [], []
    for i, rec in chosen:
        try:
            cases.append(parse(i, rec))
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise DataError(f"{path}: record {i} is not a {form} case (missing or bad {exc})") from exc
        except ModelEditError as exc:
            left_out.append((i, str(exc)))
    if left_out:
        log.warning("%s: %d record(s) left out, e.g. record %d: %s", path, len(left_out), *left_out[0])
        if len(left_out) > len(chosen) // 2:
            raise DataError(f"{path}: {len(left_out)} of {len(chosen)} records make no valid edit, e.g. record {left_out[0][0]}: {left_out[0][1]}")
    if form == "counterfact":
        out = [TrainCase(c.case_id, c.request, tuple(c.paraphrase_prompts),
                         tuple((p, c.request.target_true) for p in c.neighborhood_prompts if c.request.target_true)) for c in cases]
    else:
        out = [TrainCase(c.case_id, c.request, (c.paraphrase,), ((c.loc_prompt, c.loc_answer),)) for c in cases]
    if len(out) > 1:  # a case without unrelated prompts borrows the next case's prompt and old answer
        out = [c if c.locality else TrainCase(c.case_id, c.request, c.paraphrases, (_borrowed(out[(i + 1) % len(out)]),))
               for i, c in enumerate(out)]
    return out, form


def _borrowed(other: TrainCase) -> tuple[str, str]:
    r = other.request
    return r.text, r.target_true or r.target


def split_cases(cases: Sequence[TrainCase], val_size: int, path: str | Path = "the training file") -> tuple[list[TrainCase], list[TrainCase]]:
    """(training, held-out) cases: the last ``min(val_size, n // 10)`` cases (at least one) are held out
    for early stopping. A DataError when the file is too small to leave cases on both sides."""
    n = len(cases)
    n_val = max(1, min(val_size, n // 10))
    if n - n_val < 1:
        raise DataError(f"{path}: {n} case(s) are too few to split into training and held-out cases (at least 2 are needed; "
                        "MEND is trained on thousands)")
    no_loc = [c.case_id for c in cases if not c.locality]
    if no_loc:
        raise DataError(f"{path}: case {no_loc[0]} has no unrelated prompt for the locality loss, and no other case to borrow one from")
    return list(cases[: n - n_val]), list(cases[n - n_val :])


@dataclass
class Rows:
    """Right-padded rows of a batch of edits, each owned by one edit (``owner``) and of one ``kind``."""

    input_ids: torch.Tensor  # (rows, width)
    attention_mask: torch.Tensor
    owner: torch.Tensor  # (rows,)
    kind: torch.Tensor  # (rows,) EDIT, PARA or LOC
    target_rows: torch.Tensor  # (n_target,) targets of the EDIT and PARA rows: their row ...
    target_cols: torch.Tensor  # ... the position whose logits predict them ...
    target_ids: torch.Tensor  # ... and the token
    n_edits: int

    def of(self, kind: int) -> torch.Tensor:
        return (self.kind == kind).nonzero()[:, 0]


def build_rows(lm: LanguageModel, items: Sequence[tuple[int, int, str, str]], n_edits: int, whole: bool = False) -> Rows:
    """Rows of ``(owner, kind, prompt, answer)`` items: EDIT and PARA rows read the prompt and the answer
    but its last token (teacher-forced targets; with ``whole``, that token too), LOC rows the whole text."""
    seqs, owner, kind, t_rows, t_cols, t_ids = [], [], [], [], [], []
    for o, k, prompt, answer in items:
        p, t = encode_continuation(lm.tokenizer, prompt, answer)
        r = len(seqs)
        if k == LOC:
            seqs.append(p + t)
        else:
            seqs.append(p + t if whole else p + t[:-1])
            t_rows += [r] * len(t)
            t_cols += range(len(p) - 1, len(p) - 1 + len(t))
            t_ids += t
        owner.append(o)
        kind.append(k)
    dev = lm.device
    ids, mask = pad_right(seqs, lm.tokenizer.pad_token_id, dev)
    L = lambda xs: torch.tensor(xs, dtype=torch.long, device=dev)  # noqa: E731
    return Rows(ids, mask, L(owner), L(kind), L(t_rows), L(t_cols), L(t_ids), n_edits)


def case_rows(lm: LanguageModel, cases: Sequence[TrainCase]) -> Rows:
    """Every row of a batch of training cases: the edit prompt, its paraphrases, its unrelated prompts."""
    items = []
    for i, c in enumerate(cases):
        items.append((i, EDIT, c.request.text, c.request.target))
        items += [(i, PARA, p, c.request.target) for p in c.paraphrases]
        items += [(i, LOC, p, a) for p, a in c.locality]
    return build_rows(lm, items, len(cases))
