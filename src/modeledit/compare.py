"""The comparison of editing methods on the same cases: the ROME paper's table, as Markdown, JSON and a
chart. Each method runs through the one evaluation loop in its own directory (so each is resumable on
its own); the unedited model's row comes from the runs' "pre" scores, which must agree."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from modeledit.errors import RequestError
from modeledit.report import write_json

log = logging.getLogger(__name__)

# (key in the summary, column title) per benchmark; quality metrics first
COLUMNS = {
    "counterfact": [("efficacy_score", "ES"), ("paraphrase_score", "PS"), ("neighborhood_score", "NS"), ("neighborhood_kept", "NK"),
                    ("score", "S"),
                    ("efficacy_magnitude", "EM"), ("paraphrase_magnitude", "PM"), ("neighborhood_magnitude", "NM"),
                    ("generation_entropy", "GE")],
    "zsre": [("efficacy", "Efficacy"), ("paraphrase", "Paraphrase"), ("specificity", "Specificity"),
             ("locality_accuracy", "Loc. acc.")],
    "mquake": [("edit_wise", "Edit-wise"), ("multi_hop", "Multi-hop"), ("hop_wise", "Hop-wise"), ("single_hops", "Single hops")],
}
CHART = {"counterfact": ["efficacy_score", "paraphrase_score", "neighborhood_score", "neighborhood_kept", "score"],
         "zsre": ["efficacy", "paraphrase", "specificity"], "mquake": ["edit_wise", "multi_hop", "hop_wise"]}


def parse_spec(spec: str, batch_size: int | str) -> tuple[str, int | str, str]:
    """``"memit@200"`` -> ("memit", 200, "memit@200"); ``"memit@all"``: all cases in one batch; ``"rome"``
    -> ("rome", batch_size, label)."""
    from modeledit.methods import method_class

    name, at, b = spec.strip().partition("@")
    if at and b.strip() == "all":
        batch_size = "all"
    elif at:
        try:
            batch_size = int(b)
        except ValueError:
            raise RequestError("methods", f"{spec!r}: write METHOD@BATCH_SIZE with a whole number, e.g. memit@200") from None
        if batch_size < 1:
            raise RequestError("methods", f"{spec!r}: the batch size must be at least 1 (or all)")
    cls = method_class(name)
    if cls.family != "llm":
        raise RequestError("methods", f"{name!r} edits {cls.family} models, not language models")
    return name.lower(), batch_size, name.lower() + (f"@{batch_size}" if at or batch_size != 1 else "")


def compare_runs(
    lm: Any,
    methods: Sequence[str],
    data: str | Path,
    out_dir: str | Path,
    *,
    benchmark: str = "counterfact",
    limit: int | None = None,
    batch_size: int | str = 1,
    gen_tokens: int = 0,
    cot: bool = False,
    settings: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    prepare_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate several methods on the same cases (``"memit@200"``: MEMIT at batch size 200; else
    ``batch_size``; ``@all``: every case in one batch), each in ``out_dir/<spec>/`` (resumable; the unedited model's scores are computed once
    and shared), and write ``comparison.md``, ``.json`` and ``.png`` with the unedited model's row.
    ``settings``: hyper-parameters per method name, e.g. ``{"memit": {"layers": (6, 7, 8)}}``."""
    from modeledit.evaluation import run_evaluation
    from modeledit.llm.bench import get_benchmark
    from modeledit.methods import get_method

    if benchmark not in COLUMNS:
        raise RequestError("benchmark", f"unknown benchmark {benchmark!r}: choose one of {', '.join(COLUMNS)}")
    specs = [parse_spec(s, batch_size) for s in methods]
    if not specs:
        raise RequestError("methods", "name at least one method, e.g. rome,memit")
    labels = [label for _, _, label in specs]
    if len(set(labels)) != len(labels):
        raise RequestError("methods", f"a method is named twice: {', '.join(labels)}")
    chosen = {name: get_method(name, **(settings or {}).get(name, {})) for name, _, _ in specs}  # bad settings fail before any work
    bench = get_benchmark(benchmark, gen_tokens=gen_tokens, cot=cot)
    cases = bench.load(data, limit)
    out = Path(out_dir)
    runs = []
    known_pre: dict = {}  # the unedited model's scores: the same for every run, computed once
    for name, b, label in specs:
        log.info("comparison: %s", label)
        summary = run_evaluation(
            lm, chosen[name], bench, cases, out / label, batch_size=len(cases) if b == "all" else b, known_pre=known_pre,
            progress=(lambda d, t, _l=label: progress(_l, d, t)) if progress else None,
            prepare_progress=(lambda d, t, _l=label: prepare_progress(_l, d, t)) if prepare_progress else None,
        )
        with open(out / label / "cases.jsonl", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                known_pre.setdefault(r["case_id"], r["pre"])
        runs.append((label, summary))
    result = comparison(runs, benchmark, lm.name, str(data))
    write_json(out / "comparison.json", result)
    (out / "comparison.md").write_text(markdown(result), encoding="utf-8")
    chart(result, out / "comparison.png")
    return result


def compare_sequential(
    lm: Any,
    methods: Sequence[str],
    data: str | Path,
    out_dir: str | Path,
    *,
    benchmark: str = "counterfact",
    limit: int | None = None,
    batch_size: int = 1,
    checkpoints: Sequence[int] = (),
    ability: Any = None,
    settings: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Several methods edited in a row on the same cases (``sequential.py``), each in ``out_dir/<method>/``
    (resumable), and their curves in one plot, ``out_dir/sequential.png``."""
    from modeledit.llm.bench import get_benchmark
    from modeledit.methods import get_method
    from modeledit.sequential import plot_sequential, run_sequential

    names = [parse_spec(m, batch_size)[0] for m in methods]
    if not names or len(set(names)) != len(names):
        raise RequestError("methods", f"name each method once, e.g. alphaedit,memit,rome (got {', '.join(methods)})")
    chosen = {n: get_method(n, **(settings or {}).get(n, {})) for n in names}
    bench = get_benchmark(benchmark)
    cases = bench.load(data, limit)
    out = Path(out_dir)
    runs, known_pre = {}, {}  # the unedited model's scores: the same for every run, computed once
    for n in names:
        log.info("sequential comparison: %s", n)
        result = run_sequential(lm, chosen[n], bench, cases, out / n, batch_size=batch_size, checkpoints=checkpoints, ability=ability,
                                known_pre=known_pre, progress=(lambda d, t, _n=n: progress(_n, d, t)) if progress else None)
        runs[n] = result["checkpoints"]
        known_pre.update(result["pre"])
    plot_sequential(list(runs.items()), out / "sequential.png", f"{benchmark}, {lm.name}, edited in a row, batches of {batch_size}")
    result = {"benchmark": benchmark, "model": lm.name, "data": str(data), "batch_size": batch_size, "runs": runs}
    write_json(out / "sequential.json", result)
    return result


def comparison(runs: Sequence[tuple[str, dict[str, Any]]], benchmark: str, model: str, data: str) -> dict[str, Any]:
    """The rows of the table: the unedited model, then each run."""
    cols = [k for k, _ in COLUMNS[benchmark]]
    pre = runs[0][1]["pre"]
    for label, s in runs[1:]:
        off = [k for k in cols if abs(s["pre"].get(k, 0) - pre.get(k, 0)) > 1e-6 and k != "generation_entropy"]
        if off or s["n"] != runs[0][1]["n"]:
            log.warning("the unedited scores of %s differ from %s's (%s): were the runs made on other cases?", label, runs[0][0], off)
    rows = [{"method": "unedited", "batch_size": None, **{k: pre.get(k) for k in cols}, "seconds_per_edit": None,
             "seconds_per_case": None, "peak_rss_mb": None, "gradient_steps_mean": None, "failed_edits": None}]
    for label, s in runs:
        c = s["cost"]
        rows.append({"method": label, "batch_size": s["batch_size"], **{k: s["post"].get(k) for k in cols},
                     "seconds_per_edit": c["seconds_per_edit_median"], "seconds_per_case": c.get("score_seconds_per_case"),
                     "peak_rss_mb": c["peak_rss_mb"],
                     "gradient_steps_mean": c.get("gradient_steps_mean"), "failed_edits": s["failed_edits"]})
    return {"benchmark": benchmark, "model": model, "data": data, "n": runs[0][1]["n"],
            "answer_comparison": runs[0][1].get("answer_comparison"), "columns": cols, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    titles = dict(COLUMNS[result["benchmark"]])
    head = ["method"] + [titles[k] for k in result["columns"]] + ["s / edit", "s / case scored", "peak MiB", "steps"]
    lines = [
        f"{result['benchmark']}, {result['n']} cases of {Path(result['data']).name}, {result['model']} (scores ×100"
        + (f"; answers compared by their {result['answer_comparison']} token log-probability" if result.get("answer_comparison") else "")
        + ")",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    fmt = lambda v, f="{:.1f}": "—" if v is None else f.format(v)  # noqa: E731
    for r in result["rows"]:
        cells = [r["method"]] + [fmt(r[k]) for k in result["columns"]]
        cells += [fmt(r["seconds_per_edit"], "{:.2f}"), fmt(r.get("seconds_per_case"), "{:.2f}"), fmt(r["peak_rss_mb"], "{:.0f}"),
                  fmt(r["gradient_steps_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "s / edit: median seconds per edited request (a batch's time shared out over its requests); "
              "s / case scored: mean seconds to score a case on the edited model (an in-context edit's longer prompts are its price); "
              "peak MiB: peak resident memory of the run; steps: mean gradient steps per edit."]
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars (one group per quality metric, one bar per method) and the seconds per edit beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = dict(COLUMNS[result["benchmark"]])
    rows = result["rows"]
    metrics = [m for m in CHART[result["benchmark"]] if any(r.get(m) is not None for r in rows)]
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(rows)
    palette = [c for j, c in enumerate(plt.get_cmap("tab10").colors) if j != 7]  # tab10's grey is the unedited row's
    colors = lambda k: palette[k % len(palette)]  # noqa: E731
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(metrics))]
        have = [(x, r[m]) for x, m in zip(xs, metrics) if r.get(m) is not None]
        color = "0.6" if r["method"] == "unedited" else colors(i - 1)
        bars = ax.bar([x for x, _ in have], [y for _, y in have], width, label=r["method"], color=color)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        for x, m in zip(xs, metrics):
            if r.get(m) is None:  # not measured by this run (e.g. a run made before the metric existed): no bar, not 0
                ax.text(x, 1, "n/a", rotation=90, fontsize=6, ha="center", va="bottom", color=color)
    ax.set_xticks(range(len(metrics)), [titles[m] for m in metrics])
    ax.set_ylim(0, 110)
    ax.set_ylabel("score (×100, higher is better)")
    ax.set_title(f"{result['benchmark']}: {result['n']} cases, {result['model']}")
    ax.legend(fontsize=8, ncol=min(len(rows), 4), loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    timed = [r for r in rows if r["seconds_per_edit"] is not None]
    ys = range(len(timed))
    ax_t.barh([y - 0.2 for y in ys], [r["seconds_per_edit"] for r in timed], 0.4, color=[colors(rows.index(r) - 1) for r in timed],
              label="per edit (median)")
    ax_t.barh([y + 0.2 for y in ys], [r.get("seconds_per_case") or 0.0 for r in timed], 0.4, color=[colors(rows.index(r) - 1) for r in timed],
              alpha=0.45, label="per case scored (mean)")
    ax_t.set_yticks(list(ys), [r["method"] for r in timed])
    ax_t.invert_yaxis()
    ax_t.legend(fontsize=7, loc="best")
    ax_t.set_xlabel("seconds (lower is better)")
    ax_t.set_title("cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
