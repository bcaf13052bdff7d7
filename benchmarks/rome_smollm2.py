"""ROME on the packaged SmolLM2-135M, this machine: quality on CounterFact and speed, side by side.

Prints (and writes to OUT/bench.json):
- statistics: seconds to collect C = E[k kᵀ] for the layer(s) ROME needs, one pass over ~100k tokens of
  the embedded corpus (uncached), and the reference implementation's 149 s for one layer beside it;
- CounterFact: ES, PS, NS, S, GE ×100, unedited vs edited, on the first N cases of counterfact-val.json;
- edit time: median and max seconds per edit (statistics cached, model loaded), vs the reference's 43 s;
- the achieved GFLOP/s of the value optimisation (FLOPs counted by torch's FlopCounterMode) against a
  plain torch.matmul of the same shapes and of 2048³, measured in this run.

    python benchmarks/rome_smollm2.py [--cases 100] [--out runs/bench-rome]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import modeledit as me
from modeledit.report import machine
from modeledit.llm.contexts import context_templates
from modeledit.llm.corpus import resolve_corpus
from modeledit.llm.rows import build_rows
from modeledit.llm.stats import collect_second_moments
from modeledit.llm.value import optimise_values

REF_SECONDS_PER_EDIT = 43.0
REF_STATS_SECONDS_ONE_LAYER = 149.0


def matmul_gflops(n: int, k: int, m: int, dtype: torch.dtype = torch.float32, reps: int = 50) -> float:
    """GFLOP/s of an (n×k)·(k×m) matmul in ``dtype``, the right factor laid out as nn.Linear keeps it."""
    a, b = torch.randn(n, k, dtype=dtype), torch.randn(m, k, dtype=dtype).T
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n * k * m * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--data", default=os.environ.get("MODELEDIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--out", default="runs/bench-rome-smollm2")
    ap.add_argument("--gen-tokens", type=int, default=40)
    args = ap.parse_args()
    data = Path(args.data) / "counterfact-val.json"
    if not data.exists():
        raise SystemExit(f"CounterFact data not found at {data}: pass --data DIR or set MODELEDIT_DATA")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine()}

    t = time.perf_counter()
    lm = me.load_model("smollm2-135m", device="cpu")
    result["load_seconds"] = time.perf_counter() - t
    method = me.get_method("rome")
    layers = method.layers(lm)

    # statistics: one uncached pass over ~100k tokens for the layers ROME needs
    cfg = method.hparams.stats
    t = time.perf_counter()
    moments = collect_second_moments(lm, layers, resolve_corpus(cfg.corpus), cfg)
    stats_s = time.perf_counter() - t
    tokens = next(iter(moments.values()))[1]
    result["stats"] = {"layers": layers, "tokens": tokens, "seconds": stats_s, "reference_seconds_one_layer": REF_STATS_SECONDS_ONE_LAYER,
                       "speedup_vs_reference": REF_STATS_SECONDS_ONE_LAYER / stats_s}
    print(f"statistics: layers {layers}, {tokens} tokens, {stats_s:.1f} s (reference: {REF_STATS_SECONDS_ONE_LAYER:.0f} s for one layer) "
          f"-> {REF_STATS_SECONDS_ONE_LAYER / stats_s:.1f}x")
    # and what every layer of the model costs in the same single pass
    t = time.perf_counter()
    collect_second_moments(lm, list(range(lm.layout.n_layers)), resolve_corpus(cfg.corpus), cfg)
    result["stats"]["all_layers_seconds"] = time.perf_counter() - t
    print(f"statistics of all {lm.layout.n_layers} layers in one pass: {result['stats']['all_layers_seconds']:.1f} s")

    # value optimisation: FLOPs and GFLOP/s vs plain matmul, same run
    method.prepare(lm)
    req = me.Request("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
    rows = build_rows(lm, req, context_templates(lm, method.hparams.context_spec), (method.hparams.kl_prompt,))
    optimise_values(lm, layers[0], rows, method.hparams.value)  # warm-up
    with FlopCounterMode(display=False) as fc:
        optimise_values(lm, layers[0], rows, method.hparams.value)
    flops = fc.get_total_flops()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        (res,) = optimise_values(lm, layers[0], rows, method.hparams.value)
        times.append(time.perf_counter() - t)
    tokens_per_step = int(rows.attention_mask.sum())
    achieved = flops / min(times) / 1e9
    mm_same = matmul_gflops(150, lm.layout.hidden_size, lm.layout.intermediate_size)
    mm_big = matmul_gflops(2048, 2048, 2048, reps=10)
    result["value_optimisation"] = {
        "gradient_steps": res.steps, "seconds": min(times), "gflop": flops / 1e9, "gflops_per_s": achieved,
        "matmul_gflops_per_s_150x576x1536": mm_same, "matmul_gflops_per_s_2048": mm_big,
        "fraction_of_matmul_same_shape": achieved / mm_same, "rows_tokens": tokens_per_step,
    }
    print(f"value optimisation: {res.steps} steps, {flops / 1e9:.0f} GFLOP in {min(times):.2f} s = {achieved:.0f} GFLOP/s; "
          f"plain matmul: {mm_same:.0f} GFLOP/s (150x576x1536), {mm_big:.0f} GFLOP/s (2048³) -> {achieved / mm_same:.0%} of matmul")

    # CounterFact: quality and per-edit time
    t = time.perf_counter()
    summary = me.evaluate(lm, data, out / "counterfact", method=method, limit=args.cases, gen_tokens=args.gen_tokens)
    result["counterfact"] = summary
    result["counterfact_wall_seconds"] = time.perf_counter() - t
    pre, post, cost = summary["pre"], summary["post"], summary["cost"]
    print(f"\nCounterFact, first {summary['n']} cases of counterfact-val.json (x100)")
    print(f"{'metric':24}{'unedited':>10}{'ROME':>10}")
    for k in pre:
        print(f"{k:24}{pre[k]:10.1f}{post[k]:10.1f}")
    med = cost["seconds_per_edit_median"]
    print(f"seconds per edit: median {med:.2f}, max {cost['seconds_per_edit_max']:.2f} "
          f"(reference: {REF_SECONDS_PER_EDIT:.0f} s -> {REF_SECONDS_PER_EDIT / med:.1f}x); peak RSS {cost['peak_rss_mb']:.0f} MiB")
    checks = {
        "ES >= 95": post["efficacy_score"] >= 95,
        "PS >= 60": post["paraphrase_score"] >= 60,
        "NS within 10 of unedited": post["neighborhood_score"] >= pre["neighborhood_score"] - 10,
        "median edit <= 5 s": med <= 5.0,
        "statistics <= 150 s": stats_s <= 150.0,
    }
    result["checks"] = checks
    for k, v in checks.items():
        print(f"  [{'ok' if v else 'MISSED'}] {k}")
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten: {out / 'bench.json'}")


if __name__ == "__main__":
    main()
