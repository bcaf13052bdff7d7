"""float32 against bfloat16 for the value optimisation, on the packaged SmolLM2-135M, side by side in one run.

Prints (and writes OUT/bench.json):
- this machine's matmul GFLOP/s in float32 and bfloat16, at the loop's shapes and at 2048³;
- one ROME value optimisation (the Eiffel Tower request) in each precision: FLOPs counted by torch's
  FlopCounterMode, seconds, achieved GFLOP/s against the matmul of the same precision;
- MEMIT's targets for a batch of training cases (``--memit-batch``) in each precision: seconds per request;
- ROME on the first N cases of counterfact-val.json in each precision (the unedited scores computed once and
  shared): ES/PS/NS/S, the median seconds per edit, edits that did not take, and each run's wall time.

    python benchmarks/precision_smollm2.py [--cases 100] [--memit-batch 16] [--out runs/bench-precision]

Resumable: the CounterFact runs stream their cases (rerun the same command to continue).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import modeledit as me
from modeledit.report import machine
from modeledit.evaluation import run_evaluation
from modeledit.llm.bench import get_benchmark
from modeledit.llm.contexts import context_templates
from modeledit.llm.rows import build_rows
from modeledit.llm.value import optimise_values
from rome_smollm2 import matmul_gflops  # benchmarks/ is on the path when run as a script

PRECISIONS = ("float32", "bfloat16")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--memit-batch", type=int, default=16)
    ap.add_argument("--data", default=os.environ.get("MODELEDIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--out", default="runs/bench-precision")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "counterfact-val.json").exists():
        raise SystemExit(f"CounterFact data not found in {data}: pass --data DIR or set MODELEDIT_DATA")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine()}
    lm = me.load_model("smollm2-135m", device="cpu")
    H, I = lm.layout.hidden_size, lm.layout.intermediate_size

    mm = {p: {"loop_shape": matmul_gflops(128, H, I, dt), "2048": matmul_gflops(2048, 2048, 2048, dt, reps=5)}
          for p, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    result["matmul_gflops_per_s"] = mm
    for p in PRECISIONS:
        print(f"matmul {p}: {mm[p]['loop_shape']:.0f} GFLOP/s at 128x{H}x{I}, {mm[p]['2048']:.0f} GFLOP/s at 2048³")

    rome = me.get_method("rome")
    rome.prepare(lm)
    layer = rome.layer(lm)
    req = me.Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
    rows = build_rows(lm, req, context_templates(lm, rome.hparams.context_spec), (rome.hparams.kl_prompt,))
    result["value_optimisation"] = {}
    for p in PRECISIONS:
        hp = dataclasses.replace(rome.hparams.value, precision=p)
        optimise_values(lm, layer, rows, hp)  # warm-up
        with FlopCounterMode(display=False) as fc:
            optimise_values(lm, layer, rows, hp)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            (res,) = optimise_values(lm, layer, rows, hp)
            times.append(time.perf_counter() - t)
        gflops = fc.get_total_flops() / min(times) / 1e9
        result["value_optimisation"][p] = {"steps": res.steps, "seconds": min(times), "gflop": fc.get_total_flops() / 1e9,
                                           "gflops_per_s": gflops, "of_matmul": gflops / mm[p]["loop_shape"],
                                           "target_prob_after": res.target_prob[1]}
        print(f"ROME value optimisation, {p}: {res.steps} steps, {fc.get_total_flops() / 1e9:.0f} GFLOP in {min(times):.2f} s "
              f"= {gflops:.0f} GFLOP/s ({gflops / mm[p]['loop_shape']:.0%} of the {p} matmul); P(target) {res.target_prob[1]:.3f}")

    memit = me.get_method("memit")
    bench = get_benchmark("counterfact", gen_tokens=0)
    train = bench.load(data / "counterfact-train.json", args.memit_batch)
    reqs = [r for c in train for r in bench.requests(c)]
    rows = build_rows(lm, reqs, context_templates(lm, memit.hparams.context_spec), (memit.hparams.kl_prompt,))
    result["memit_targets"] = {}
    for p in PRECISIONS:
        t = time.perf_counter()
        res = optimise_values(lm, max(memit.layers(lm)), rows, dataclasses.replace(memit.hparams.value, precision=p), at="block")
        s = (time.perf_counter() - t) / len(reqs)
        result["memit_targets"][p] = {"requests": len(reqs), "seconds_per_request": s,
                                      "target_prob_after_mean": sum(r.target_prob[1] for r in res) / len(res)}
        print(f"MEMIT targets, {len(reqs)} requests in one batch, {p}: {s:.2f} s per request, "
              f"mean P(target) {result['memit_targets'][p]['target_prob_after_mean']:.3f}")

    cases = bench.load(data / "counterfact-val.json", args.cases)
    known_pre: dict = {}
    result["counterfact"] = {}
    for p in PRECISIONS:
        d = out / f"rome-{p}"
        t = time.perf_counter()
        summary = run_evaluation(lm, me.get_method("rome", precision=p), bench, cases, d, known_pre=known_pre)
        wall = time.perf_counter() - t
        with open(d / "cases.jsonl", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                known_pre.setdefault(r["case_id"], r["pre"])
        result["counterfact"][p] = {"summary": summary, "wall_seconds_this_call": wall}
    pre = result["counterfact"]["float32"]["summary"]["pre"]
    posts = {p: result["counterfact"][p]["summary"]["post"] for p in PRECISIONS}
    print(f"\nROME on the first {len(cases)} cases of counterfact-val.json (x100), answers compared by token-mean log-probability")
    print(f"{'':24}{'unedited':>10}" + "".join(f"{p:>10}" for p in PRECISIONS))
    for k in ("efficacy_score", "paraphrase_score", "neighborhood_score", "score"):
        print(f"{k:24}{pre[k]:10.1f}" + "".join(f"{posts[p][k]:10.1f}" for p in PRECISIONS))
    for p in PRECISIONS:
        s = result["counterfact"][p]["summary"]
        print(f"{p}: median {s['cost']['seconds_per_edit_median']:.2f} s per edit, {s['cost']['gradient_steps_mean']:.1f} steps, "
              f"{s['edits_not_taken']} edits did not take, wall {result['counterfact'][p]['wall_seconds_this_call']:.0f} s this call")
    f32, b16 = (result["counterfact"][p]["summary"] for p in PRECISIONS)
    checks = {
        "bf16 median edit <= 2 s": b16["cost"]["seconds_per_edit_median"] <= 2.0,
        "bf16 ES/PS/NS within 1 point of fp32": all(abs(posts["bfloat16"][k] - posts["float32"][k]) <= 1.0
                                                     for k in ("efficacy_score", "paraphrase_score", "neighborhood_score")),
        "speed-up of the median edit": f32["cost"]["seconds_per_edit_median"] / b16["cost"]["seconds_per_edit_median"],
    }
    result["checks"] = checks
    for k, v in checks.items():
        print(f"  {k}: {v if not isinstance(v, bool) else ('ok' if v else 'MISSED')}")
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten: {out / 'bench.json'}")


if __name__ == "__main__":
    main()
