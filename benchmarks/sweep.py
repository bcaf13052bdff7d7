"""Where to edit, measured: the ROME paper's sweep (every layer × the six token positions) on the first N
cases of counterfact-val.json, then ROME at the layer it chooses on the first 100 cases against the
default layer, side by side.

Prints the best layer at the last subject token (by mean S) beside the causal-tracing peak when one is
stored for the model (``modeledit trace-many --set-layer``), the heatmaps' path, and the 100-case table;
checks the issue's targets (SmolLM2: ES ≥ 98, NS drop ≤ 5; Gemma-3: ES ≥ 95, NS drop ≤ 10). Resumable.

    python benchmarks/sweep.py [--model smollm2-135m|gemma3-270m] [--cases 50] [--layers 0,2,4,...] [--set name=value ...]

The partial sweeps in docs/bench were begun with the paper's update: resume them with --set prompt_key=false.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import modeledit as me
from modeledit.datafiles import data_dir
from modeledit.report import write_json

TARGETS = {"smollm2-135m": (98, 5), "gemma3-270m": (95, 10)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--layers", default="", help="comma-separated (default: every layer)")
    ap.add_argument("--eval-cases", type=int, default=100)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None, help="default: runs/sweep-<model>")
    ap.add_argument("--set", action="append", default=[], help="a ROME hyper-parameter, name=value (repeatable)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = data_dir(args.data, "counterfact-val.json") / "counterfact-val.json"
    out = Path(args.out or f"runs/sweep-{args.model}")
    lm = me.load_model(args.model)
    from modeledit.llm.layer_choice import chosen_layer
    from modeledit.llm.method import parse_settings
    from modeledit.llm.rome import ROMEHyperParams, default_layer

    hp = parse_settings(ROMEHyperParams, args.set)

    default, why = default_layer(lm)
    stored = chosen_layer(lm)
    layers = [int(x) for x in args.layers.split(",") if x.strip()] or None
    t0 = time.perf_counter()
    result = me.sweep(lm, data, out / "sweep", limit=args.cases, layers=layers, **hp)
    sweep_s = time.perf_counter() - t0
    best = result["best_last_subject"]
    print(f"sweep of {result['n_cases']} cases × {len(result['layers'])} layers × {len(result['tokens'])} positions: {sweep_s / 60:.0f} min; "
          f"heatmaps {out / 'sweep' / 'sweep.png'}")
    print(f"best S at the last subject token: layer {best['layer']} (S {best['score']:.1f}); default layer {default} ({why})"
          + (f"; stored choice {stored['layer']} ({stored['reason']})" if stored else ""))
    rows = {}
    for name, layer in (("default", default), ("sweep", best["layer"])):
        if name == "sweep" and layer == default:
            rows[name] = rows["default"]
            continue
        s = me.evaluate(lm, data, out / f"rome-layer{layer}", method=me.get_method("rome", **{**hp, "layer": layer}), limit=args.eval_cases)
        rows[name] = {"layer": layer, "pre": s["pre"], "post": s["post"], "cost": s["cost"]}
    print(f"\nROME on the first {args.eval_cases} cases: layer, ES, PS, NS (unedited NS {rows['default']['pre']['neighborhood_score']:.1f}), S")
    for name, r in rows.items():
        p = r["post"]
        print(f"  {name:8s} {r['layer']:3d}  {p['efficacy_score']:5.1f} {p['paraphrase_score']:5.1f} {p['neighborhood_score']:5.1f} {p['score']:5.1f}")
    es_min, drop_max = TARGETS.get(args.model, (95, 10))
    r = rows["sweep"]
    checks = {f"ES >= {es_min}": r["post"]["efficacy_score"] >= es_min,
              f"NS drop <= {drop_max}": r["pre"]["neighborhood_score"] - r["post"]["neighborhood_score"] <= drop_max}
    for k, v in checks.items():
        print(f"  [{'ok' if v else 'MISSED'}] ROME at the sweep's layer: {k}")
    write_json(out / "bench.json", {"sweep_seconds": sweep_s, "best": best, "default_layer": default, "stored": stored,
                                    "rows": rows, "checks": checks})


if __name__ == "__main__":
    main()
