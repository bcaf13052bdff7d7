"""The training curve of a MEND editor: losses per step (smoothed) and at every held-out check."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _smooth(xs: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, x in enumerate(xs):
        total += x - (xs[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_curve(state: dict[str, Any], path: Path, title: str) -> Path:
    """Left: the edit loss and the locality KL, training (running mean) and held out; right: the held-out
    share of edits whose targets are all top-1 after the edit. The best held-out step is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist, vals = state["history"], state["validations"]
    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if hist:
        steps = [h["step"] for h in hist]
        window = max(1, len(hist) // 50)
        ax.plot(steps, _smooth([h["edit"] for h in hist], window), color="tab:blue", alpha=0.6, label="edit loss (training)")
        ax.plot(steps, _smooth([h["loc"] for h in hist], window), color="tab:orange", alpha=0.6, label="locality KL (training)")
    vs = [v["step"] for v in vals]
    ax.plot(vs, [v["edit"] for v in vals], "o-", color="tab:blue", label="edit loss (held out)")
    ax.plot(vs, [v["loc"] for v in vals], "s-", color="tab:orange", label="locality KL (held out)")
    ax_acc.plot(vs, [100 * v["accuracy"] for v in vals], "o-", color="tab:green")
    for a in (ax, ax_acc):
        if state.get("best_step") is not None:
            a.axvline(state["best_step"], color="k", ls="--", lw=1)
        a.set_xlabel("step")
    ax.set_yscale("log")  # both losses are positive: the held-out KL starts near 1e-4, the edit loss near 10
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax_acc.set_ylim(0, 100)
    ax_acc.set_title("held-out edits whose targets are all top-1 after the edit (%)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
