"""MEND on the packaged SmolLM2-135M, this machine: its editor trained here, then edits beside ROME's.

Parts (each resumable: rerun the same command after an interruption — training continues from its last
checkpoint without repeating a step, the evaluation from its last case):

- ``counterfact``: MEND trained on counterfact-train.json (MEND-CF, as in the ROME paper; 10 edits a
  step, the held-out tenth — at most 200 cases — for early stopping), then the first N (200) cases of
  counterfact-val.json edited one at a time by MEND and by ROME in one comparison (``me.compare``: the one
  evaluation loop), printing ES, PS, NS, S and the median seconds per edit of both, and the checks of
  issue 17: ROME's S above MEND's (the paper's finding), MEND the faster, MEND's median ≤ 0.1 s per edit.
- ``zsre``: MEND trained on cases 500-999 of zsre-train-1k.json, the first N (500) cases — none of them
  trained on — edited by MEND and ROME: efficacy, paraphrase, specificity. The paper trained on ~100k
  zsRE examples; 500 is what this file leaves after the evaluation cases.

    python benchmarks/mend_smollm2.py --part counterfact [--cases 200] [--steps 1000] [--out runs/bench-mend]
    python benchmarks/mend_smollm2.py --part zsre [--cases 500] [--steps 1000]
    python benchmarks/mend_smollm2.py --part counterfact --cases 2 --steps 3 --train-limit 60 --out /tmp/mend-smoke   # a quick check
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


import modeledit as me
from modeledit.datafiles import data_dir
from modeledit.report import machine, write_json

ZSRE_TRAIN_FROM = 500  # zsRE cases 500-999 train the editor; 0-499 are the evaluation's


def train(lm, data_file: Path, out: Path, steps: int, skip: int = 0, limit: int | None = None) -> dict:
    """The editor, trained (or resumed) into ``out``; not installed as the model's default (the comparison
    names it)."""
    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total or time.perf_counter() - last[0] > 300:
            last[0] = time.perf_counter()
            logging.info("MEND training: step %d of at most %d", done, total)

    s = me.train_mend(lm, data_file, out, skip=skip, limit=limit, max_steps=steps, install=False, progress=progress)
    first, best = s["first_validation"], s["best_validation"]
    print(f"MEND trained on {data_file.name} ({s['train_cases']} cases, {s['val_cases']} held out): {s['steps']} steps in "
          f"{s['seconds'] / 60:.1f} min, peak RSS {s['peak_rss_mb']:.0f} MiB; {s['stopped']}")
    print(f"  held-out edits: loss {first['edit']:.3f} -> {best['edit']:.3f} (step {best['step']}), locality KL {first['loc']:.4f} -> "
          f"{best['loc']:.4f}, targets top-1 {100 * first['accuracy']:.1f}% -> {100 * best['accuracy']:.1f}%; curve: {s['curve']}")
    return s


def part_counterfact(lm, data: Path, out: Path, cases: int, steps: int, train_limit: int | None) -> dict:
    trained = train(lm, data / "counterfact-train.json", out / "mend-cf", steps, limit=train_limit)
    result = me.compare(lm, ["rome", "mend"], data / "counterfact-val.json", out / "compare-cf", limit=cases,
                        settings={"mend": {"editor": str(out / "mend-cf")}})
    rows = {r["method"]: r for r in result["rows"]}
    print((out / "compare-cf" / "comparison.md").read_text())
    for m in ("unedited", "rome", "mend"):
        r = rows[m]
        secs = "—" if r["seconds_per_edit"] is None else f"{r['seconds_per_edit']:.3f}"
        print(f"{m:>9}: ES {r['efficacy_score']:.1f}  PS {r['paraphrase_score']:.1f}  NS {r['neighborhood_score']:.1f}  "
              f"S {r['score']:.1f}  median s/edit {secs}")
    rome, mend = rows["rome"], rows["mend"]
    checks = {
        "S(ROME) > S(MEND) (the paper's finding)": rome["score"] > mend["score"],
        "MEND faster per edit than ROME (median)": mend["seconds_per_edit"] < rome["seconds_per_edit"],
        "MEND median <= 0.1 s per edit": mend["seconds_per_edit"] <= 0.1,
        "MEND trained within an hour": trained["seconds"] <= 3600,
        "MEND training peak memory < 8 GiB": trained["peak_rss_mb"] < 8 * 1024,
    }
    for k, v in checks.items():
        print(f"  [{'ok' if v else 'MISSED'}] {k}")
    return {"training": trained, "rows": result["rows"], "checks": checks}


def part_zsre(lm, data: Path, out: Path, cases: int, steps: int, train_limit: int | None) -> dict:
    if cases > ZSRE_TRAIN_FROM:
        raise SystemExit(f"--cases {cases}: the first {ZSRE_TRAIN_FROM} zsRE cases are the evaluation's; the rest train the editor")
    trained = train(lm, data / "zsre-train-1k.json", out / "mend-zsre", steps, skip=ZSRE_TRAIN_FROM, limit=train_limit)
    result = me.compare(lm, ["rome", "mend"], data / "zsre-train-1k.json", out / "compare-zsre", benchmark="zsre", limit=cases,
                        settings={"mend": {"editor": str(out / "mend-zsre")}})
    print((out / "compare-zsre" / "comparison.md").read_text())
    print(f"caveat: MEND's editor saw {trained['train_cases']} zsRE edits here; the paper trained it on ~100k.")
    return {"training": trained, "rows": result["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["counterfact", "zsre"], default="counterfact")
    ap.add_argument("--cases", type=int, default=None, help="evaluation cases: counterfact 200, zsre 500")
    ap.add_argument("--steps", type=int, default=1000, help="most training steps of 10 edits (1000: one pass over counterfact-train)")
    ap.add_argument("--train-limit", type=int, default=None, help="only the first N training cases (a quick check)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="runs/bench-mend")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data, out = data_dir(args.data, "counterfact-val.json"), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = me.load_model("smollm2-135m", device="cpu")
    t = time.perf_counter()
    if args.part == "counterfact":
        res = part_counterfact(lm, data, out, args.cases or 200, args.steps, args.train_limit)
    else:
        res = part_zsre(lm, data, out, args.cases or 500, args.steps, args.train_limit)
    write_json(out / f"bench-{args.part}.json", {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                                 "wall_seconds": time.perf_counter() - t, **res})
    print(f"written: {out / f'bench-{args.part}.json'}")


if __name__ == "__main__":
    main()
