"""The hyper-parameters of the editors that write key → value memories (ROME, MEMIT, AlphaEdit): the
value optimisation's (``value.py``), the context templates and the key statistics, declared once with the
papers' defaults; each editor adds its own fields (layer or layers, clamp, λ)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modeledit.errors import RequestError
from modeledit.llm.precision import check_precision
from modeledit.llm.stats import StatsConfig

# requests whose values are optimised side by side by default. Measured on these 2 cores (8 steps, SmolLM2 at
# layer 10, bfloat16; seconds per request-step): zsRE, 16 requests: 0.34 four at a time, 0.54 sixteen; 8 requests:
# 0.50 one at a time, 0.42 eight; CounterFact, 16 requests: 0.27 four, 0.29 eight, 0.34 sixteen — larger batches
# fault in gigabytes of fresh activations every step (6.6M page faults for sixteen zsRE requests, 3 thousand for four)
VALUE_CHUNK = 4
STOP_ON = ("loss", "target")  # what a request's value optimisation stops on (MemoryEditHyperParams.stop_on)


@dataclass(frozen=True)
class ValueHyperParams:
    lr: float = 0.5
    steps: int = 20
    loss_stop: float = 0.05
    kl_factor: float = 0.0625
    weight_decay: float = 0.5  # times ‖δ‖ / ‖v₀‖², as the reference code writes it
    clamp_norm_factor: float = 4.0  # ‖δ‖ ≤ clamp · ‖v₀‖
    precision: str = "auto"  # what the loop's matmuls compute in (precision.py)
    guard_factor: float = 1.0  # weight of the guard rows' terms (KL, rise of the new target: reach.py), if any
    stop_on: str = "loss"  # what must fall below loss_stop: "loss" (the reference's whole loss) or "target" (its NLL)


@dataclass(frozen=True)
class MemoryEditHyperParams:
    """What the editors that write key → value memories (ROME, MEMIT) share: the context templates, the
    value optimisation and the key statistics (the papers' settings; each editor sets its own clamp)."""

    context_spec: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))  # (tokens, count) of prefixes
    context_seed: int = 0
    kl_prompt: str = "{} is a"
    lr: float = 0.5
    steps: int = 20
    loss_stop: float = 0.05
    # what must fall below loss_stop for a request to stop: "loss", the whole loss (the reference code's test;
    # its weight-decay term alone stays above 0.05 where values are small, as on SmolLM2, so every step runs),
    # or "target", the target's NLL alone (P(target) ≈ 0.95 over the contexts: the test's intent)
    stop_on: str = "loss"
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    # the value optimisation's matmuls: "bfloat16", "float32", or "auto" = bfloat16 on hardware that multiplies it
    # fast (AMX CPUs, recent GPUs), else float32 (precision.py; keys, values, solves, statistics stay float32)
    precision: str = "auto"
    stats_tokens: int = 100_000
    stats_max_len: int = 256
    corpus: str | tuple[str, ...] | None = None  # None: the embedded Wikipedia leads; else text files or 'dataset:NAME'
    # ours, not the papers': the change is written at each request's bare prompt's own key too, not only at its key
    # averaged over the contexts (ROME: exactly, rome.py; MEMIT, AlphaEdit: both fitted at half weight, memit.py) —
    # a prompt that starts with its subject may read it unlike every context. False: the papers' (and runs before it)
    prompt_key: bool = field(default=True, metadata={"before": False})

    def __post_init__(self) -> None:
        for name in ("lr", "loss_stop", "clamp_norm_factor"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and v == v and v != float("inf")):
                raise RequestError(name, f"must be a positive finite number, got {v!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise RequestError("steps", f"must be a positive integer, got {self.steps!r}")
        check_precision(self.precision)
        if self.stop_on not in STOP_ON:
            raise RequestError("stop_on", f"must be one of {', '.join(map(repr, STOP_ON))}, got {self.stop_on!r}")
        if "{}" not in self.kl_prompt:
            raise RequestError("kl_prompt", "needs a '{}' for the subject, e.g. '{} is a'")

    @property
    def stats(self) -> StatsConfig:
        return StatsConfig(corpus=self.corpus, n_tokens=self.stats_tokens, max_len=self.stats_max_len)

    @property
    def value(self) -> ValueHyperParams:
        return ValueHyperParams(self.lr, self.steps, self.loss_stop, self.kl_factor, self.weight_decay, self.clamp_norm_factor,
                                self.precision, stop_on=self.stop_on)
