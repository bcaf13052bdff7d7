"""A thousand edits in a row on the packaged SmolLM2-135M: AlphaEdit and GRACE against MEMIT and ROME.

The first N cases of counterfact-train.json (default 1,000), batches of B (default 100), each batch edited
on the model holding every earlier one (``modeledit eval counterfact --sequential``); at each checkpoint
every case edited so far is scored, with held-out perplexity and the known facts retained (the unedited
model's scores and ability measured once, for every method, as ``modeledit compare --sequential`` does). Prints each
method's table and the time per batch, checks AlphaEdit's targets and GRACE's neighbourhood after all the
edits, and draws the curves of all methods in one plot. Resumable (even after kill -9): rerun the same
command.

    python benchmarks/sequential_smollm2.py [--cases 1000] [--batch 100] [--methods alphaedit,grace,memit,rome]

A method may carry settings of its dataclass after "@" (";" between them), run and plotted as its own curve:
``--methods alphaedit,alphaedit@nullspace_energy=0.01,alphaedit@layers=[4,5,6,7,8,9,10]``.
"""

from __future__ import annotations

import argparse
import json
import re
import logging
import time
from pathlib import Path

import modeledit as me
from modeledit.datafiles import data_dir
from modeledit.llm.ability import default_ability
from modeledit.llm.bench import get_benchmark
from modeledit.methods import configured_method
from modeledit.report import write_json
from modeledit.sequential import plot_sequential, run_sequential


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--methods", default="alphaedit,grace,memit,rome")
    ap.add_argument("--checkpoints", default="100,200,500,1000")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="runs/sequential-smollm2")
    ap.add_argument("--report-only", action="store_true",
                    help="edit nothing: print, check and plot the checkpoints the methods' runs have reached so far")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = data_dir(args.data, "counterfact-train.json")
    lm = me.load_model("smollm2-135m")
    cps = [int(c) for c in args.checkpoints.split(",") if int(c) <= args.cases]
    bench = get_benchmark("counterfact")
    cases = bench.load(data / "counterfact-train.json", args.cases)
    ability = default_ability(data / "known_1000.json")
    runs, report, known_pre = [], {}, {}  # the unedited scores and ability: measured once, for every method
    for name in re.split(r",(?![^\[]*\])", args.methods):  # commas inside [...] belong to a setting
        t = time.perf_counter()
        method_name, _, settings = name.partition("@")
        method = configured_method(method_name, settings=[s for s in settings.split(";") if s])
        where = Path(args.out) / name.replace("@", "-")
        if args.report_only:
            f = where / "checkpoints.jsonl"
            # read only (a run may be appending to it): whole lines, no repair
            lines = f.read_text().split("\n")[:-1] if f.exists() else []
            recs = sorted((json.loads(line) for line in lines if line.strip()), key=lambda r: r["edits"])
            if not recs:
                print(f"\n{name}: no checkpoint reached yet in {where}")
                continue
        else:
            result = run_sequential(lm, method, bench, cases, where, batch_size=args.batch, checkpoints=cps, ability=ability,
                                    known_pre=known_pre)
            known_pre.update(result["pre"])
            recs = result["checkpoints"]
        runs.append((name, recs))
        print(f"\n{name}: edits, ES, PS, NS (unedited {recs[0]['pre']['neighborhood_score']:.1f}), neighbourhood kept, "
              f"perplexity (unedited {recs[0]['ability_unedited']['perplexity']:.2f}), known facts kept, last batch s, scoring s")
        for r in recs:
            a = r.get("ability", {})
            print(f"  {r['edits']:5d}  {r['post']['efficacy_score']:5.1f}  {r['post']['paraphrase_score']:5.1f}  "
                  f"{r['post']['neighborhood_score']:5.1f}  {r['post'].get('neighborhood_kept', float('nan')):5.1f}  "
                  f"{a.get('perplexity', float('nan')):7.2f}  {a.get('known_retained') or 0:6.1%}  "
                  f"{r['last_batch_seconds'] or float('nan'):6.0f}  {r['measure_seconds']:6.0f}")
        # the run's own time across resumes: every batch's edit and every checkpoint's measurement (None when
        # a batch was edited before its time was recorded)
        spent = recs[-1].get("edit_seconds")
        run_seconds = spent + sum(r["measure_seconds"] for r in recs) if spent is not None else None
        print(f"  the run's own time: {run_seconds / 60:.1f} min (edits and checkpoints)" if run_seconds else
              f"  the run's own time: unknown (made before times were recorded); this call {(time.perf_counter() - t) / 60:.1f} min")
        report[name] = {"checkpoints": recs, "wall_seconds": None if args.report_only else time.perf_counter() - t,
                        "run_seconds": run_seconds}
    plot_sequential(runs, Path(args.out) / "sequential.png", f"counterfact-train, {lm.name}, batches of {args.batch}")
    for name in [n for n in report if n.startswith("alphaedit")]:
        last = report[name]["checkpoints"][-1]
        a, a0 = last.get("ability", {}), last.get("ability_unedited", {})
        checks = {
            "ES >= 90": last["post"]["efficacy_score"] >= 90,
            "PS >= 70": last["post"]["paraphrase_score"] >= 70,
            "NS drop <= 10": last["pre"]["neighborhood_score"] - last["post"]["neighborhood_score"] <= 10,
            "known facts kept >= 90%": (a.get("known_retained") or 0) >= 0.9,
            "perplexity up <= 10%": a.get("perplexity", float("inf")) <= 1.1 * a0.get("perplexity", 0),
            "whole run <= 60 min": (report[name]["run_seconds"] or float("inf")) <= 3600,
        }
        for k, v in checks.items():
            print(f"  [{'ok' if v else 'MISSED'}] {name} after {last['edits']} edits: {k}")
        report.setdefault("checks", {})[name] = checks
    if "grace" in report:
        last = report["grace"]["checkpoints"][-1]
        drop = last["pre"]["neighborhood_score"] - last["post"]["neighborhood_score"]
        print(f"  GRACE after {last['edits']} edits: NS {last['pre']['neighborhood_score']:.1f} -> {last['post']['neighborhood_score']:.1f} "
              f"(neighbourhood kept {last['post'].get('neighborhood_kept', float('nan')):.1f}%), paraphrase {last['post']['paraphrase_score']:.1f}")
        report.setdefault("checks", {})["GRACE NS drop <= 1"] = drop <= 1
    write_json(Path(args.out) / "bench.json", report)


if __name__ == "__main__":
    main()
