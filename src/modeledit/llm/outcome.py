"""Did an edit take? Checked for every request of every LM edit, by every method, in one place.

An edit took when, with the patch applied, the new target is the model's greedy continuation of the edit
prompt (each of its tokens the top-1 prediction, teacher-forced) and, when the old answer is known, the new
target beats it (token-mean log-probability, as CounterFact compares answers). Otherwise the outcome says
what the method's own report shows (loss left, steps used up, the norm clamp reached) and what to try.

The outcome lives in each patch entry's ``info["per_request"]`` (``took``, ``target_prob_after``,
``true_prob_after``, ``model_continuation``, ``not_taken_reason``), so it is saved with the patch, shown
by ``patch show`` and recorded per case by the evaluation loop.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from modeledit.llm.model import LanguageModel
from modeledit.llm.request import Request
from modeledit.llm.partial import PartialForward
from modeledit.llm.score import score_continuations, score_from
from modeledit.llm.hooks import Hooks
from modeledit.llm.layout import linear_dims
from modeledit.delta import Delta
from modeledit.patch import Patch


def outcome_pairs(requests: Sequence[Request]) -> list[tuple[str, str]]:
    """The (prompt, answer) pairs the check scores: each request's new target, then the old answers known."""
    return [(r.text, r.target) for r in requests] + [(r.text, r.target_true) for r in requests if r.target_true]


def record_outcomes(lm: LanguageModel, patch: Patch, requests: Sequence[Request], start: PartialForward | None = None) -> Patch:
    """Score every request with ``patch`` applied and write the outcomes into the entries holding them.

    ``start`` (optional): a partial pass over the rows of ``outcome_pairs(requests)`` whose unedited input to
    a block no higher than any the patch touches was recorded by the method's own pass (MEND's): the check
    then runs only the blocks from there up, with the patch's weight changes added beside the linear maps
    (ΔW x, by hooks) when it has only such changes — no weight is written, copied or restored."""
    pairs = outcome_pairs(requests)
    if start is not None and not _above(lm, patch, start.layer):
        start = None
    beside = None if start is None else _beside(lm, patch)
    if beside is not None:
        scored = score_from(lm, pairs, start, beside)
    else:
        with patch.applied(lm):
            scored = score_continuations(lm, pairs) if start is None else score_from(lm, pairs, start)
    new, true = scored[: len(requests)], iter(scored[len(requests) :])
    at = 0
    for entry in patch.entries:
        per = entry.info.setdefault("per_request", {})
        for key in ("took", "target_prob_after", "true_prob_after", "model_continuation", "not_taken_reason"):
            per[key] = []
        for j in range(len(entry.requests)):
            r, s = requests[at], new[at]
            t = next(true) if r.target_true else None
            greedy = s.top1 == s.tokens
            beats = t is None or s.mean_logprob > t.mean_logprob
            took = greedy and beats
            per["took"].append(took)
            per["target_prob_after"].append(s.mean_prob)
            per["true_prob_after"].append(None if t is None else t.mean_prob)
            per["model_continuation"].append(lm.tokenizer.decode(list(s.top1)))
            per["not_taken_reason"].append(None if took else _reason(entry.info, entry.hparams, j, greedy, beats, s.mean_prob))
            at += 1
    return patch


def _beside(lm: LanguageModel, patch: Patch) -> Callable[[Hooks], None] | None:
    """Hooks that add each of the patch's weight changes beside its linear map — Δy = x ΔWᵀ, a low-rank
    ΔW = L Rᵀ as (x R) Lᵀ — or None if it changes anything else (a bias, a norm)."""
    adds: dict[str, list[tuple[Delta, bool]]] = {}
    for entry in patch.entries:
        for name, delta in entry.deltas.items():
            module, _, attr = name.rpartition(".")
            dims = linear_dims(lm.model.get_submodule(module)) if attr == "weight" else None
            if dims is None:
                return None
            adds.setdefault(module, []).append((delta, not dims[2]))

    def install(hooks: Hooks) -> None:
        for module, deltas in adds.items():
            def add(x: torch.Tensor, deltas=deltas) -> torch.Tensor:
                out = 0
                for d, stored_out_in in deltas:
                    f = [t.to(x.device, torch.float32) if t is not None else None for t in (d.left, d.right, d.dense)]
                    # the weight is stored (out, in) (nn.Linear) or (in, out) (GPT-2's Conv1D)
                    if f[2] is not None:
                        out = out + x.float() @ (f[2].T if stored_out_in else f[2])
                    else:
                        first, second = (f[1], f[0]) if stored_out_in else (f[0], f[1])
                        out = out + (x.float() @ first) @ second.T
                return out.to(x.dtype)

            hooks.add_to_output(module, add)

    return install


def _above(lm: LanguageModel, patch: Patch, layer: int) -> bool:
    """Whether every parameter ``patch`` touches lies in a block from ``layer`` up."""
    blocks = lm.layout.blocks[layer:]
    return all(any(name.startswith(b + ".") for b in blocks) for name in patch.parameters)


def _own(info: dict[str, Any], key: str, index: int) -> Any:
    """A value of the entry's report for its ``index``-th request (per-request lists first)."""
    per = info.get("per_request", {})
    if key in per and index < len(per[key]):
        return per[key][index]
    return info.get(key)


def _reason(info: dict[str, Any], hparams: dict[str, Any], index: int, greedy: bool, beats: bool, p_after: float) -> str:
    """One line: why the edit did not take, as far as the method's report shows, and what to try."""
    what = [] if greedy else ["the new target is not the model's greedy continuation"]
    if not beats:
        what.append("the old answer still scores higher")
    seen, advice = [], []
    p_opt = _own(info, "target_prob_after_value_opt", index)
    key_gap = isinstance(p_opt, (int, float)) and p_opt > 0.5 and p_opt > 2 * p_after
    if key_gap:  # the value was found; the update written at the averaged key does not reach this prompt's key
        seen.append(f"the optimised value gave P={p_opt:.2f} over the context prompts, the written update only {p_after:.2f} here")
    reach = _own(info, "key_reach", index)
    if isinstance(reach, (int, float)) and reach < 0.5:
        seen.append(f"the update reaches this prompt's own key at {reach:.2f} of the averaged key's "
                    "(as when a prompt starts with its subject and the model adds no BOS token)")
    steps, limit = _own(info, "gradient_steps", index), hparams.get("steps")
    if isinstance(steps, int) and isinstance(limit, int) and steps >= limit - 1:
        seen.append(f"all {limit} optimisation steps used")
        if not key_gap:
            advice.append(f"more steps (--set steps={2 * limit})")
    loss = _own(info, "loss_last", index)
    if isinstance(loss, (int, float)):
        seen.append(f"loss {loss:.2f} left")
    ratio, clamp = _own(info, "delta_norm_over_v0", index), hparams.get("clamp_norm_factor")
    if isinstance(ratio, (int, float)) and isinstance(clamp, (int, float)) and ratio >= 0.99 * clamp:
        seen.append(f"the change reached the norm clamp ({clamp:g}× the value's norm)")
        if not key_gap:
            advice.append(f"a larger clamp (--set clamp_norm_factor={2 * clamp:g})")
    advice.append(info.get("advice") or ("another layer (--layer)" if "layer" in info else "other layers (--set layers=...)"))
    line = "; ".join(what)
    if seen:
        line += " (" + ", ".join(seen) + ")"
    return f"{line}; try {', or '.join(advice)}"


def not_taken(patch: Patch) -> list[tuple[dict[str, Any], str]]:
    """(request, reason) of every request whose edit did not take (empty when all took or unchecked)."""
    out = []
    for e in patch.entries:
        per = e.info.get("per_request", {})
        for r, took, why in zip(e.requests, per.get("took", []), per.get("not_taken_reason", [])):
            if took is False:
                out.append((r, why))
    return out
