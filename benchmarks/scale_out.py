"""Scaling out on this machine: the same work on a local Ray runtime with 2 workers and with 1 (or in one
process), results compared, wall times side by side.

eval   a CounterFact evaluation (ROME, each case edited alone, statistics cached beforehand) with
       --workers 1 and --workers 2: the summaries (costs aside) must be equal; both wall times printed;
stats  the key statistics of the chosen layers (default: all) over N tokens of the embedded corpus, in one
       process and on 2 workers (the corpus in shards, the sums added): the largest relative difference
       (float64 round-off expected) and both times printed. Computed afresh (not read from the cache).

    python benchmarks/scale_out.py [--part eval|stats|all] [--cases 200] [--tokens 1000000] [--layers all]
                                   [--model smollm2-135m] [--out runs/scale-out]

Each run of the evaluation starts from an empty directory (OUT/workers-1, OUT/workers-2), so that its
wall time is that of the whole evaluation.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


import modeledit as me
from modeledit.report import machine, write_json


def part_eval(args, lm, out: Path) -> dict:
    from modeledit.datafiles import find_data

    data = find_data("counterfact-val.json", "CounterFact", "set MODELEDIT_DATA")
    hp = {"stats_tokens": args.stats_tokens} if args.stats_tokens else {}
    me.get_method(args.method, **hp).prepare(lm)  # statistics cached once, outside both timings
    res: dict = {"cases": args.cases, "method": args.method}
    summaries = {}
    for n in (1, 2):
        run = out / f"workers-{n}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        summaries[n] = me.evaluate(lm, data, run, method=args.method, limit=args.cases, workers=n, **hp)
        res[f"workers_{n}_wall_s"] = time.perf_counter() - t0
    same = {k: v for k, v in summaries[1].items() if k != "cost"} == {k: v for k, v in summaries[2].items() if k != "cost"}
    res["summaries_equal"] = same
    # where not bit-equal: the scores (shares of cases) and the magnitudes (mean log-probability gaps) apart
    scores_equal, magnitude_diff = True, 0.0
    for part in ("pre", "post"):
        for k, v in summaries[1][part].items():
            w = summaries[2][part].get(k)
            if k.endswith("_score"):
                scores_equal &= v == w
            elif isinstance(v, float) and isinstance(w, float):
                magnitude_diff = max(magnitude_diff, abs(v - w) / max(abs(v), 1e-12))
    res["scores_equal"], res["max_relative_difference_other"] = scores_equal, magnitude_diff
    res["post"] = summaries[2]["post"]
    print(f"  {args.cases} CounterFact cases, {args.method}: --workers 1 {res['workers_1_wall_s']:.1f} s | "
          f"--workers 2 {res['workers_2_wall_s']:.1f} s ({res['workers_1_wall_s'] / res['workers_2_wall_s']:.2f}x); "
          f"summaries {'equal' if same else 'not bit-equal'} (costs aside): ES/PS/NS/S "
          f"{'equal' if scores_equal else 'DIFFERENT'}, other figures within {magnitude_diff:.1e} (relative)")
    return res


def part_stats(args, lm) -> dict:
    from modeledit.llm.corpus import resolve_corpus
    from modeledit.llm.stats import StatsConfig, collect_second_moments
    from modeledit.scale import RayMoments

    layers = list(range(lm.layout.n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    cfg, corpus = StatsConfig(n_tokens=args.tokens), resolve_corpus(None)
    t0 = time.perf_counter()
    one = collect_second_moments(lm, layers, corpus, cfg)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    two = RayMoments(2)(lm, layers, corpus, cfg)
    t_two = time.perf_counter() - t0
    diff = max(float((two[l][0] - one[l][0]).abs().max() / one[l][0].abs().max()) for l in layers)
    res = {"layers": len(layers), "tokens": one[layers[0]][1], "one_process_s": t_one, "workers_2_s": t_two,
           "max_relative_difference": diff, "token_counts_equal": all(one[l][1] == two[l][1] for l in layers)}
    print(f"  statistics of {len(layers)} layers over {res['tokens']:,} tokens: one process {t_one:.1f} s | "
          f"2 workers {t_two:.1f} s ({t_one / t_two:.2f}x); largest relative difference {diff:.1e}, "
          f"token counts {'equal' if res['token_counts_equal'] else 'DIFFERENT'}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["eval", "stats", "all"], default="all")
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--method", default="rome")
    ap.add_argument("--stats-tokens", type=int, default=None, help="the method's statistics tokens (default: its own)")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="corpus tokens of the statistics part")
    ap.add_argument("--layers", default="all", help="layers of the statistics part: all, or e.g. 8,9,10")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default="runs/scale-out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = me.load_model(args.model, device="cpu")
    res: dict = {"machine": machine(), "model": args.model}
    print(res["machine"])
    if args.part in ("eval", "all"):
        print("eval")
        res["eval"] = part_eval(args, lm, out)
        write_json(out / "scale_out.json", res)
    if args.part in ("stats", "all"):
        print("stats")
        res["stats"] = part_stats(args, lm)
        write_json(out / "scale_out.json", res)
    print(f"written: {out / 'scale_out.json'}")


if __name__ == "__main__":
    main()
