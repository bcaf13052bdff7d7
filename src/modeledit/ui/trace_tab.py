"""The Trace tab: causal tracing of one fact (``me.trace``): the three heatmaps and the strongest
restoration of each sweep, as ``modeledit trace`` prints them."""

from __future__ import annotations

import gradio as gr

from modeledit.ui import page
from modeledit.ui.session import Session, holding
from modeledit.ui.workspace import Workspace

KINDS = {"hidden": "hidden state", "mlp": "MLP window", "attn": "attention window"}


def build(ws: Workspace, state: gr.State) -> None:
    with gr.Tab("Trace", id="trace", elem_id="tab-trace"):
        gr.Markdown("Where does the model keep a fact? Run the prompt clean, again with noise on the subject's "
                    "embeddings, then restore one clean state at a time (a token × a layer) and measure how much of "
                    "the answer's probability comes back (the ROME paper's causal tracing).")
        with gr.Row():
            model = gr.Dropdown(ws.models, value=ws.default_model, label="Model", elem_id="trace-model")
            prompt = gr.Textbox("{} is located in the city of", label="Prompt ({} for the subject, or the subject written out)",
                                elem_id="trace-prompt", scale=2)
            subject = gr.Textbox("The Eiffel Tower", label="Subject (its embeddings are corrupted)", elem_id="trace-subject")
            target = gr.Textbox("", label="Answer to trace (empty: the model's own next token)", elem_id="trace-target")
        with gr.Row():
            samples = gr.Slider(1, 10, value=10, step=1, label="Noisy runs per cell", elem_id="trace-samples")
            window = gr.Textbox("", label="Window (empty: scaled to the depth)", elem_id="trace-window")
            seed = gr.Number(1, precision=0, label="Seed of the noise", elem_id="trace-seed")
            precision = gr.Radio(["float32", "bfloat16"], value="float32", label="Precision", elem_id="trace-precision")
            use_stack = gr.Checkbox(False, label="with my stacked edits applied", elem_id="trace-use-stack")
        with gr.Row():
            run = gr.Button("Trace", variant="primary", elem_id="trace-run")
            cancel = gr.Button("Cancel", elem_id="trace-cancel")
        status = gr.HTML(elem_id="trace-status")
        summary = gr.HTML(elem_id="trace-summary")
        images = [gr.Image(label=f"restoring the {name}", type="filepath", interactive=False, elem_id=f"trace-{kind}",
                           buttons=["download"], height=420) for kind, name in KINDS.items()]

    def on_trace(model_name, prompt_text, subject_text, target_text, n_samples, window_value, seed_value, precision_name,
                 stacked, session: Session, progress=gr.Progress()):
        def work():
            from modeledit.api import trace
            from modeledit.llm.request import template_of

            template_of(prompt_text, subject_text)  # a subject not in the prompt: said before loading anything
            job = session.job("trace", progress)
            if stacked:
                session.check_model(model_name)
            lm = ws.language_model(model_name, job)
            out = session.scratch(ws, "trace")
            with ws.using(f"lm:{model_name}", job), holding(lm, session.appliers() if stacked else []):
                r = trace(lm, prompt_text, subject_text, page.optional(target_text), out, progress=job.bar("restorations", "runs"),
                          samples=int(n_samples), noise=None, window=page.optional_int(window_value, "window"),
                          seed=int(seed_value or 0), precision=precision_name)
            html = ""
            if not r.predicted:
                html += page.message("note", f"the model does not predict {r.target!r} here (its greedy continuation is "
                                             f"{r.prediction!r}); traced {r.target!r} anyway")
            what = f" with {len(session.items)} stacked edit(s)" if stacked and session.items else ""
            html += page.caption(f"{r.prompt!r} → {r.target!r}{what}: clean p={r.clean_prob:.4f}, corrupted p={r.corrupted_prob:.4f} "
                                 f"(noise {r.noise:.3g}, {r.samples} samples, window {r.window}), {r.seconds:.1f} s")
            rows = []
            for kind, name in KINDS.items():
                s = r.strongest(kind)
                rows.append((name, f"{s['token']} {s['token_text']!r}", s["layer"], f"{s['prob']:.4f}", f"{s['indirect_effect']:+.4f}"))
            html += "<h3>Strongest restoration per sweep</h3>" + page.table(
                ["sweep", "token", "layer", "p restored", "indirect effect"], rows, classes=["", "", "num", "num", "num"])
            pictures = [str(out / f"trace_{kind}.png") for kind in KINDS]
            return (page.message("ok", f"traced in {r.seconds:.1f} s"), html, *pictures)
        return page.guard(5, work, gr.skip)

    run.click(on_trace, inputs=[model, prompt, subject, target, samples, window, seed, precision, use_stack, state],
              outputs=[status, summary, *images])
    cancel.click(lambda session: session.cancel("trace"), inputs=[state], outputs=None, queue=False)
