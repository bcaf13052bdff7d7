"""GRACE's deferral radius on the packaged SmolLM2-135M: how far a key reaches, against what it disturbs.

The first N cases of counterfact-train.json (default 100) edited in one batch by GRACE at several radii
(the paper's ε_init = 1.0 first), each scored as ``modeledit eval counterfact --method grace`` does; plus
the distances that decide it: from each edit prompt's key to the keys of its paraphrase and of its
neighbourhood prompt (the MLP output projection's input at the prompt's last token, GRACE's layer).
Resumable (one run directory per radius).

    python benchmarks/grace_radius.py [--cases 100] [--radii 1,2,4,8]
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import torch

import modeledit as me
from modeledit.datafiles import data_dir
from modeledit.llm.bench.counterfact import load_counterfact
from modeledit.llm.hooks import Hooks
from modeledit.report import write_json


def last_keys(lm, module: str, texts: list[str]) -> torch.Tensor:
    """The module's input at the last token of each text (one text at a time: no padding)."""
    out = []
    for t in texts:
        with torch.no_grad(), Hooks(lm.model) as hooks:
            rec = hooks.record(module, inputs=True, outputs=False)
            lm.run(torch.tensor([lm.tokenizer(t)["input_ids"]], device=lm.device))
        out.append(rec.input[0, -1].float())
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--radii", default="1,2,4,8")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="runs/grace-radius")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = data_dir(args.data, "counterfact-train.json")
    lm = me.load_model("smollm2-135m")
    grace = me.get_method("grace")
    module = lm.layout.mlp_out[grace.layers(lm)[0]]
    cases = load_counterfact(data / "counterfact-train.json", args.cases)
    k_edit = last_keys(lm, module, [c.request.text for c in cases])
    k_para = last_keys(lm, module, [c.paraphrase_prompts[0] for c in cases])
    k_near = last_keys(lm, module, [c.neighborhood_prompts[0] for c in cases])
    d_para = (k_edit - k_para).norm(dim=1).tolist()
    d_near = (k_edit - k_near).norm(dim=1).tolist()
    q = lambda xs: [round(statistics.quantiles(xs, n=10)[i], 2) for i in (0, 4, 8)]  # noqa: E731
    print(f"distance edit prompt -> paraphrase: 10/50/90th percentile {q(d_para)}; -> neighbourhood prompt {q(d_near)}")
    report = {"distances": {"paraphrase": d_para, "neighborhood": d_near}, "runs": {}}
    print("radius  ES    PS    NS    NK    (×100; unedited first)")
    for i, r in enumerate(float(x) for x in args.radii.split(",")):
        s = me.evaluate(lm, data / "counterfact-train.json", Path(args.out) / f"radius-{r:g}", method=me.get_method("grace", radius=r),
                        limit=args.cases, batch_size=args.cases)
        if i == 0:
            p = s["pre"]
            print(f"   —   {p['efficacy_score']:5.1f} {p['paraphrase_score']:5.1f} {p['neighborhood_score']:5.1f} {p['neighborhood_kept']:5.1f}")
        p = s["post"]
        print(f"{r:6g}  {p['efficacy_score']:5.1f} {p['paraphrase_score']:5.1f} {p['neighborhood_score']:5.1f} {p['neighborhood_kept']:5.1f}"
              f"   paraphrases within r: {sum(d <= r for d in d_para)}, neighbours within r: {sum(d <= r for d in d_near)}")
        report["runs"][f"{r:g}"] = s
    write_json(Path(args.out) / "bench.json", report)


if __name__ == "__main__":
    main()
