"""The Compare tab: several methods on the same benchmark cases (``me.compare``, what ``modeledit
compare`` runs), with a live progress bar and cancel; the comparison table and chart when done.

The benchmark files come from the data directory ($MODELEDIT_DATA or ../shared/data) on the server;
the page never takes a path. Every method starts from the unedited model (this page's stacked edits are
not applied), as the command does."""

from __future__ import annotations

import gradio as gr

from modeledit.ui import page
from modeledit.ui.session import Session
from modeledit.ui.workspace import Workspace

FILES = {"counterfact": "counterfact-val.json", "zsre": "zsre-train-1k.json", "mquake": "mquake-hard.json"}


def build(ws: Workspace, state: gr.State) -> None:
    from modeledit.methods import list_methods

    with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
        gr.Markdown("Run several methods on the same benchmark cases, each case edited from the unedited model, and "
                    "compare their scores (×100) and cost. Files: " + ", ".join(f"`{b}`: {f}" for b, f in FILES.items())
                    + " from the data directory.")
        with gr.Row():
            model = gr.Dropdown(ws.models, value=ws.default_model, label="Model", elem_id="compare-model")
            benchmark = gr.Radio(list(FILES), value="counterfact", label="Benchmark", elem_id="compare-benchmark")
            limit = gr.Number(10, precision=0, minimum=1, maximum=2000, label="Cases (the first N of the file)", elem_id="compare-limit")
            batch = gr.Number(1, precision=0, minimum=1, label="Batch size (cases edited together)", elem_id="compare-batch")
        methods = gr.CheckboxGroup(list_methods("llm"), value=["rome", "ft-l"], label="Methods", elem_id="compare-methods")
        with gr.Row():
            run = gr.Button("Compare", variant="primary", elem_id="compare-run")
            cancel = gr.Button("Cancel", elem_id="compare-cancel")
        status = gr.HTML(elem_id="compare-status")
        table = gr.Markdown(elem_id="compare-table")
        chart = gr.Image(label="comparison chart", type="filepath", interactive=False, elem_id="compare-chart", buttons=["download"])
        result = gr.File(label="comparison.json", interactive=False, elem_id="compare-json")

    def on_compare(model_name, bench, n_cases, batch_size, chosen, session: Session, progress=gr.Progress()):
        def work():
            from modeledit.api import compare
            from modeledit.datafiles import find_data
            from modeledit.errors import RequestError

            if not chosen:
                raise RequestError("methods", "name at least one method, e.g. rome,memit")
            if bench not in FILES:
                raise RequestError("benchmark", f"unknown benchmark {bench!r}: choose one of {', '.join(FILES)}")
            data = find_data(FILES[bench], f"the {bench} benchmark file",
                             "set MODELEDIT_DATA to the directory that holds it, then restart `modeledit ui`")
            job = session.job("compare", progress)
            n = page.optional_int(n_cases, "limit")
            if n is None or n < 1:
                raise RequestError("limit", "give a positive number of cases")
            lm = ws.language_model(model_name, job)
            out = session.scratch(ws, "compare")
            bars: dict = {}

            def bar(kind: str):
                def update(label: str, done: int, total: int) -> None:
                    bars.setdefault((kind, label), job.bar(f"{label}: {kind}", "cases" if kind == "cases" else "tokens"))(done, total)
                return update

            with ws.using(f"lm:{model_name}", job):
                compare(lm, list(chosen), data, out, benchmark=bench, limit=n, batch_size=int(batch_size or 1),
                        progress=bar("cases"), prepare_progress=bar("key statistics"))
            md = (out / "comparison.md").read_text(encoding="utf-8")
            return (page.message("ok", f"{len(chosen)} method(s) on the first {n} {bench} case(s) of {data.name}"),
                    md, str(out / "comparison.png"), str(out / "comparison.json"))
        return page.guard(4, work, gr.skip)

    run.click(on_compare, inputs=[model, benchmark, limit, batch, methods, state], outputs=[status, table, chart, result])
    cancel.click(lambda session: session.cancel("compare"), inputs=[state], outputs=None, queue=False)
