"""How MEMIT's layer range and λ were chosen for SmolLM2, on cases no evaluation reads (CounterFact: of
counterfact-train.json; zsRE: after the first 500 of zsre-train-1k.json, the evaluation's), so that the
evaluated figures are not tuned on.

The targets z (the expensive part) depend only on the last layer of the range and on the value settings
(``--set steps=40 --set stop_on=target``, any field of MEMIT's), so they are computed once for the batch and kept on disk (target_cache.py);
each (layers, λ) setting then only reads keys, solves and scores. Prints the benchmark's three scores ×100
(CounterFact: ES / PS / NS, answers compared by token-mean log-probability; zsRE: efficacy / paraphrase /
specificity, top-1 token accuracy) of the batch edited jointly, and how far the residual stream got toward z.

    python benchmarks/memit_settings.py [--cases 64] [--out runs/memit-settings]
    python benchmarks/memit_settings.py --benchmark zsre --skip 500 --set steps=40 --set stop_on=target --out runs/memit-settings-zsre
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import modeledit as me
from modeledit.errors import ModelEditError
from modeledit.llm.bench import counterfact, get_benchmark, zsre
from modeledit.llm.contexts import context_templates
from modeledit.llm.memit import MEMIT, MEMITHyperParams
from modeledit.llm.method import parse_settings
from modeledit.llm.stats import second_moments
from modeledit.llm.target_cache import cached_values
from modeledit.patch import Patch
from modeledit.report import mean, read_json_list


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--benchmark", choices=["counterfact", "zsre"], default="counterfact")
    ap.add_argument("--cases", type=int, default=64)
    ap.add_argument("--skip", type=int, default=1000, help="start after these cases (kept apart for other runs; zsRE: at least 500)")
    ap.add_argument("--set", action="append", default=[], help="a MEMIT setting for the targets, e.g. steps=40")
    ap.add_argument("--last", type=int, default=10)
    ap.add_argument("--firsts", default="10,8,6,4")
    ap.add_argument("--lambdas", default="15000,4800,1500,500")
    ap.add_argument("--passes", default="1", help="rounds of the spread (MEMIT's passes), e.g. 1,2")
    ap.add_argument("--prompt-key", default="0", help="fit at the bare prompt's own key too (MEMIT's prompt_key): 0, 1 or 0,1")
    ap.add_argument("--own", default="0", help="weights of the batch's own other tokens (MEMIT's own_tokens_weight), e.g. 0,0.1,1")
    ap.add_argument("--data", default=os.environ.get("MODELEDIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--out", default="runs/memit-settings")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.benchmark == "zsre" and args.skip < 500:
        raise SystemExit("--skip: the first 500 zsRE cases are the evaluation's; tune on later ones")
    lm = me.load_model("smollm2-135m", device="cpu")
    bench = get_benchmark(args.benchmark, gen_tokens=0)
    data = Path(args.data) / ("counterfact-train.json" if args.benchmark == "counterfact" else "zsre-train-1k.json")
    parse = counterfact._case if args.benchmark == "counterfact" else zsre._case
    cases = []
    for i, rec in enumerate(read_json_list(data, args.benchmark, "a data file")[args.skip :], start=args.skip):
        try:
            cases.append(parse(i, rec))
        except ModelEditError as exc:  # zsRE has a few records with an empty new answer
            print(f"record {i} left out: {exc}")
        if len(cases) == args.cases:
            break
    requests = [r for c in cases for r in bench.requests(c)]
    firsts = [int(x) for x in args.firsts.split(",")]
    settings = parse_settings(MEMITHyperParams, args.set)
    hp = MEMIT(**settings).hparams
    keys = ("efficacy_score", "paraphrase_score", "neighborhood_score") if args.benchmark == "counterfact" else ("efficacy", "paraphrase", "specificity")
    all_layers = list(range(min(firsts), args.last + 1))
    moments = second_moments(lm, all_layers, hp.stats)
    templates = context_templates(lm, hp.context_spec, hp.context_seed)
    # the targets are kept on disk per request (target_cache.py): a rerun with other layer ranges, λ or passes reads them
    t = time.perf_counter()
    values, from_disk = cached_values(lm, args.last, requests, templates, (hp.kl_prompt,), hp.value, at="block", chunk=hp.value_batch)
    print(f"targets of {len(requests)} requests at layer {args.last}: {time.perf_counter() - t:.0f} s ({from_disk} read from disk)", flush=True)
    z, v0 = torch.stack([v.v0 + v.delta for v in values]), torch.stack([v.v0 for v in values])
    pre = [bench.score(lm, c) for c in cases]
    rows = [{"setting": "unedited", **{k: 100 * mean(p[k] for p in pre) for k in keys}}]
    names = ("ES", "PS", "NS") if args.benchmark == "counterfact" else ("eff", "para", "spec")
    print(f"{'layers':>8} {'lambda':>7} {'passes':>6} {'own':>6} {'pkey':>4} {names[0]:>6} {names[1]:>6} {names[2]:>6} {'left':>6}")
    print(f"{'unedited':>35} " + " ".join(f"{rows[0][k]:6.1f}" for k in keys))
    grid = [(f, float(l), int(p), float(o), bool(int(k))) for f in firsts for l in args.lambdas.split(",") for p in args.passes.split(",")
            for o in args.own.split(",") for k in args.prompt_key.split(",")]
    for first, lam, passes, own, pkey in grid:
        layers = list(range(first, args.last + 1))
        m = MEMIT(**{**settings, "layers": tuple(layers), "mom2_update_weight": lam, "passes": passes, "own_tokens_weight": own,
                    "prompt_key": pkey})
        deltas, final = m.spread(lm, requests, z, layers, moments, templates)
        patch = Patch.from_deltas(lm.model, deltas, method="memit", hparams={}, requests=[r.to_dict() for r in requests])
        with patch.applied(lm):
            post = [bench.score(lm, c, p) for c, p in zip(cases, pre)]
        left = float((final - z).norm(dim=1).mean() / (z - v0).norm(dim=1).mean())
        row = {"layers": layers, "lambda": lam, "passes": passes, "own_tokens_weight": own, "prompt_key": pkey, "left": left,
               **{k: 100 * mean(p[k] for p in post) for k in keys},
               "missed": [c.case_id for c, p in zip(cases, post) if p[keys[0]] < 1]}  # the cases whose edit does not hold
        rows.append(row)
        print(f"{first:>3}-{args.last:<4} {lam:7.0f} {passes:6d} {own:6g} {int(pkey):4d} " + " ".join(f"{row[k]:6.1f}" for k in keys) + f" {left:6.2f}", flush=True)
    (out / "settings.json").write_text(json.dumps({"benchmark": args.benchmark, "cases": len(cases), "skip": args.skip,
                                                   "settings": settings, "rows": rows}, indent=1))
    print(f"written: {out / 'settings.json'}")


if __name__ == "__main__":
    main()
