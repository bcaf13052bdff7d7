"""The diffusion family on the embedded model, judged by the committed classifier. Three parts:

repaint  200 test images, lower half masked: max |output − input| outside the mask (after PNG rounding),
         and the judge's accuracy on the inpainted images with resampling (jump_n_sample 10) and without
         (1, at its own and at a larger step count), each with its UNet calls.
imagic   50 test images, each edited toward a random other class's caption: the judge's probability of
         the target class per α, success (judge's argmax = target) at the chosen α, and the pixel MSE to
         the source beside that of a fresh sample of the target class (same seed). Resumable.
         `--imagic-split train` runs it on training images instead: where α and settings are chosen.
speed    RePaint on one pixel UNet2DModel and schedule: modeledit vs diffusers' RePaintPipeline at batch 1,
         and a batch of 16 vs 16 single runs (that UNet and the embedded model); ratios from one run, side by side.

    python benchmarks/diffusion_fashion.py [--part repaint|imagic|speed|all] [--out runs/bench-diffusion]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

import modeledit as me
from modeledit.diffusion.imagic import Imagic, ImagicHyperParams
from modeledit.diffusion.io import contact_sheet
from modeledit.diffusion.repaint import RePaint, unet_calls
from modeledit.diffusion.request import ImagicRequest, InpaintRequest
from modeledit.diffusion.sample import sample
from modeledit.diffusion.tiny import default_prompt
from modeledit.images import load_fashion_mnist
from modeledit.report import CaseLog, start_run, write_json


def judge_probs(judge, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(judge.module(images.to(judge.device)), -1).cpu()


def part_repaint(args, model, judge, data, out: Path) -> dict:
    n = args.repaint_images
    x = data.test.images[:n]  # exact multiples of 1/255
    y = data.test.labels[:n]
    keep = torch.ones((1, 1, 28, 28), dtype=torch.bool)
    keep[..., 14:, :] = False
    res: dict = {"images": n, "judge_on_originals": float((judge_probs(judge, x).argmax(1) == y).float().mean()),
                 "judge_on_upper_halves": float((judge_probs(judge, x * keep).argmax(1) == y).float().mean())}
    runs = {"no resampling (jump_n_sample 1)": dict(steps=250, jump_n_sample=1),
            "no resampling, 1000 steps": dict(steps=1000, jump_n_sample=1),
            "resampling (jump_n_sample 10)": dict(steps=250, jump_n_sample=10)}
    shown = [x[:8]]
    for name, hp in runs.items():
        method = RePaint(**hp)
        t0 = time.perf_counter()
        outs = torch.cat([method.edit(model, InpaintRequest(x[b : b + args.batch], keep), generator=torch.Generator().manual_seed(b))
                          for b in range(0, n, args.batch)])
        seconds = time.perf_counter() - t0
        q = (outs * 255).round() / 255  # what a PNG holds
        err = float((q - x).abs()[keep.expand_as(x)].max())
        acc = float((judge_probs(judge, q).argmax(1) == y).float().mean())
        res[name] = {"unet_calls": unet_calls(method.hparams), "judge_accuracy": acc, "max_abs_error_outside_mask": err,
                     "seconds": seconds}
        print(f"  {name:36} {unet_calls(method.hparams):5d} UNet calls  judge accuracy {100 * acc:5.1f}%  "
              f"max error outside mask {err:.2g}  {seconds:.0f} s")
        shown.append(q[:8])
    contact_sheet([im for row in shown for im in row], ["input"] * 8 + [f"jn={h['jump_n_sample']}, T={h['steps']}" for h in runs.values() for _ in range(8)],
                  out / "repaint_examples.png", columns=8, title="RePaint on the embedded model: lower half filled")
    return res


def part_imagic(args, model, judge, data, out: Path) -> dict:
    given = dict(embed_steps=args.embed_steps, tune_steps=args.tune_steps, tune_lr=args.tune_lr, batch=args.imagic_batch, alpha=args.alpha)
    hp = ImagicHyperParams(**{**model.recommended.get("imagic", {}), **{k: v for k, v in given.items() if v is not None}})
    alphas = sorted(set(args.alphas) | {hp.alpha})
    split = getattr(data, args.imagic_split)  # "train" images to choose settings on, "test" to report
    run = {"kind": "imagic-bench", "hparams": hp.__dict__, "alphas": alphas, "images": args.imagic_images, "split": args.imagic_split}
    d = start_run(out / "imagic", run)
    cases = CaseLog(d / "cases.jsonl", key="index")
    rng = random.Random(0)
    plan = [(i, int(split.labels[i]), (int(split.labels[i]) + rng.randrange(1, 10)) % 10) for i in range(args.imagic_images)]
    classes = model.classes
    examples = []
    for i, src, tgt in plan:
        if i in cases.done:
            continue
        image = split.images[i : i + 1]
        prompt = default_prompt(classes[tgt])
        t0 = time.perf_counter()
        edit = Imagic(**hp.__dict__).edit(model, ImagicRequest(image, prompt), seed=i)
        imgs = edit.generate(model, alphas, seed=i)
        fresh = sample(model, model.encode_text([prompt]), steps=hp.sample_steps, guidance=hp.guidance,
                       generator=torch.Generator().manual_seed(i))
        p = judge_probs(judge, torch.cat([imgs, fresh]))
        mse = ((torch.cat([imgs, fresh]) - image) ** 2).flatten(1).mean(1)
        cases.write({"index": i, "source": src, "target": tgt, "prompt": prompt, "alphas": alphas,
                     "p_target": p[:-1, tgt].tolist(), "argmax": p[:-1].argmax(1).tolist(), "mse": mse[:-1].tolist(),
                     "fresh_p_target": float(p[-1, tgt]), "fresh_mse": float(mse[-1]), "seconds": time.perf_counter() - t0,
                     "info": edit.info})
        if len(examples) < 6:
            examples.append((image[0], imgs, prompt))
        print(f"  image {i}: {classes[src]} → {prompt!r}  P(target) by α: " + " ".join(f"{v:.2f}" for v in p[:-1, tgt].tolist()))
    recs = sorted(cases.records, key=lambda r: r["index"])
    k = alphas.index(hp.alpha)
    res = {"images": len(recs), "alphas": alphas, "chosen_alpha": hp.alpha, "hparams": hp.__dict__,
           "mean_p_target_by_alpha": [sum(r["p_target"][j] for r in recs) / len(recs) for j in range(len(alphas))],
           "success_rate": sum(r["argmax"][k] == r["target"] for r in recs) / len(recs),
           "mse_to_source": sum(r["mse"][k] for r in recs) / len(recs),
           "fresh_sample_mse_to_source": sum(r["fresh_mse"] for r in recs) / len(recs),
           "closer_than_fresh_rate": sum(r["mse"][k] < r["fresh_mse"] for r in recs) / len(recs),
           "seconds_per_image": sum(r["seconds"] for r in recs) / len(recs)}
    if examples:
        contact_sheet([im for src, imgs, _ in examples for im in [src, *imgs]],
                      [t for _, _, pr in examples for t in [pr[:18], *[f"α={a:g}" for a in alphas]]],
                      out / "imagic_examples.png", columns=len(alphas) + 1, title="Imagic on the embedded model")
    return res


def part_speed(args, out: Path) -> dict:
    from diffusers import DDPMScheduler, RePaintPipeline, RePaintScheduler, UNet2DModel

    from modeledit.diffusion.model import from_components

    torch.manual_seed(0)
    size = 32  # diffusers' pipeline rounds to multiples of 32 for masks; give it a size it takes
    unet = UNet2DModel(sample_size=size, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64, 64),
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")).eval().to(args.device)
    ddpm = DDPMScheduler(num_train_timesteps=1000)
    model = from_components(unet, ddpm, name="speed-unet")
    hp = dict(steps=args.speed_steps, jump_length=10, jump_n_sample=10)
    image = torch.rand((1, 1, size, size), generator=torch.Generator().manual_seed(0))
    keep = torch.ones((1, 1, size, size), dtype=torch.bool)
    keep[..., size // 2 :, :] = False
    pipe = RePaintPipeline(unet=unet, scheduler=RePaintScheduler.from_config(ddpm.config))  # shares the UNet: runs on its device
    pipe.set_progress_bar_config(disable=True)

    def ours(batch: int) -> float:
        t0 = time.perf_counter()
        RePaint(**hp).edit(model, InpaintRequest(image.expand(batch, -1, -1, -1), keep), generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - t0

    def theirs() -> float:
        t0 = time.perf_counter()
        pipe(image=image * 2 - 1, mask_image=keep.float(), num_inference_steps=hp["steps"], jump_length=10, jump_n_sample=10,
             eta=1.0, generator=torch.Generator().manual_seed(0), output_type="np")
        return time.perf_counter() - t0

    ours(1), theirs()  # warm-up
    t_ours = min(ours(1) for _ in range(args.repeats))
    t_theirs = min(theirs() for _ in range(args.repeats))
    t_batch = min(ours(16) for _ in range(args.repeats))
    res = {"unet_calls": unet_calls(RePaint(**hp).hparams), "modeledit_batch1_s": t_ours, "diffusers_batch1_s": t_theirs,
           "speedup_vs_diffusers": t_theirs / t_ours, "batch16_s": t_batch, "batch16_over_16_singles": t_batch / (16 * t_ours)}
    print(f"  {res['unet_calls']} UNet calls, {size}×{size}: modeledit {t_ours:.2f} s, diffusers RePaintPipeline {t_theirs:.2f} s "
          f"→ {res['speedup_vs_diffusers']:.2f}x (target ≥ 1); batch of 16 {t_batch:.2f} s = "
          f"{res['batch16_over_16_singles']:.3f} of 16 single runs (target < 0.2)")
    # the same batch ratio on the embedded model (28×28, unconditional fill)
    tiny = me.load_diffusion(device=args.device)
    x28 = torch.rand((1, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    keep28 = torch.ones((1, 1, 28, 28), dtype=torch.bool)
    keep28[..., 14:, :] = False

    def embedded(batch: int) -> float:
        t0 = time.perf_counter()
        RePaint(**hp).edit(tiny, InpaintRequest(x28.expand(batch, -1, -1, -1), keep28), generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - t0

    embedded(1)
    e1 = min(embedded(1) for _ in range(args.repeats))
    e16 = min(embedded(16) for _ in range(args.repeats))
    res.update({"embedded_batch1_s": e1, "embedded_batch16_s": e16, "embedded_batch16_over_16_singles": e16 / (16 * e1)})
    print(f"  embedded model, 28×28: batch 1 {e1:.2f} s, batch of 16 {e16:.2f} s = {e16 / (16 * e1):.3f} of 16 single runs")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["repaint", "imagic", "speed", "all"], default="all")
    ap.add_argument("--out", default="runs/bench-diffusion")
    ap.add_argument("--repaint-images", type=int, default=200)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--imagic-images", type=int, default=50)
    # Imagic: the model's recommended settings unless given
    ap.add_argument("--embed-steps", type=int)
    ap.add_argument("--tune-steps", type=int)
    ap.add_argument("--tune-lr", type=float)
    ap.add_argument("--imagic-batch", type=int)
    ap.add_argument("--alpha", type=float)
    ap.add_argument("--imagic-split", choices=["test", "train"], default="test")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.4, 0.6, 0.8, 1.0, 1.2])
    ap.add_argument("--speed-steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="Where the speed part runs (cpu, cuda, ...); every result returns to the CPU, which synchronises.")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "bench.json").read_text()) if (out / "bench.json").exists() else {}
    parts = ["repaint", "imagic", "speed"] if args.part == "all" else [args.part]
    if {"repaint", "imagic"} & set(parts):
        model, judge, data = me.load_diffusion(), me.load_judge(), load_fashion_mnist()
    for part in parts:
        print(f"{part}:")
        results[part] = part_speed(args, out) if part == "speed" else globals()[f"part_{part}"](args, model, judge, data, out)
        write_json(out / "bench.json", results)
    print(json.dumps({p: results[p] for p in parts}, indent=1))
    print("written:", out / "bench.json")


if __name__ == "__main__":
    main()
