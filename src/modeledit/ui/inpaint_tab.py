"""The Inpaint tab: RePaint (``me.inpaint``, what ``modeledit inpaint`` runs). Upload an image or load a
Fashion-MNIST test image, paint the region to fill with the brush, and fill it; the kept pixels stay
exactly as they were. Progress counts UNet calls."""

from __future__ import annotations

import time

import gradio as gr

from modeledit.ui import page, pictures
from modeledit.ui.session import Session
from modeledit.ui.workspace import Workspace


def build(ws: Workspace, state: gr.State) -> None:
    with gr.Tab("Inpaint", id="inpaint", elem_id="tab-inpaint"):
        gr.Markdown("Paint over the region to fill (any brush colour; everything you paint is filled, everything else is "
                    "kept exactly). The embedded model works on 28×28 greyscale Fashion-MNIST-like images; a caption "
                    "conditions the fill. The paper's schedule is T = 250, jump length 10, jump n_sample 10 (2,410 UNet "
                    "calls); fewer steps are quicker and rougher.")
        with gr.Row():
            with gr.Column(scale=3):
                editor = gr.ImageEditor(type="filepath", format="png", sources=["upload", "clipboard"], transforms=[], layers=False,
                                        brush=gr.Brush(default_size=2, colors=[("#ff2020", 0.7)], color_mode="fixed"),
                                        label="Image: paint the region to fill", height=380, elem_id="inpaint-editor",
                                        elem_classes="me-pixels")
            with gr.Column(scale=2):
                with gr.Row():
                    index = gr.Number(0, precision=0, minimum=0, label="Fashion-MNIST test image", elem_id="inpaint-index")
                    load = gr.Button("Load it into the editor", elem_id="inpaint-load")
                prompt = gr.Textbox("", label="Caption for the fill (optional; text-conditioned models only)", elem_id="inpaint-prompt")
                with gr.Row():
                    steps = gr.Number(250, precision=0, minimum=1, label="T (steps)", elem_id="inpaint-steps")
                    jump_length = gr.Number(10, precision=0, minimum=1, label="Jump length", elem_id="inpaint-jump-length")
                    jump_n = gr.Number(10, precision=0, minimum=1, label="Jump n_sample", elem_id="inpaint-jump-n")
                    seed = gr.Number(0, precision=0, label="Seed", elem_id="inpaint-seed")
                with gr.Row():
                    run = gr.Button("Inpaint", variant="primary", elem_id="inpaint-run")
                    cancel = gr.Button("Cancel", elem_id="inpaint-cancel")
        status = gr.HTML(elem_id="inpaint-status")
        with gr.Row():
            shown = dict(type="filepath", interactive=False, height=240, buttons=["download"], elem_classes="me-pixels")
            original = gr.Image(label="input", elem_id="inpaint-input", **shown)
            mask = gr.Image(label="mask (white = keep, black = fill)", elem_id="inpaint-mask", **shown)
            result = gr.Image(label="result", elem_id="inpaint-result", **shown)

    def on_load(i, session: Session, progress=gr.Progress()):
        def work():
            path, _, name = pictures.fashion_image(ws, session, i, session.job("inpaint", progress))
            return page.message("info", f"Fashion-MNIST test image {int(i)} ({name}) loaded: paint the region to fill"), \
                {"background": path, "layers": [], "composite": path}
        return page.guard(2, work, gr.skip)

    def on_inpaint(value, caption, n_steps, length, n_sample, seed_value, session: Session, progress=gr.Progress()):
        def work():
            from modeledit.api import inpaint
            from modeledit.diffusion.repaint import RePaintHyperParams, unet_calls

            job = session.job("inpaint", progress)
            hp = dict(steps=_int(n_steps, "steps"), jump_length=_int(length, "jump_length"), jump_n_sample=_int(n_sample, "jump_n_sample"))
            calls = unet_calls(RePaintHyperParams(**hp))  # bad settings: the CLI's message, before any work
            model = ws.diffusion(job)
            image = pictures.read_upload((value or {}).get("background"), model.image_channels, ws)
            keep = pictures.keep_mask((value or {}).get("layers"), tuple(image.shape[-2:]))
            out = session.scratch(ws, "inpaint")
            with ws.using("diffusion", job):
                t0 = time.perf_counter()
                filled = inpaint(model, image[None], keep[None], page.optional(caption), seed=int(seed_value or 0),
                                 progress=job.bar("RePaint", "UNet calls"), **hp)
                seconds = time.perf_counter() - t0
            outside = float((filled[0] - image).abs().mul(keep).max())
            return (page.message("ok", f"{calls} UNet calls in {seconds:.1f} s; max |output − input| outside the mask: {outside:.2g}"),
                    pictures.save_png(image, out / "input.png"), pictures.save_png(keep, out / "mask.png"),
                    pictures.save_png(filled[0], out / "result.png"))
        return page.guard(4, work, gr.skip)

    load.click(on_load, inputs=[index, state], outputs=[status, editor])
    run.click(on_inpaint, inputs=[editor, prompt, steps, jump_length, jump_n, seed, state], outputs=[status, original, mask, result])
    cancel.click(lambda session: session.cancel("inpaint"), inputs=[state], outputs=None, queue=False)


def _int(value, field: str) -> int:
    from modeledit.errors import RequestError

    v = page.optional_int(value, field)
    if v is None:
        raise RequestError(field, "must be a positive integer, got nothing")
    return v
