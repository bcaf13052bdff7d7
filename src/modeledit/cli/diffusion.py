"""Diffusion commands: sample, inpaint (RePaint), imagic."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import typer

from modeledit.cli.common import _bar, _errors, app, console, diffusion_app, err

def _load_diffusion(model: Optional[str]):
    from diffusers.utils import logging as df_logging

    from modeledit.diffusion.model import DEFAULT, load_diffusion

    df_logging.disable_progress_bar()
    with err.status(f"loading {model or DEFAULT} ..."):
        return load_diffusion(model)


@diffusion_app.command("sample")
def diffusion_sample(
    prompt: list[str] = typer.Option([], help="A caption, e.g. 'a pair of sneakers' (repeat for several rows)."),
    out: Path = typer.Option(Path("samples.png"), help="Contact sheet to write (.png)."),
    model: Optional[str] = typer.Option(None, help="Diffusion model: the embedded 'tiny-fashion' (default), a diffusers directory or hub name."),
    n: int = typer.Option(8, help="Samples per prompt."),
    steps: int = typer.Option(50, help="DDIM steps."),
    guidance: float = typer.Option(3.0, help="Classifier-free guidance scale."),
    seed: int = typer.Option(0),
) -> None:
    """Sample images for captions; one row per prompt."""
    from modeledit.diffusion.jobs import sample_job

    with _errors(), _bar("sampling", "steps") as bar:
        path = sample_job(_load_diffusion(model), prompt, out, n=n, steps=steps, guidance=guidance, seed=seed, progress=bar)
    console.print(f"written: {path}")


@app.command()
def inpaint(
    image: list[Path] = typer.Option(..., help="Image(s) to inpaint (repeat for a batch of equal sizes)."),
    mask: list[Path] = typer.Option(..., help="One mask for all images, or one per image: white = keep, black = fill."),
    out: Path = typer.Option(..., help="Output PNG (OUT-0.png, OUT-1.png, ... for several images)."),
    model: Optional[str] = typer.Option(None, help="Pixel-space diffusion model: the embedded 'tiny-fashion' (default), a diffusers UNet2DModel / DDPM pipeline directory or hub name."),
    white_fills: bool = typer.Option(False, "--white-fills", help="Read masks the Stable Diffusion way: white = the region to fill."),
    prompt: Optional[str] = typer.Option(None, help="Caption for a text-conditioned model (else unconditional)."),
    steps: int = typer.Option(250, help="Respaced reverse steps (the paper's T)."),
    jump_length: int = typer.Option(10, help="Steps jumped back up the chain at each resampling."),
    jump_n_sample: int = typer.Option(10, help="Times each stretch is resampled (1 = no resampling)."),
    seed: int = typer.Option(0),
) -> None:
    """RePaint: fill the masked region with a pretrained DDPM; the kept region stays exactly as it was."""
    from modeledit.diffusion.jobs import inpaint_job

    with _errors(), _bar("RePaint", "UNet calls") as bar:
        s = inpaint_job(_load_diffusion(model), image, mask, out, white_fills=white_fills, prompt=prompt, seed=seed,
                        progress=bar, steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    console.print(f"{s['unet_calls']} UNet calls in {s['seconds']:.1f} s; max |output − input| outside the mask: "
                  f"{s['max_abs_error_outside_mask']:.2g}")
    console.print("written: " + ", ".join(s["outputs"]))


@app.command()
def imagic(
    image: Path = typer.Option(..., help="The real image to edit."),
    prompt: str = typer.Option(..., help="The target text, e.g. 'a pullover'."),
    out: Path = typer.Option(..., help="Directory: result.png (at --alpha), sheet.png (the α sweep), imagic.json, edit/."),
    model: Optional[str] = typer.Option(None, help="Text-conditioned model: the embedded 'tiny-fashion' (default) or a Stable-Diffusion-style pipeline."),
    alpha: Optional[float] = typer.Option(None, help="Interpolation weight of the target text for result.png (default 0.9, or the model's own)."),
    sweep: list[float] = typer.Option([0.0, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4], help="The α of the contact sheet (repeat the option)."),
    embed_steps: Optional[int] = typer.Option(None, help="Stage A: Adam steps on the text embedding (paper: 1000)."),
    embed_lr: Optional[float] = typer.Option(None, help="Stage A learning rate (paper: 1e-3)."),
    tune_steps: Optional[int] = typer.Option(None, help="Stage B: Adam steps fine-tuning the UNet (paper: 1500)."),
    tune_lr: Optional[float] = typer.Option(None, help="Stage B learning rate (paper: 1e-6, for large models)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale in stage C (default 3)."),
    seed: int = typer.Option(0, help="Seeds every random draw: the same seed gives the same images."),
) -> None:
    """Imagic: edit a real image toward a text (optimise the embedding, fine-tune, interpolate)."""
    from modeledit.diffusion.jobs import imagic_job

    with _errors(), ExitStack() as stack:
        bars: dict = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = stack.enter_context(_bar(stage, "steps"))
            bars[stage](done, total)

        given = dict(alpha=alpha, embed_steps=embed_steps, embed_lr=embed_lr, tune_steps=tune_steps, tune_lr=tune_lr, guidance=guidance)
        s = imagic_job(_load_diffusion(model), image, prompt, out, alphas=sweep, seed=seed, progress=progress,
                       **{k: v for k, v in given.items() if v is not None})
    console.print(f"stage A loss {s['info']['embed_loss_first']:.4f} → {s['info']['embed_loss_last']:.4f}, "
                  f"stage B loss → {s['info']['tune_loss_last']:.4f}, {s['info']['seconds']:.0f} s")
    console.print(f"written: {out / 'result.png'}, {out / 'sheet.png'}, {out / 'imagic.json'}, {out / 'edit'}")


