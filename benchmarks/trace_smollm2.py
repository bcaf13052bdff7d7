"""Causal tracing on the packaged SmolLM2-135M, this machine: seconds per trace (3 sweeps), side by side
with the reference's way of running it (one restoration per forward pass, every layer and token
recomputed; the noisy samples batched, as the reference does), on the same kernels in the same run.

Prints (and writes to OUT/bench.json):
- for the issue's example fact and the first N facts of known_1000 that the model gets right: prompt
  tokens, seconds for one full trace (hidden states, MLP and attention windows), clean / corrupted p;
- for the example fact: seconds the one-by-one way, the ratio, and the largest difference between the
  two grids (they must agree to float precision).

    python benchmarks/trace_smollm2.py [--facts 5] [--out runs/bench-trace]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import modeledit as me
from modeledit.llm.trace import trace
from modeledit.llm.trace_engine import KINDS, CausalTracer, Restore, TraceConfig, default_window, window_layers
from modeledit.llm.trace_prompt import prepare_prompt, subject_noise_level
from modeledit.llm.trace_many import knows, load_known


def one_by_one(lm, prompt, subject, target, config: TraceConfig) -> tuple[float, dict]:
    """Every restoration in its own forward pass from the embeddings up, over the whole prompt."""
    t = time.perf_counter()
    tp = prepare_prompt(lm, prompt, subject, target)
    noise = config.noise if config.noise is not None else subject_noise_level(lm, factor=config.noise_factor)
    tracer = CausalTracer(lm, tp, noise, config)
    L, w = lm.layout.n_layers, config.window or default_window(lm.layout.n_layers)
    grids = {}
    for kind in KINDS:
        grids[kind] = [
            [tracer._run_chunk([Restore(kind, (layer,) if kind == "hidden" else window_layers(layer, w, L), (tok,))], 0, 0)[0]
             for layer in range(L)]
            for tok in range(tp.n_prompt)
        ]
    return time.perf_counter() - t, grids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=5)
    ap.add_argument("--data", default=os.environ.get("MODELEDIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--out", default="runs/bench-trace")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    lm = me.load_model("smollm2-135m", device="cpu")
    config = TraceConfig()
    example = ("{} is located in the continent of", "Vinson Massif", " Antarctica")
    cases = [example]
    known = Path(args.data) / "known_1000.json"
    if known.exists():
        facts = load_known(known)[:200]
        cases += [(f.prompt, f.subject, f.answer) for f, ok in zip(facts, knows(lm, facts)) if ok][: args.facts]
    else:
        print(f"({known} not found: timing the example fact only)")
    subject_noise_level(lm)  # measured once per model; not part of a trace

    rows = []
    bf16 = TraceConfig(precision="bfloat16")
    print(f"{'prompt':50} {'tokens':>6} {'float32 s':>9} {'bfloat16 s':>10} {'clean p':>8} {'corrupt p':>9} {'max |Δp| bf16':>13}")
    for prompt, subject, target in cases:
        r = trace(lm, prompt, subject, target, config)
        b = trace(lm, prompt, subject, target, bf16)
        d = max(abs(x - y) for k in KINDS for ra, rb in zip(r.grids[k], b.grids[k]) for x, y in zip(ra, rb))
        rows.append({"prompt": r.prompt, "target": r.target, "tokens": len(r.tokens), "seconds": r.seconds,
                     "seconds_bfloat16": b.seconds, "max_grid_difference_bfloat16": d, "strongest_mlp": r.strongest("mlp"),
                     "strongest_mlp_bfloat16": b.strongest("mlp"),
                     "clean_prob": r.clean_prob, "corrupted_prob": r.corrupted_prob, "predicted": r.predicted})
        print(f"{r.prompt[:50]:50} {len(r.tokens):6d} {r.seconds:9.1f} {b.seconds:10.1f} {r.clean_prob:8.3f} {r.corrupted_prob:9.3f} {d:13.4f}")
        if (prompt, subject, target) == example:
            fast = r
    seconds = [x["seconds"] for x in rows]
    seconds_b = [x["seconds_bfloat16"] for x in rows]
    print(f"one trace (3 sweeps), float32: median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s over {len(rows)} facts (target ≤ 60 s)")
    print(f"one trace (3 sweeps), bfloat16: median {statistics.median(seconds_b):.1f} s, max {max(seconds_b):.1f} s; "
          f"largest probability difference to float32 {max(x['max_grid_difference_bfloat16'] for x in rows):.4f}; "
          f"same strongest MLP cell in {sum(all(x['strongest_mlp'][k] == x['strongest_mlp_bfloat16'][k] for k in ('token', 'layer')) for x in rows)}"
          f" of {len(rows)}")

    slow_s, slow = one_by_one(lm, *example, config)
    diff = max(abs(a - b) for k in KINDS for ra, rb in zip(fast.grids[k], slow[k]) for a, b in zip(ra, rb))
    print(f"example fact one restoration per pass: {slow_s:.1f} s vs {fast.seconds:.1f} s batched "
          f"({slow_s / fast.seconds:.1f}x); largest grid difference {diff:.1e}")
    result = {"traces": rows, "median_seconds": statistics.median(seconds), "max_seconds": max(seconds),
              "median_seconds_bfloat16": statistics.median(seconds_b), "max_seconds_bfloat16": max(seconds_b),
              "example_one_by_one_seconds": slow_s, "example_batched_seconds": fast.seconds,
              "speedup": slow_s / fast.seconds, "max_grid_difference": diff}
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    print(f"written: {out / 'bench.json'}")


if __name__ == "__main__":
    main()
