"""The Imagic tab (``me.imagic``, what ``modeledit imagic`` runs): optimise the target text's embedding
(stage A), fine-tune the UNet on the image (stage B, a patch: the shared model is untouched), and sample
along α (stage C). Shows the α sweep as a strip and the offline judge's probabilities for each image."""

from __future__ import annotations

import gradio as gr

from modeledit.ui import page, pictures
from modeledit.ui.session import Session
from modeledit.ui.workspace import Workspace

SWEEP = "0, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4"


def build(ws: Workspace, state: gr.State) -> None:
    with gr.Tab("Imagic", id="imagic", elem_id="tab-imagic"):
        gr.Markdown("Edit a real image toward a text: α = 0 reconstructs the image, α = 1 follows the text, in between "
                    "mixes them. Empty step counts take the model's own settings (the embedded model: 300 + 300 steps, "
                    "~20 s on two cores); a few steps show the idea in seconds.")
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Image", height=260,
                                 elem_id="imagic-image", elem_classes="me-pixels")
                with gr.Row():
                    index = gr.Number(0, precision=0, minimum=0, label="Fashion-MNIST test image", elem_id="imagic-index")
                    load = gr.Button("Load it", elem_id="imagic-load")
            with gr.Column(scale=3):
                prompt = gr.Textbox("a pullover", label="Target text", elem_id="imagic-prompt")
                alpha = gr.Slider(0, 2, value=1.2, step=0.05, label="α of the result (the embedded model's choice: 1.2)", elem_id="imagic-alpha")
                sweep = gr.Textbox(SWEEP, label="α sweep (the strip), separated by commas", elem_id="imagic-sweep")
                with gr.Row():
                    embed_steps = gr.Textbox("", label="Stage A steps (empty: the model's)", elem_id="imagic-embed-steps")
                    tune_steps = gr.Textbox("", label="Stage B steps (empty: the model's)", elem_id="imagic-tune-steps")
                    seed = gr.Number(0, precision=0, label="Seed", elem_id="imagic-seed")
                with gr.Row():
                    run = gr.Button("Edit the image", variant="primary", elem_id="imagic-run")
                    cancel = gr.Button("Cancel", elem_id="imagic-cancel")
        status = gr.HTML(elem_id="imagic-status")
        with gr.Row():
            result = gr.Image(label="result at α", type="filepath", interactive=False, height=250, scale=1, buttons=["download"],
                              elem_id="imagic-result", elem_classes="me-pixels")
            strip = gr.Gallery(label="the α sweep", columns=8, height=250, scale=4, object_fit="contain", elem_id="imagic-strip",
                               elem_classes="me-pixels", interactive=False)
        judged = gr.HTML(elem_id="imagic-judge")

    def on_load(i, session: Session, progress=gr.Progress()):
        def work():
            path, _, name = pictures.fashion_image(ws, session, i, session.job("imagic", progress))
            return page.message("info", f"Fashion-MNIST test image {int(i)} ({name}) loaded"), path
        return page.guard(2, work, gr.skip)

    def on_imagic(path, text, a, sweep_text, n_embed, n_tune, seed_value, session: Session, progress=gr.Progress()):
        def work():
            from modeledit.api import imagic
            from modeledit.diffusion.imagic import check_alpha

            job = session.job("imagic", progress)
            alphas = [check_alpha(x) for x in _floats(sweep_text)]
            chosen = check_alpha(float(a))
            model = ws.diffusion(job)
            x = pictures.read_upload(path, model.image_channels, ws)
            given = {"embed_steps": page.optional_int(n_embed, "embed_steps"), "tune_steps": page.optional_int(n_tune, "tune_steps")}
            hp = {**model.recommended.get("imagic", {}), **{k: v for k, v in given.items() if v is not None}, "alpha": chosen}
            seed_int = int(seed_value or 0)
            bars: dict = {}

            def stages(stage: str, done: int, total: int) -> None:
                bars.setdefault(stage, job.bar(stage, "steps"))(done, total)

            grid = sorted(set(alphas) | {chosen})
            with ws.using("diffusion", job):
                edit = imagic(model, x[None], text, seed=seed_int, progress=stages, **hp)
                images = edit.generate(model, grid, seed=seed_int, progress=job.bar("C: generating", "steps"))
            out = session.scratch(ws, "imagic")
            files = [pictures.save_png(im, out / f"alpha-{g:g}.png") for g, im in zip(grid, images)]
            strip_items = [(pictures.save_png(x, out / "input.png"), "input")] + [(f, f"α = {g:g}") for f, g in zip(files, grid)]
            info = edit.info
            msg = (f"stage A loss {info['embed_loss_first']:.4f} → {info['embed_loss_last']:.4f}, stage B loss → "
                   f"{info['tune_loss_last']:.4f}, {info['seconds']:.1f} s ({hp.get('embed_steps')} + {hp.get('tune_steps')} steps)")
            return page.message("ok", msg), files[grid.index(chosen)], strip_items, _judge_html(ws, job, grid, images)
        return page.guard(4, work, gr.skip)

    load.click(on_load, inputs=[index, state], outputs=[status, image])
    run.click(on_imagic, inputs=[image, prompt, alpha, sweep, embed_steps, tune_steps, seed, state],
              outputs=[status, result, strip, judged])
    cancel.click(lambda session: session.cancel("imagic"), inputs=[state], outputs=None, queue=False)


def _floats(text: str) -> list[float]:
    from modeledit.errors import RequestError

    try:
        values = [float(t) for t in (text or "").replace(";", ",").split(",") if t.strip()]
    except ValueError:
        raise RequestError("sweep", f"{text!r}: give α values separated by commas, e.g. {SWEEP}") from None
    if not values:
        raise RequestError("sweep", f"give at least one α, e.g. {SWEEP}")
    return values


def _judge_html(ws: Workspace, job, grid, images) -> str:
    """The judge's two most probable classes for each α image (only for images the judge takes)."""
    import torch

    judge = ws.judge(job)
    if tuple(images.shape[1:]) != tuple(judge.input_shape):
        return page.caption(f"the judge classifies {tuple(judge.input_shape)} images; these are {tuple(images.shape[1:])}: not judged")
    with torch.no_grad():
        probs = torch.softmax(judge.module(images.to(judge.device, torch.float32)), -1).cpu()
    rows = []
    for g, p in zip(grid, probs):
        top = p.topk(2)
        rows.append((f"{g:g}", f"{judge.classes[int(top.indices[0])]} ({float(top.values[0]):.3f})",
                     f"{judge.classes[int(top.indices[1])]} ({float(top.values[1]):.3f})"))
    return ("<h3>The judge's probabilities</h3>" + page.caption("The committed Fashion-MNIST classifier (91.7% test accuracy) "
            "on each image of the sweep: its two most probable classes.")
            + page.table(["α", "most probable class (p)", "second (p)"], rows, classes=["num", "", ""]))
