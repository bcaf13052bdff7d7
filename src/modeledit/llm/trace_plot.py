"""Pictures of causal traces: a heatmap per sweep (tokens × layers), and the many-facts line plot.

Drawn on matplotlib ``Figure`` objects directly (no pyplot, no global backend switch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modeledit.llm.trace import KIND_NAMES, KINDS, TraceResult

COLOURS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
LINES = {"hidden": "tab:purple", "mlp": "tab:green", "attn": "tab:red"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=150, layout="constrained")


def heatmap(result: TraceResult, kind: str, path: str | Path) -> Path:
    """One sweep as a heatmap: prompt tokens down (subject tokens starred), layers across, colour = the
    answer's probability with that state restored; the corrupted probability is the colour scale's floor."""
    grid = result.grids[kind]
    n_rows, n_layers = len(grid), len(grid[0])
    a, b = result.subject_span
    labels = [f"{result.tokens[t]!r}"[1:-1] + (" *" if a <= t < b else "") for t in result.rows]
    fig = _figure(min(14, 2.5 + 0.28 * n_layers), 1.6 + 0.32 * n_rows)
    ax = fig.add_subplot()
    top = max(max(map(max, grid)), result.clean_prob, result.corrupted_prob * 1.01)
    im = ax.imshow(grid, cmap=COLOURS[kind], vmin=min(result.corrupted_prob, min(map(min, grid))), vmax=top, aspect="auto")
    ax.set_yticks(range(n_rows), labels)
    for tick, t in zip(ax.get_yticklabels(), result.rows):
        if a <= t < b:
            tick.set_fontweight("bold")
    step = max(1, n_layers // 15)
    ax.set_xticks(range(0, n_layers, step))
    if kind == "hidden":
        ax.set_xlabel("layer (block output restored)")
        what = "each hidden state"
    else:
        ax.set_xlabel(f"layer at the centre of a window of {result.window} restored {KIND_NAMES[kind]} outputs")
        what = f"a window of {result.window} {KIND_NAMES[kind]} outputs"
    ax.set_title(
        f"Restoring {what} after corrupting the subject (* tokens)\n"
        f"clean p={result.clean_prob:.3f}, corrupted p={result.corrupted_prob:.3f}, "
        f"noise {result.noise:.3g}, {result.samples} samples",
        fontsize=9,
    )
    bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(f"p({result.target.strip()!s})")
    path = Path(path)
    fig.savefig(path)
    return path


def aggregate_plot(aggregate: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Average indirect effect per layer, for hidden states, MLP and attention, at the last subject
    token (left) and at the last token (right); the MLP's peak at the last subject token marked."""
    fig = _figure(11, 4)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, where, name in zip(axes, ("subject_last", "last"), ("last subject token", "last token")):
        for kind in KINDS:
            ys = aggregate[where][kind]
            ax.plot(range(len(ys)), ys, color=LINES[kind], marker=".",
                    label=KIND_NAMES[kind] + ("" if kind == "hidden" else f" (window {aggregate['window']})"))
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("layer")
        ax.set_title(f"at the {name}", fontsize=10)
    peak = aggregate["mlp_peak_layer"]
    axes[0].axvline(peak, color=LINES["mlp"], ls="--", lw=1)
    axes[0].annotate(f"MLP peak: layer {peak}", (peak, aggregate["mlp_peak_effect"]), textcoords="offset points",
                     xytext=(6, 4), fontsize=8, color=LINES["mlp"])
    axes[0].set_ylabel("average indirect effect on p(answer)")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        (title + "\n" if title else "")
        + f"{aggregate['n_traced']} known facts; mean p(answer) clean {aggregate['clean_prob_mean']:.3f}, "
        f"corrupted {aggregate['corrupted_prob_mean']:.3f}",
        fontsize=10,
    )
    path = Path(path)
    fig.savefig(path)
    return path
