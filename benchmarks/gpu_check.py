"""The GPU check: what the 2-core CPU machines could not show, measured on a CUDA GPU in one run.

Prints (and writes to OUT/gpu_check.json, with the date, the GPU and the versions):
- ROME and MEMIT edits on the packaged SmolLM2-135M in bfloat16: statistics (one pass, uncached), then
  seconds per edit (ROME: median of several single edits; MEMIT: a batch of 10 requests);
- a 100-case CounterFact evaluation with ROME (ES, PS, NS, S ×100, unedited and edited; seconds per edit);
- the same ROME edit on SmolLM2 spread by a device map (the upper half of the layers offloaded to the
  CPU, computed on the GPU): its update beside the one-device update;
- RePaint on the embedded diffusion model and on a 32×32 pixel UNet: batch 1 and batch 16, and the batch
  ratio (seconds of a batch of 16 / 16 single runs; the target is < 0.2).

    python benchmarks/gpu_check.py [--cases 100] [--out runs/gpu-check]

Without a CUDA GPU it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch


def seconds(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def part_edits(lm, res: dict) -> None:
    import modeledit as me
    from modeledit.llm.bench.counterfact import load_counterfact
    from modeledit.datafiles import find_data

    rome, memit = me.get_method("rome"), me.get_method("memit")
    res["rome_statistics_s"] = seconds(lambda: rome.prepare(lm))
    res["memit_statistics_s"] = seconds(lambda: memit.prepare(lm))
    cases = load_counterfact(find_data("counterfact-val.json", "CounterFact", "set MODELEDIT_DATA"), 10)
    reqs = [c.request for c in cases]
    rome.edit(lm, reqs[0])  # warm-up (kernels, context templates)
    times = [seconds(lambda r=r: rome.edit(lm, r)) for r in reqs[:5]]
    res["rome_seconds_per_edit_median"], res["rome_seconds_per_edit_max"] = statistics.median(times), max(times)
    res["memit_batch10_s"] = seconds(lambda: memit.edit(lm, reqs))
    print(f"  statistics (uncached): ROME's layer {res['rome_statistics_s']:.1f} s, MEMIT's layers {res['memit_statistics_s']:.1f} s")
    print(f"  ROME: {res['rome_seconds_per_edit_median']:.2f} s per edit (median of 5; max {res['rome_seconds_per_edit_max']:.2f} s); "
          f"MEMIT: a batch of 10 in {res['memit_batch10_s']:.2f} s")


def part_counterfact(lm, cases: int, out: Path, res: dict) -> None:
    import modeledit as me
    from modeledit.datafiles import find_data

    data = find_data("counterfact-val.json", "CounterFact", "set MODELEDIT_DATA")
    t0 = time.perf_counter()
    s = me.evaluate(lm, data, out / "counterfact-rome", method="rome", limit=cases)
    res["counterfact"] = {"cases": s["n"], "wall_s": time.perf_counter() - t0, "pre": s["pre"], "post": s["post"], "cost": s["cost"]}
    keys = ("efficacy_score", "paraphrase_score", "neighborhood_score", "score")
    print(f"  CounterFact, {s['n']} cases, ROME (×100): " + ", ".join(f"{k} {s['pre'][k]:.1f} → {s['post'][k]:.1f}" for k in keys))
    print(f"  {s['cost']['seconds_per_edit_median']:.2f} s per edit (median), {res['counterfact']['wall_s']:.0f} s in all")


def part_device_map(lm, res: dict) -> None:
    import modeledit as me

    n = lm.layout.n_layers
    split = {name: 0 for name in ("model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head")}
    split.update({f"model.layers.{i}": (0 if i < n // 2 else "cpu") for i in range(n)})
    other = me.load_model("smollm2-135m", dtype="bfloat16", device_map=split)
    req = me.Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
    a, b = me.edit(lm, req, layer=10), me.edit(other, req, layer=10)
    name = lm.layout.weight_name(10)
    W = lm.model.get_parameter(name)
    da, db = a.entries[0].deltas[name].materialize(W), b.entries[0].deltas[name].materialize(W)
    res["device_map_relative_difference"] = float((da - db).norm() / da.norm())
    with b.applied(lm):  # made on the split model, applied on the one-device model
        res["device_map_patch_moves"] = lm.generate(req.text, 3)
    print(f"  ROME at layer 10 with layers {n // 2}..{n - 1} offloaded to the CPU: update differs by "
          f"{100 * res['device_map_relative_difference']:.2f}% (relative norm) from the one-device update; "
          f"its patch on the one-device model: {res['device_map_patch_moves']!r}")


def part_repaint(res: dict) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    import modeledit as me
    from modeledit.diffusion.model import from_components
    from modeledit.diffusion.repaint import RePaint
    from modeledit.diffusion.request import InpaintRequest

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64, 64),
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")).eval().to("cuda")
    models = {"embedded model, 28×28": (me.load_diffusion(device="cuda"), 28),
              "pixel UNet, 32×32": (from_components(unet, DDPMScheduler(num_train_timesteps=1000), name="speed-unet"), 32)}
    for label, (model, size) in models.items():
        image = torch.rand((1, 1, size, size), generator=torch.Generator().manual_seed(0))
        keep = torch.ones((1, 1, size, size), dtype=torch.bool)
        keep[..., size // 2 :, :] = False

        def run(batch: int) -> None:
            RePaint().edit(model, InpaintRequest(image.expand(batch, -1, -1, -1), keep), generator=torch.Generator().manual_seed(0))

        run(1)  # warm-up
        t1, t16 = min(seconds(lambda: run(1)) for _ in range(2)), min(seconds(lambda: run(16)) for _ in range(2))
        res[f"repaint {label}"] = {"batch1_s": t1, "batch16_s": t16, "batch16_over_16_singles": t16 / (16 * t1)}
        print(f"  RePaint ({label}, 2,410 UNet calls): batch 1 {t1:.2f} s, batch 16 {t16:.2f} s = {t16 / (16 * t1):.3f} of 16 single runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=100, help="CounterFact cases of the evaluation")
    ap.add_argument("--out", default="runs/gpu-check")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is False): "
              "run it on a machine with one, with a CUDA build of torch", file=sys.stderr)
        sys.exit(2)
    import modeledit as me
    from modeledit.report import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "model": "smollm2-135m, bfloat16"}
    print(f"{res['gpu']}, torch {res['torch']}, {res['date']}")
    lm = me.load_model("smollm2-135m", device="cuda", dtype="bfloat16")
    for name, part in (("edits", lambda: part_edits(lm, res)), ("counterfact", lambda: part_counterfact(lm, args.cases, out, res)),
                       ("device map", lambda: part_device_map(lm, res)), ("repaint", lambda: part_repaint(res))):
        print(name)
        part()
        write_json(out / "gpu_check.json", res)
    print(f"written: {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
