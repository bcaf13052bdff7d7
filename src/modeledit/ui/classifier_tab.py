"""The Classifier tab: an Editable-Neural-Networks edit (``get_method("enn")``, what ``modeledit
classifier eval`` applies): make one test image read as another label, then show the probabilities
before and after, the gradient steps, and the drawdown — the test error with the edit applied minus
without it, over the whole test set. Each edit starts from the unedited classifier."""

from __future__ import annotations

import gradio as gr

from modeledit.ui import page, pictures
from modeledit.ui.session import Session
from modeledit.ui.workspace import Workspace


def classes_of(ws: Workspace) -> list[str]:
    """The classifier's class names without loading its weights (its classifier.json; the judge's by default)."""
    import json
    from pathlib import Path

    from modeledit.embedded import JUDGE

    path = Path(ws.classifier_path or JUDGE) / "classifier.json"
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["classes"])
    except (OSError, ValueError, KeyError):
        return []  # the load, when the page asks for the model, says what is wrong


def build(ws: Workspace, state: gr.State) -> None:
    classes = classes_of(ws)
    who = ws.classifier_path or "the committed Fashion-MNIST classifier (normally trained: its edits are the fine-tuning baseline)"
    with gr.Tab("Classifier", id="classifier", elem_id="tab-classifier"):
        gr.Markdown(f"Edit a classifier so that one test image gets a new label: plain gradient steps on the hinge loss "
                    f"until the label wins (at most the step limit), over the editable parameters. Model: {who}.")
        with gr.Row():
            with gr.Column(scale=2):
                picture = gr.Image(label="test image", type="filepath", interactive=False, height=240, elem_id="classifier-image",
                                   elem_classes="me-pixels")
            with gr.Column(scale=3):
                with gr.Row():
                    index = gr.Number(0, precision=0, minimum=0, label="Test image", elem_id="classifier-index")
                    show = gr.Button("Show it", elem_id="classifier-show")
                label = gr.Dropdown(classes, value=classes[1] if len(classes) > 1 else None, label="New label",
                                    elem_id="classifier-label")
                with gr.Row():
                    max_steps = gr.Number(10, precision=0, minimum=1, label="Gradient steps allowed", elem_id="classifier-steps")
                    lr = gr.Textbox("", label="Step size (empty: the classifier's own)", elem_id="classifier-lr")
                run = gr.Button("Edit", variant="primary", elem_id="classifier-run")
        status = gr.HTML(elem_id="classifier-status")
        with gr.Row():
            before = gr.Label(num_top_classes=4, label="before the edit", elem_id="classifier-before")
            after = gr.Label(num_top_classes=4, label="after the edit", elem_id="classifier-after")
        facts = gr.HTML(elem_id="classifier-facts")

    def on_show(i, session: Session, progress=gr.Progress()):
        def work():
            job = session.job("classifier", progress)
            path, y, name = pictures.fashion_image(ws, session, i, job)
            clf = ws.classifier(job)
            data = ws.image_data(clf.info.get("data", "fashion-mnist"), job)
            return page.message("info", f"test image {int(i)}: {name}"), path, _probs(clf, data.test.images[int(i)])
        return page.guard(3, work, gr.skip)

    def on_edit(i, new_label, steps, step_size, session: Session, progress=gr.Progress()):
        def work():
            from modeledit.classifier.enn import ClassifierRequest
            from modeledit.errors import RequestError
            from modeledit.methods import get_method

            job = session.job("classifier", progress)
            path, y, name = pictures.fashion_image(ws, session, i, job)
            clf = ws.classifier(job)
            if new_label not in clf.classes:
                raise RequestError("label", f"{new_label!r} is not a class of this classifier ({', '.join(clf.classes)})")
            hp = {"max_steps": page.optional_int(steps, "max_steps")}
            if page.optional(step_size):
                try:
                    hp["lr"] = float(step_size)
                except ValueError:
                    raise RequestError("lr", f"{step_size!r} is not a number") from None
            method = get_method("enn", **{k: v for k, v in hp.items() if v is not None})
            data = ws.image_data(clf.info.get("data", "fashion-mnist"), job)
            x = data.test.images[int(i)]
            with ws.using("classifier", job):
                error = ws.cached("classifier-test-error", lambda: _test_error(clf, data.test), job, "the test set")
                base = error()
                p_before = _probs(clf, x)
                patch = method.edit(clf, ClassifierRequest(x, clf.classes.index(new_label)))
                info = patch.entries[0].info
                with patch.applied(clf.module):
                    p_after, edited = _probs(clf, x), error()
            rows = [("success (the new label wins)", "yes" if info["success"] else "no"),
                    ("gradient steps", info["gradient_steps"]),
                    ("edit loss", f"{info['loss_first']:.4f} → {info['loss_last']:.4f}"),
                    ("seconds", f"{info['seconds']:.4f}"),
                    (f"test error over {len(data.test)} images", f"{base:.4f} → {edited:.4f}"),
                    ("drawdown (points of test error)", f"{100 * (edited - base):+.2f}")]
            html = page.table(None, rows, classes=["", "num"], elem_class="me-classifier-facts")
            kind = "ok" if info["success"] else "note"
            say = (f"test image {int(i)} ({name}) now reads as {new_label!r}" if info["success"] else
                   f"the edit did not succeed within {method.hparams.max_steps} steps (loss left {info['loss_last']:.4f}); "
                   "it is not kept")
            return page.message(kind, say), path, p_before, p_after, html
        return page.guard(5, work, gr.skip)

    show.click(on_show, inputs=[index, state], outputs=[status, picture, before])
    run.click(on_edit, inputs=[index, label, max_steps, lr, state], outputs=[status, picture, before, after, facts])


def _probs(clf, x) -> dict[str, float]:
    import torch

    with torch.no_grad():
        p = torch.softmax(clf.module(x[None].to(clf.device)), -1)[0].cpu()
    return {c: float(v) for c, v in zip(clf.classes, p)}


def _test_error(clf, test):
    from modeledit.classifier.evaluate import TestError

    return TestError(clf, test)
