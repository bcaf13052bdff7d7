"""The Edit tab's stack: the session's edits listed with a download and a remove button each, the whole
stack as one file, and a saved edit uploaded and applied on top.

Removing edit k removes it *and every later edit*: those were computed on the model holding edit k and
their patches are fingerprinted against it, so they cannot be kept without it (make them again if
wanted). Reverting is exact: the weights are restored bit for bit after every request."""

from __future__ import annotations

from functools import partial, reduce
from pathlib import Path
from typing import Any

import gradio as gr

from modeledit.ui import llm_work, page
from modeledit.ui.session import Session, StackItem
from modeledit.ui.workspace import Workspace


def save_item(ws: Workspace, session: Session, item: StackItem, n: int) -> None:
    """Save the edit for download (a weight patch or codebook: safetensors; an in-context edit: JSON)."""
    method = item.edit.entries[0].method if item.edit.entries else "edit"
    ext = ".json" if item.kind in ("context", "memory") else ".safetensors"
    item.file = Path(item.edit.save(session.scratch(ws, f"edit{n}") / f"modeledit-edit-{n}-{method}{ext}"))


def refresh_download(ws: Workspace, session: Session) -> None:
    """The whole stack as one file when its edits are of one kind (patches compose in order); else none,
    and a note saying why."""
    from modeledit.errors import PatchError
    from modeledit.patch import Patch

    session.download, session.download_note = None, ""
    items = session.items
    if not items:
        return
    if len(items) == 1:
        session.download = items[0].file
        return
    kinds = {it.kind for it in items}
    edits = [it.edit for it in items]
    try:
        if kinds == {"patch"}:
            combined = Patch.compose(*edits)
        elif kinds == {"codebook"}:
            combined = reduce(lambda a, b: a.then(b), edits)
        elif kinds <= {"context", "memory"} and len({type(e) for e in edits}) == 1:
            combined = type(edits[0])([e for x in edits for e in x.entries], edits[0].meta)
        else:
            session.download_note = (f"the stack mixes kinds of edit ({', '.join(sorted(kinds))}): one file holds one kind, "
                                     "so download the edits one by one")
            return
    except PatchError as exc:
        session.download_note = f"the stack cannot be saved as one file: {exc}"
        return
    ext = ".json" if kinds <= {"context", "memory"} else ".safetensors"
    session.download = Path(combined.save(session.scratch(ws, "stack") / f"modeledit-stack-{len(items)}-edits{ext}"))


def prompts_of(prompt: str | None, subject: str | None, also: str | None) -> list[str]:
    """The edit prompt with its subject filled in (checked as a request's is), then the extra prompts."""
    from modeledit.llm.request import check_template, fill

    out = []
    if page.optional(prompt) or page.optional(subject):
        check_template(prompt or "", subject or "")
        out.append(fill(prompt, subject))
    return out + page.settings_lines(also)


def build(ws: Workspace, state: gr.State, inputs: dict[str, Any], status: gr.HTML, results: gr.HTML) -> None:
    """The stack list (re-drawn when the stack changes) and the upload box. ``inputs``: the Edit tab's
    model, prompt, subject, also and tokens components (the remove button completes them again)."""
    fields = [inputs[k] for k in ("model", "prompt", "subject", "also", "tokens")]

    def remove(index: int, model, prompt, subject, also, tokens, session: Session, progress=gr.Progress()):
        def work():
            gone = session.remove_from(index)
            refresh_download(ws, session)
            what = f"removed edit {index + 1}" + (f" and the {len(gone) - 1} later edit(s) made on top of it" if len(gone) > 1 else "")
            prompts = prompts_of(prompt, subject, also)
            if not prompts:
                return page.message("ok", what), gr.skip(), session
            before, after = llm_work.complete_with_stack(ws, session, session.job("edit", progress), model, prompts, int(tokens))
            n = len(session.items)
            html = llm_work.completions_html(prompts, before, after, title=f"Completions with {n} stacked edit(s)",
                                             note="before: the unedited model; after: with this page's stacked edits.",
                                             after_label=f"with {n} edit(s)")
            return page.message("ok", what + "; the weights are back to what they were without it"), html, session
        return page.guard(3, work, gr.skip)

    @gr.render(inputs=[state], show_progress="hidden")
    def show(session: Session):
        if not session.items:
            gr.HTML(page.caption("No stacked edits. Each edit you make is stacked on the earlier ones; "
                                 "removing one also removes the later ones (they were made on top of it)."))
        for i, item in enumerate(session.items):
            with gr.Row(elem_classes="me-stack-row", equal_height=True):
                gr.HTML(f'<div class="me-stack-label">{page.esc(llm_work.item_label(item, i + 1))}</div>', scale=1)
                if item.file is not None:
                    gr.DownloadButton("Download", value=str(item.file), size="sm", scale=0, min_width=120,
                                      elem_id=f"stack-download-{i + 1}")
                rm = gr.Button("Remove", size="sm", variant="stop", scale=0, min_width=120, elem_id=f"stack-remove-{i + 1}")
                rm.click(partial(remove, i), inputs=[*fields, state], outputs=[status, results, state])
        if len(session.items) > 1:
            if session.download is not None:
                gr.DownloadButton(f"Download the stack as one file ({len(session.items)} edits)", value=str(session.download),
                                  size="sm", elem_id="stack-download-all")
            else:
                gr.HTML(page.message("note", session.download_note))

    upload = gr.File(label="Apply a saved edit on top of the stack (.safetensors or .json, made by modeledit)",
                     file_types=[".safetensors", ".json"], type="filepath", elem_id="edit-upload", height=110)

    def on_upload(path: str | None, model: str, session: Session, progress=gr.Progress()):
        def work():
            from modeledit.api import load_edit

            if not path:
                return gr.skip(), gr.skip(), session
            edit = load_edit(path)  # a damaged or foreign file: PatchError, the CLI's message
            llm_work.check_upload(ws, session, session.job("edit", progress), model, edit)
            item = StackItem(edit, "uploaded", model)
            save_item(ws, session, item, len(session.items) + 1)
            session.add(item)
            refresh_download(ws, session)
            return page.message("ok", f"applied the uploaded edit as edit {len(session.items)}: {edit!r}"), None, session
        return page.guard(3, work, gr.skip)

    upload.upload(on_upload, inputs=[upload, inputs["model"], state], outputs=[status, upload, state])
