"""MQuAKE on this machine: do edits carry through multi-hop questions? The paper's table for a packaged model.

Runs ``modeledit compare --benchmark mquake`` on the first N cases of mquake-hard.json (default all 429):
each method at edits per batch 1 and all (``METHOD@all``), with the unedited model's row; prints the
table (edit-wise, multi-hop, hop-wise accuracy, ×100, and the seconds per edit and per case scored), how
many cases the unedited model answers, and the paper's finding to check: MeLLo's multi-hop accuracy above
the weight editors' at edits per batch = all. Resumable: rerun the same command after an interruption.

    python benchmarks/mquake.py [--model smollm2-135m|gemma3-270m] [--cases 429] [--methods mello@all,memit@all,...]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import modeledit as me
from modeledit.datafiles import data_dir
from modeledit.report import write_json

METHODS = "mello@all,ike@all,memit@all,rome@all,mello,ike,memit,rome"
WEIGHT_EDITORS = ("rome", "memit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cases", type=int, default=None, help="the first N cases (default: all 429)")
    ap.add_argument("--methods", default=METHODS, help="METHOD (edits per batch 1) or METHOD@all / METHOD@N")
    ap.add_argument("--cot", action="store_true", help="chain-of-thought prompting of the multi-hop questions")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None, help="default: runs/mquake-<model>")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = data_dir(args.data, "mquake-hard.json")
    out = Path(args.out or f"runs/mquake-{args.model}")
    lm = me.load_model(args.model)
    t = time.perf_counter()
    result = me.compare(lm, args.methods.split(","), data / "mquake-hard.json", out, benchmark="mquake", limit=args.cases, cot=args.cot)
    rows = {r["method"]: r for r in result["rows"]}
    print((out / "comparison.md").read_text())
    unedited = rows["unedited"]
    print(f"the unedited model answers {round(unedited['multi_hop'] * result['n'] / 100)} of {result['n']} multi-hop questions "
          f"(original answers), hop-wise {unedited['hop_wise']:.1f}")
    checks = {}
    if "mello@all" in rows:
        for w in WEIGHT_EDITORS:
            if f"{w}@all" in rows:
                checks[f"multi-hop: MeLLo above {w.upper()} at edits per batch = all"] = rows["mello@all"]["multi_hop"] > rows[f"{w}@all"]["multi_hop"]
    for k, v in checks.items():
        print(f"  [{'ok' if v else 'MISSED'}] {k}")
    write_json(out / "bench.json", {"rows": result["rows"], "n": result["n"], "checks": checks, "wall_seconds": time.perf_counter() - t})


if __name__ == "__main__":
    main()
