"""The edit sweep as heatmaps in the ROME paper's style: one panel per metric, token positions down,
layers across, the unedited model's value on the colour bar. Drawn on a matplotlib ``Figure`` directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TITLES = {"efficacy_score": "Efficacy (ES)", "paraphrase_score": "Paraphrase (PS)", "neighborhood_score": "Neighbourhood (NS)",
          "score": "Score S"}
LABELS = {"first_subject": "first subject token", "middle_subject": "middle subject tokens", "last_subject": "last subject token",
          "first_after": "first subsequent token", "further": "further tokens", "last": "last token"}


def sweep_plot(result: dict[str, Any], path: str | Path, title: str) -> Path:
    from matplotlib.figure import Figure

    layers, tokens = result["layers"], result["tokens"]
    cols = len(TITLES) if len(layers) <= 12 else 2  # many layers: two panels a row, wide enough to read
    rows = len(TITLES) // cols
    fig = Figure(figsize=(min(16, 3.5 + cols * (1.2 + 0.2 * len(layers))), rows * (1.6 + 0.38 * len(tokens)) + 0.6), dpi=130,
                 layout="constrained")
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    im = None
    for ax, (metric, name) in zip(axes, TITLES.items()):
        grid = [[float("nan") if v is None else v for v in result["grid"][metric][t]] for t in tokens]
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_yticks(range(len(tokens)), [LABELS.get(t, t) for t in tokens], fontsize=8)
        step = max(1, len(layers) // 8)
        ax.set_xticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)], fontsize=8)
        ax.set_xlabel("layer edited", fontsize=8)
        base = result.get("unedited", {}).get(metric)
        ax.set_title(name + (f"\nunedited: {base:.1f}" if base is not None else ""), fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.85, label="×100")
    best = result.get("best_last_subject")
    fig.suptitle(title + (f"\nbest S at the last subject token: layer {best['layer']} (S {best['score']:.1f}); "
                          "white: no such token in the prompts" if best else ""), fontsize=10)
    fig.savefig(path)
    return Path(path)
