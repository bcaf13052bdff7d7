"""The Edit tab: change one fact of a language model with any registered method, see the completions and
the answers' probabilities before and after, and stack edits (listed, removable, downloadable)."""

from __future__ import annotations

import uuid

import gradio as gr

from modeledit.ui import llm_work, page, stack_panel
from modeledit.ui.session import Session, StackItem
from modeledit.ui.workspace import Workspace

INTRO = """Edit one fact: the prompt has `{}` where the subject goes; the new target is taken exactly as written
(mind the leading space: `" Rome"`). Each edit is made on the model holding your earlier edits (the stack
below); other browser sessions never see your edits — the shared model is patched only inside one request,
under a lock, and restored exactly after it."""


def build(ws: Workspace, state: gr.State) -> None:
    from modeledit.methods import list_methods

    with gr.Tab("Edit a fact", id="edit", elem_id="tab-edit"):
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(ws.models, value=ws.default_model, label="Model", elem_id="edit-model")
            method = gr.Dropdown(list_methods("llm"), value="rome", label="Method", elem_id="edit-method")
            layer = gr.Textbox("", label="Layer (empty: the method's choice)", elem_id="edit-layer")
        with gr.Row():
            prompt = gr.Textbox("{} is located in the city of", label="Prompt, with {} for the subject", elem_id="edit-prompt", scale=2)
            subject = gr.Textbox("The Eiffel Tower", label="Subject", elem_id="edit-subject")
        with gr.Row():
            target = gr.Textbox(" Rome", label="New target (as it continues the prompt)", elem_id="edit-target")
            target_true = gr.Textbox(" Paris", label="Old answer (optional, to compare against)", elem_id="edit-target-true")
        with gr.Accordion("More prompts, tokens and hyper-parameters", open=False):
            also = gr.Textbox("Where is the Eiffel Tower? It is in the city of\nThe Louvre is located in the city of", lines=3,
                              label="More prompts to complete before and after, one a line", elem_id="edit-also")
            tokens = gr.Slider(1, 40, value=12, step=1, label="New tokens per completion", elem_id="edit-tokens")
            settings = gr.Textbox("", lines=2, label="Hyper-parameters as name=value, one a line (the CLI's --set), e.g. v_num_grad_steps=10",
                                  elem_id="edit-settings")
        with gr.Row():
            run = gr.Button("Edit", variant="primary", elem_id="edit-run")
            complete = gr.Button("Complete with my edits", elem_id="edit-complete")
            cancel = gr.Button("Cancel", elem_id="edit-cancel")
        status = gr.HTML(elem_id="edit-status")
        results = gr.HTML(elem_id="edit-results")
        gr.Markdown("### Your stacked edits")
        stack_panel.build(ws, state, {"model": model, "prompt": prompt, "subject": subject, "also": also, "tokens": tokens},
                          status, results)

    def on_edit(model_name, method_name, layer_value, prompt_text, subject_text, target_text, true_text, also_text,
                n_tokens, settings_text, session: Session, progress=gr.Progress()):
        def work():
            from modeledit.llm.request import Request

            job = session.job("edit", progress, stages=6)
            request = Request(prompt_text, subject_text, target_text, page.optional(true_text))  # checked first, as the CLI does
            method_obj = llm_work.make_method(method_name, page.optional_int(layer_value, "layer"), page.settings_lines(settings_text))
            prompts = [request.text] + page.settings_lines(also_text)
            n_earlier = len(session.items) if session.model == model_name else 0
            uid = uuid.uuid4().hex
            result = llm_work.edit_on_stack(ws, session, job, model_name, method_obj, request, prompts, int(n_tokens), uid)
            item = StackItem(result["edit"], "" if result["info"].get("took") is not False else "did not take", model_name,
                             info=result["info"], uid=uid)
            stack_panel.save_item(ws, session, item, len(session.items) + 1)
            session.add(item)
            stack_panel.refresh_download(ws, session)
            html = llm_work.edit_html(request, method_name, result, prompts, n_earlier)
            took = result["info"].get("took")
            if took is False:
                msg = page.message("note", f"the edit did not take for {request.text!r} → {request.target!r}: "
                                           f"{result['info'].get('not_taken_reason')} (it is stacked as edit {len(session.items)}; "
                                           "remove it if you do not want it)")
            else:
                msg = page.message("ok", f"edit {len(session.items)} stacked ({method_name}, {result['seconds']:.2f} s)"
                                   + ("; the edit took" if took else ""))
            return msg, html, session
        return page.guard(3, work, gr.skip)

    def on_complete(model_name, prompt_text, subject_text, also_text, n_tokens, session: Session, progress=gr.Progress()):
        def work():
            prompts = stack_panel.prompts_of(prompt_text, subject_text, also_text)
            before, after = llm_work.complete_with_stack(ws, session, session.job("edit", progress), model_name, prompts, int(n_tokens))
            n = len(session.items)
            html = llm_work.completions_html(prompts, before, after, title=f"Completions with {n} stacked edit(s)",
                                             note="before: the unedited model; after: with this page's stacked edits.",
                                             after_label=f"with {n} edit(s)")
            return page.message("info", f"completed {len(prompts)} prompt(s) with {n} stacked edit(s)"), html
        return page.guard(2, work, gr.skip)

    run.click(on_edit, inputs=[model, method, layer, prompt, subject, target, target_true, also, tokens, settings, state],
              outputs=[status, results, state])
    complete.click(on_complete, inputs=[model, prompt, subject, also, tokens, state], outputs=[status, results])
    cancel.click(lambda session: session.cancel("edit"), inputs=[state], outputs=None, queue=False)
