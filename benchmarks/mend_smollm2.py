"""MEND on the packaged SmolLM2-135M, this machine: its editor trained here, then edits beside ROME's.

Parts (each resumable: rerun the same command after an interruption — training continues from its last
checkpoint without repeating a step, the evaluation from its last case):

- ``counterfact``: MEND trained on counterfact-train.json (MEND-CF, as in the ROME paper; 10 edits a
  step, the held-out tenth — at most 200 cases — for early stopping; the training time and peak memory
  checked), then the seconds per edit of MEND and ROME on the same requests, alternating, in this one run
  (MEND's target: a median of 0.1 s). Its ES, PS, NS and S beside ROME and the fine-tuning baselines on
  the first 200 counterfact-val cases: ``benchmarks/methods_smollm2.py --part compare`` (it takes this
  editor), which checks the paper's finding (ROME's S above MEND's) and MEND the fastest weight editor.
- ``zsre``: MEND trained on cases 500-999 of zsre-train-1k.json, the first N (500) cases — none of them
  trained on — edited by MEND (``--methods rome,mend``: beside ROME): efficacy, paraphrase, specificity.
  The paper trained on ~100k zsRE examples; 500 is what this file leaves after the evaluation cases.

    python benchmarks/mend_smollm2.py --part counterfact [--steps 1000] [--speed-edits 24] [--out runs/bench-mend]
    python benchmarks/mend_smollm2.py --part zsre [--cases 500] [--steps 1000] [--methods mend]
    python benchmarks/mend_smollm2.py --part counterfact --steps 3 --train-limit 60 --speed-edits 2 --out /tmp/mend-smoke   # a quick check
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from statistics import median


import modeledit as me
from modeledit.datafiles import data_dir
from modeledit.llm.request import read_requests
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


def part_counterfact(lm, data: Path, out: Path, steps: int, train_limit: int | None, n_speed: int) -> dict:
    trained = train(lm, data / "counterfact-train.json", out / "mend-cf", steps, limit=train_limit)
    fast = speed(lm, data, out / "mend-cf", n_speed)
    checks = {
        "MEND median <= 0.1 s per edit": fast["mend_edit_median_s"] <= 0.1,
        "MEND faster per edit than ROME (median)": fast["mend_edit_median_s"] < fast["rome_edit_median_s"],
        "MEND trained within an hour": trained["seconds"] <= 3600,
        "MEND training peak memory < 8 GiB": trained["peak_rss_mb"] < 8 * 1024,
    }
    for k, v in checks.items():
        print(f"  [{'ok' if v else 'MISSED'}] {k}")
    print("the comparison table with this editor (ES, PS, NS, S beside ROME and the fine-tuning baselines): "
          "python benchmarks/methods_smollm2.py --part compare")
    return {"training": trained, "speed": fast, "checks": checks}


def speed(lm, data: Path, editor: Path, n: int) -> dict:
    """Seconds per edit of MEND and ROME on the same ``n`` counterfact-val requests, one at a time and
    alternating (after one untimed edit each): the whole ``edit`` (the patch's fingerprints and the
    outcome check included) and MEND's own part (its pass and the editor)."""
    reqs = read_requests(data / "counterfact-val.json")[: n + 1]
    mend, rome = me.get_method("mend", editor=str(editor)), me.get_method("rome")
    mend.prepare(lm)
    rome.prepare(lm)  # ROME's statistics: cached, not timed
    mend.edit(lm, reqs[0])
    rome.edit(lm, reqs[0])
    t_mend, t_own, t_rome = [], [], []
    for r in reqs[1:]:
        t = time.perf_counter()
        patch = mend.edit(lm, r)
        t_mend.append(time.perf_counter() - t)
        t_own.append(patch.entries[0].info["seconds"])
        t = time.perf_counter()
        rome.edit(lm, r)
        t_rome.append(time.perf_counter() - t)
    res = {"n": len(t_mend), "mend_edit_median_s": median(t_mend), "mend_own_median_s": median(t_own),
           "rome_edit_median_s": median(t_rome)}
    print(f"seconds per edit, median of {res['n']} counterfact-val requests edited one at a time: MEND {res['mend_edit_median_s']:.3f} "
          f"(its pass and editor {res['mend_own_median_s']:.3f}, the rest the patch's fingerprints and the outcome check), "
          f"ROME {res['rome_edit_median_s']:.2f}: MEND {res['rome_edit_median_s'] / res['mend_edit_median_s']:.0f}x faster")
    return res


def part_zsre(lm, data: Path, out: Path, cases: int, steps: int, train_limit: int | None, methods: str) -> dict:
    if cases > ZSRE_TRAIN_FROM:
        raise SystemExit(f"--cases {cases}: the first {ZSRE_TRAIN_FROM} zsRE cases are the evaluation's; the rest train the editor")
    trained = train(lm, data / "zsre-train-1k.json", out / "mend-zsre", steps, skip=ZSRE_TRAIN_FROM, limit=train_limit)
    result = me.compare(lm, methods.split(","), data / "zsre-train-1k.json", out / "compare-zsre", benchmark="zsre", limit=cases,
                        settings={"mend": {"editor": str(out / "mend-zsre")}})
    print((out / "compare-zsre" / "comparison.md").read_text())
    print(f"caveat: MEND's editor saw {trained['train_cases']} zsRE edits here; the paper trained it on ~100k.")
    return {"training": trained, "rows": result["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["counterfact", "zsre"], default="counterfact")
    ap.add_argument("--cases", type=int, default=500, help="zsre: the evaluation cases")
    ap.add_argument("--speed-edits", type=int, default=24, help="counterfact: timed edits of each method")
    ap.add_argument("--steps", type=int, default=1000, help="most training steps of 10 edits (1000: one pass over counterfact-train)")
    ap.add_argument("--train-limit", type=int, default=None, help="only the first N training cases (a quick check)")
    ap.add_argument("--methods", default="mend", help="zsre: the methods compared (e.g. rome,mend; ROME takes ~5 s a case)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="runs/bench-mend")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data, out = data_dir(args.data, "counterfact-val.json"), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = me.load_model("smollm2-135m", device="cpu")
    t = time.perf_counter()
    if args.part == "counterfact":
        res = part_counterfact(lm, data, out, args.steps, args.train_limit, args.speed_edits)
    else:
        res = part_zsre(lm, data, out, args.cases, args.steps, args.train_limit, args.methods)
    write_json(out / f"bench-{args.part}.json", {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                                 "wall_seconds": time.perf_counter() - t, **res})
    print(f"written: {out / f'bench-{args.part}.json'}")


if __name__ == "__main__":
    main()
