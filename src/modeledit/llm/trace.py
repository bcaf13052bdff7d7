"""Causal tracing (Meng et al., NeurIPS 2022, §2): where in the network a fact is recalled.

Run the prompt clean, then with Gaussian noise added to the subject's token embeddings (the corrupted
run: the model no longer knows whom the prompt is about). Then, still corrupted, restore one state from
the clean run — a block's output (hidden state), or a window of MLP or attention outputs around a layer —
at one token, and measure how much of the answer's probability comes back. The noise is drawn once and
shared by every restoration (as in the paper's code), so cells differ by the restoration alone. How each
restoration is computed cheaply: ``trace_engine``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from modeledit.errors import RequestError
from modeledit.llm.model import LanguageModel
from modeledit.llm.trace_engine import KINDS, CausalTracer, Restore, TraceConfig, default_window, window_layers
from modeledit.llm.trace_prompt import TracePrompt, prepare_prompt, subject_noise_level

log = logging.getLogger(__name__)

KIND_NAMES = {"hidden": "hidden state", "mlp": "MLP", "attn": "attention"}


# --------------------------------------------------------------------------------------------------
# one trace: three sweeps


@dataclass
class TraceResult:
    model: str
    prompt: str
    subject: str
    target: str
    tokens: list[str]
    subject_span: tuple[int, int]
    rows: list[int]  # the prompt tokens traced (rows of the grids)
    clean_prob: float
    corrupted_prob: float
    noise: float
    samples: int
    window: int
    predicted: bool  # whether the model's greedy continuation is the target
    prediction: str  # the model's greedy continuation, as many tokens as the target
    grids: dict[str, list[list[float]]] = field(default_factory=dict)  # kind -> rows x layers
    seconds: float = 0.0

    def strongest(self, kind: str) -> dict:
        """The (token, layer) whose restoration brings back the most probability."""
        g = torch.tensor(self.grids[kind])
        r, layer = divmod(int(g.argmax()), g.shape[1])
        t = self.rows[r]
        return {"token": t, "token_text": self.tokens[t], "layer": layer, "prob": float(g[r, layer]),
                "indirect_effect": float(g[r, layer]) - self.corrupted_prob}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strongest"] = {k: self.strongest(k) for k in self.grids}
        return d


def greedy_prediction(lm: LanguageModel, prompt: TracePrompt) -> tuple[bool, str]:
    """Whether the target is the model's greedy continuation, and that continuation (target-long)."""
    with torch.no_grad():
        h = lm.run(torch.tensor([prompt.ids], device=lm.device))[0]
        top = lm.logits(h[0, prompt.target_positions]).argmax(-1).tolist()
    if top == list(prompt.target_ids):
        return True, prompt.target
    # the greedy continuation: the model's own tokens, not the target's
    return False, lm.generate(prompt.text, len(prompt.target_ids))


def trace(
    lm: LanguageModel,
    prompt: str,
    subject: str,
    target: str | None = None,
    config: TraceConfig = TraceConfig(),
    *,
    kinds: Sequence[str] = KINDS,
    rows: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TraceResult:
    """Trace one fact: for each kind, the answer's probability after restoring each (token, layer).
    ``rows`` limits the tokens traced (default: every prompt token)."""
    t_start = time.perf_counter()
    tp = prepare_prompt(lm, prompt, subject, target)
    predicted, prediction = greedy_prediction(lm, tp)
    if not predicted:
        log.info("the model does not predict %r after %r (its greedy continuation is %r); tracing %r anyway",
                    tp.target, tp.text, prediction, tp.target)
    noise = config.noise if config.noise is not None else subject_noise_level(lm, factor=config.noise_factor)
    L = lm.layout.n_layers
    window = config.window or default_window(L)
    rows = list(range(tp.n_prompt)) if rows is None else sorted(set(rows))
    if any(not 0 <= r < tp.n_prompt for r in rows):
        raise RequestError("rows", f"token positions must lie in 0..{tp.n_prompt - 1}")
    tracer = CausalTracer(lm, tp, noise, config)
    restorations = []
    for kind in kinds:
        if kind not in KINDS:
            raise RequestError("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
        for t in rows:
            for layer in range(L):
                layers = (layer,) if kind == "hidden" else window_layers(layer, window, L)
                restorations.append(Restore(kind, layers, (t,)))
    probs = tracer.probs(restorations, progress)
    grids, k = {}, 0
    for kind in kinds:
        grids[kind] = [probs[k + r * L : k + (r + 1) * L] for r in range(len(rows))]
        k += len(rows) * L
    return TraceResult(
        model=lm.name,
        prompt=tp.text,
        subject=subject,
        target=tp.target,
        tokens=list(tp.labels),
        subject_span=tp.subject_span,
        rows=rows,
        clean_prob=tracer.clean_prob,
        corrupted_prob=tracer.corrupted_prob,
        noise=noise,
        samples=config.samples,
        window=window,
        predicted=predicted,
        prediction=prediction,
        grids=grids,
        seconds=time.perf_counter() - t_start,
    )
