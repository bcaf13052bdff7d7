"""The language-model work behind the Edit tab, free of any widget: build the method as the CLI does,
make an edit on top of a session's stack, complete prompts with the stack, and show the results as HTML.

Every function that touches the model's weights runs under the model's lock, with the session's stacked
edits entered in order and left (restored exactly) before the lock is released."""

from __future__ import annotations

import time
from typing import Any, Sequence

from modeledit.errors import RequestError
from modeledit.ui import page
from modeledit.ui.session import Job, Session, StackItem, holding
from modeledit.ui.workspace import Workspace

STATS_BAR = "key statistics (once per model and layer)"


def make_method(name: str, layer: int | None, settings: Sequence[str]):
    """The method with ``--layer`` and ``--set name=value`` checked against its dataclass (the CLI's rules
    and messages)."""
    from modeledit.methods import configured_method

    return configured_method(name, layer, settings=settings)


def complete(ws: Workspace, lm: Any, model: str, held: Sequence[str], prompts: Sequence[str], tokens: int) -> list[str]:
    """Greedy completions of the model as it is now, which holds the edits ``held`` (their uids, in
    order): each prompt's is remembered, so that a prompt on the same stack is completed once (a new
    subject completes its own prompt, not the unchanged ones beside it)."""
    key = lambda p: ("complete", model, tuple(held), p, tokens)  # noqa: E731
    got = {p: ws.recall(key(p)) for p in dict.fromkeys(prompts)}
    new = [p for p, text in got.items() if text is None]
    for p, text in zip(new, lm.generate(new, tokens) if new else []):
        got[p] = ws.remember(key(p), text)
    return [got[p] for p in prompts]


def edit_on_stack(ws: Workspace, session: Session, job: Job, model: str, method: Any, request: Any,
                  prompts: Sequence[str], tokens: int, uid: str) -> dict[str, Any]:
    """Compute ``request``'s edit on the model holding the session's stack; completions and the answers'
    probabilities before and after. Returns what the page shows; the weights are restored after.
    ``uid``: the name the new edit will have in the stack."""
    from modeledit.llm.score import score_continuations

    session.check_model(model)
    lm = ws.language_model(model, job)
    held = [it.uid for it in session.items]
    pairs = [(request.text, request.target)] + ([(request.text, request.target_true)] if request.target_true else [])
    with ws.using(f"lm:{model}", job):
        t_all = time.perf_counter()  # from here on: the work the CLI's `edit` does too
        # statistics and context prefixes come from the model as loaded (as sequential editing reuses them)
        job.say("preparing the method (key statistics are computed once per model and layer)")
        method.prepare(lm, job.bar(STATS_BAR, "tokens"))
        with holding(lm, session.appliers()):
            job.say("completing the prompts before the edit")
            before = complete(ws, lm, model, held, prompts, tokens)
            p_before = [c.mean_prob for c in score_continuations(lm, pairs)]
            job.say(f"editing with {method.name}")
            t0 = time.perf_counter()
            edit = method.edit(lm, [request], job.bar("editing", "requests"))
            seconds = time.perf_counter() - t0
            job.say("completing the prompts after the edit")
            with edit.applied(lm):
                after = complete(ws, lm, model, held + [uid], prompts, tokens)
                own = _request_info(edit)
                if own.get("target_prob_after") is None:
                    scored = [c.mean_prob for c in score_continuations(lm, pairs)]
                    own = {**own, "target_prob_after": scored[0], "true_prob_after": scored[1] if len(scored) > 1 else None}
    return {"edit": edit, "before": before, "after": after, "p_before": p_before, "info": own, "seconds": seconds,
            "work_seconds": time.perf_counter() - t_all}


def complete_with_stack(ws: Workspace, session: Session, job: Job, model: str, prompts: Sequence[str],
                        tokens: int) -> tuple[list[str], list[str]]:
    """Completions of the unedited model and of the model holding the session's stack."""
    if not prompts:
        raise RequestError("prompt", "give a prompt (with {} and a subject) or more prompts to complete")
    session.check_model(model)
    lm = ws.language_model(model, job)
    held = [it.uid for it in session.items]
    with ws.using(f"lm:{model}", job):
        job.say("completing the prompts")
        before = complete(ws, lm, model, [], prompts, tokens)
        if not held:
            return before, before
        with holding(lm, session.appliers()):
            after = complete(ws, lm, model, held, prompts, tokens)
    return before, after


def check_upload(ws: Workspace, session: Session, job: Job, model: str, edit: Any) -> None:
    """Raise the library's PatchError unless ``edit`` applies to the model holding the stack (a weight
    patch is checked against the model's fingerprints when applied)."""
    session.check_model(model)
    lm = ws.language_model(model, job)
    with ws.using(f"lm:{model}", job), holding(lm, session.appliers() + [edit]):
        pass


def _request_info(edit: Any) -> dict[str, Any]:
    from modeledit.evaluation import request_info

    return request_info(edit, 0)


def not_taken_reason(edit: Any) -> str | None:
    from modeledit.llm.outcome import not_taken

    failed = not_taken(edit) if hasattr(edit, "entries") else []
    return failed[0][1] if failed else None


def where(info: dict[str, Any]) -> str | None:
    """The layer and why (the CLI's line), when the method reports one."""
    if "layer" in info:
        return f"layer {info['layer']} ({info.get('module')}; {info.get('layer_reason')})"
    if info.get("layers") is not None:
        return f"layers {info.get('layers')}" + (f" ({info['layers_reason']})" if info.get("layers_reason") else "")
    return None


# -- HTML ---------------------------------------------------------------------------------------------
def completions_html(prompts: Sequence[str], before: Sequence[str], after: Sequence[str], *, title: str,
                     note: str, after_label: str = "after") -> str:
    rows = [(p, page.one_line(b), page.one_line(a)) for p, b, a in zip(prompts, before, after)]
    return (f"<h3>{page.esc(title)}</h3>" + page.caption(note)
            + page.table(["prompt", "before", after_label], rows, classes=["prompt", "before", "after"], elem_class="me-completions"))


def edit_html(request: Any, method: str, result: dict[str, Any], prompts: Sequence[str], n_earlier: int) -> str:
    info = result["info"]
    base = "the unedited model" if not n_earlier else f"the model holding your {n_earlier} earlier edit(s)"
    out = completions_html(prompts, result["before"], result["after"],
                           title=f"{method.upper()} edit: {request.text!r} → {request.target!r}",
                           note=f"before: {base}; after: with this edit on top. Greedy completions.")
    rows = [(f"P(new {request.target!r})", page.fmt_p(result["p_before"][0]), page.fmt_p(info.get("target_prob_after")))]
    if request.target_true:
        rows.append((f"P(old {request.target_true!r})", page.fmt_p(result["p_before"][1]), page.fmt_p(info.get("true_prob_after"))))
    out += page.table(["answer (token-mean probability after the prompt)", "before", "after"], rows,
                      classes=["", "num", "num after"], elem_class="me-probs")
    facts = []
    took = info.get("took")
    if took is not None:
        facts.append("the edit took: the new target is now the model's greedy continuation"
                     + (" and beats the old answer" if request.target_true else "") if took
                     else f"the edit did not take: {info.get('not_taken_reason')}")
    if where(info):
        facts.append(where(info))
    if info.get("gradient_steps") is not None:
        facts.append(f"{info['gradient_steps']} gradient steps")
    facts.append(f"edit computed in {result['seconds']:.2f} s; the request's whole work (completions before and after, "
                 f"probabilities, the edit) {result['work_seconds']:.2f} s")
    return out + '<ul class="me-facts">' + "".join(f"<li>{page.esc(f)}</li>" for f in facts) + "</ul>"


def item_label(item: StackItem, n: int) -> str:
    reqs = item.edit.requests
    first = reqs[0] if reqs else {}
    text = first.get("prompt", "").replace("{}", first.get("subject", "")) if first else "?"
    methods = ", ".join(dict.fromkeys(e.method for e in item.edit.entries)).upper()
    more = f" and {len(reqs) - 1} more" if len(reqs) > 1 else ""
    return f"{n}. {methods}: {text!r} → {first.get('target')!r}{more}" + (f" — {item.label}" if item.label else "")
