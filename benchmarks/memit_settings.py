"""How MEMIT's layer range and λ were chosen for SmolLM2, on *training* cases (counterfact-train.json), so
that the validation figures are not tuned on.

The targets z (the expensive part) depend only on the last layer of the range, so they are computed once
for the batch; each (layers, λ) setting then only reads keys, solves and scores. Prints ES / PS / NS
(×100, answers compared by token-mean log-probability) of the batch edited jointly, and how far the
residual stream got toward z.

    python benchmarks/memit_settings.py [--cases 64] [--out runs/memit-settings]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import modeledit as me
from modeledit.llm.bench.counterfact import CounterFact, load_counterfact
from modeledit.llm.contexts import context_templates
from modeledit.llm.memit import MEMIT
from modeledit.llm.stats import second_moments
from modeledit.llm.value import compute_values
from modeledit.patch import Patch
from modeledit.report import mean


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=64)
    ap.add_argument("--skip", type=int, default=1000, help="start after these training cases (kept apart for other runs)")
    ap.add_argument("--last", type=int, default=10)
    ap.add_argument("--firsts", default="10,8,6,4")
    ap.add_argument("--lambdas", default="15000,4800,1500,500")
    ap.add_argument("--data", default=os.environ.get("MODELEDIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--out", default="runs/memit-settings")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = me.load_model("smollm2-135m", device="cpu")
    cases = load_counterfact(Path(args.data) / "counterfact-train.json", args.skip + args.cases)[args.skip :]
    requests = [c.request for c in cases]
    firsts = [int(x) for x in args.firsts.split(",")]
    memit = MEMIT()
    hp = memit.hparams
    all_layers = list(range(min(firsts), args.last + 1))
    moments = second_moments(lm, all_layers, hp.stats)
    templates = context_templates(lm, hp.context_spec, hp.context_seed)
    t = time.perf_counter()
    values = compute_values(lm, args.last, requests, templates, (hp.kl_prompt,), hp.value, at="block", chunk=hp.value_batch)
    print(f"targets of {len(requests)} requests at layer {args.last}: {time.perf_counter() - t:.0f} s", flush=True)
    z = torch.stack([v.v0 + v.delta for v in values])
    v0 = torch.stack([v.v0 for v in values])
    bench = CounterFact(gen_tokens=0)
    pre = [bench.score(lm, c) for c in cases]
    rows = [{"setting": "unedited", **{k: 100 * mean(p[k] for p in pre) for k in ("efficacy_score", "paraphrase_score", "neighborhood_score")}}]
    print(f"{'layers':>8} {'lambda':>7} {'ES':>6} {'PS':>6} {'NS':>6} {'left':>6}")
    print(f"{'unedited':>16} {rows[0]['efficacy_score']:6.1f} {rows[0]['paraphrase_score']:6.1f} {rows[0]['neighborhood_score']:6.1f}")
    for first in firsts:
        layers = list(range(first, args.last + 1))
        for lam in [float(x) for x in args.lambdas.split(",")]:
            m = MEMIT(layers=tuple(layers), mom2_update_weight=lam)
            deltas, final = m.spread(lm, requests, z, layers, moments, templates)
            patch = Patch.from_deltas(lm.model, deltas, method="memit", hparams={}, requests=[r.to_dict() for r in requests])
            with patch.applied(lm):
                post = [bench.score(lm, c) for c in cases]
            left = float((final - z).norm(dim=1).mean() / (z - v0).norm(dim=1).mean())
            row = {"layers": layers, "lambda": lam, "left": left,
                   **{k: 100 * mean(p[k] for p in post) for k in ("efficacy_score", "paraphrase_score", "neighborhood_score")}}
            rows.append(row)
            print(f"{first:>3}-{args.last:<4} {lam:7.0f} {row['efficacy_score']:6.1f} {row['paraphrase_score']:6.1f} "
                  f"{row['neighborhood_score']:6.1f} {left:6.2f}", flush=True)
    (out / "settings.json").write_text(json.dumps({"cases": len(cases), "skip": args.skip, "rows": rows}, indent=1))
    print(f"written: {out / 'settings.json'}")


if __name__ == "__main__":
    main()
