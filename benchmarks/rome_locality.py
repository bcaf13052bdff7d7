"""ROME's locality on one model, side by side: settings of ROME (the paper's, guard_subjects=0; the norm
clamp at 2; the guard of the 8 subjects its update reaches most, ROME's default on a model that normalises
its MLP's output again, as Gemma-3; guard and clamp) on the first N cases of counterfact-val.json.

Prints ES, PS, NS and S per setting, the NS drop against the unedited model, the edits that did not take
and the median seconds per edit; checks the issue's target for the model (Gemma-3-270M: ES ≥ 95 and NS
drop ≤ 10; SmolLM2-135M: ES ≥ 98 and NS drop ≤ 5). Each setting is a resumable evaluation in
OUT/<setting>/ (a finished one is read back, not rerun).

    python benchmarks/rome_locality.py [--model gemma3-270m] [--cases 100] \
        [--settings "guard_subjects=0;guard_subjects=0,clamp_norm_factor=2.0;guard_subjects=8;default"]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import modeledit as me
from modeledit.datafiles import data_dir
from modeledit.report import write_json

TARGETS = {"smollm2-135m": (98, 5), "gemma3-270m": (95, 10)}
SETTINGS = "guard_subjects=0;guard_subjects=0,clamp_norm_factor=2.0;guard_subjects=8;guard_subjects=8,clamp_norm_factor=2.0"


def parse(setting: str) -> dict:
    """'name=value,name=value' (or 'default') → ROME's hyper-parameters."""
    out = {}
    for part in setting.split(","):
        if part.strip() and part.strip() != "default":
            k, v = part.split("=")
            out[k.strip()] = float(v) if "." in v else int(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--settings", default=SETTINGS, help="';'-separated settings, each 'name=value,...' or 'default'")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None, help="default: runs/rome-locality-<model>-<cases>")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = data_dir(args.data, "counterfact-val.json") / "counterfact-val.json"
    out = Path(args.out or f"runs/rome-locality-{args.model}-{args.cases}")
    lm = me.load_model(args.model)
    rows = {}
    for setting in [s.strip() for s in args.settings.split(";") if s.strip()]:
        s = me.evaluate(lm, data, out / setting, method=me.get_method("rome", **parse(setting)), limit=args.cases)
        seconds = [json.loads(line)["seconds"] for line in (out / setting / "cases.jsonl").open()]
        rows[setting] = {"pre": s["pre"], "post": s["post"], "not_taken": s["edits_not_taken"], "median_seconds": statistics.median(seconds)}
    es_min, drop_max = TARGETS.get(args.model, (95, 10))
    pre = next(iter(rows.values()))["pre"]
    print(f"ROME on {args.model}, first {args.cases} cases of counterfact-val: unedited ES {pre['efficacy_score']:.1f}, "
          f"PS {pre['paraphrase_score']:.1f}, NS {pre['neighborhood_score']:.1f}")
    print(f"  {'setting':40s}   ES    PS    NS  drop     S  not taken  s/edit  target (ES >= {es_min}, drop <= {drop_max})")
    for name, r in rows.items():
        p = r["post"]
        drop = r["pre"]["neighborhood_score"] - p["neighborhood_score"]
        r["target"] = p["efficacy_score"] >= es_min and drop <= drop_max
        print(f"  {name:40s} {p['efficacy_score']:5.1f} {p['paraphrase_score']:5.1f} {p['neighborhood_score']:5.1f} {drop:5.1f} "
              f"{p['score']:5.1f} {r['not_taken']:10d} {r['median_seconds']:7.2f}  {'ok' if r['target'] else 'MISSED'}")
    write_json(out / "bench.json", {"model": args.model, "cases": args.cases, "rows": rows})


if __name__ == "__main__":
    main()
