"""The fine-tuning loop of the baselines (FT-L, FT-M, LoRA): Adam on the teacher-forced NLL of the
requests' targets, every request in one batch.

Each target token is predicted from the prompt and the target tokens before it (autoregressive; the
reference FT scores every target token from the last prompt position instead, a fault not copied here),
the tokens taken exactly as evaluation scores them. The loss is each request's token-mean NLL, averaged
over the requests. Each step runs the one partial forward pass from the lowest trained layer up (the
blocks below cannot change). Training stops as soon as every target token is the model's greedy
prediction (then every target is the model's greedy continuation), or after ``steps``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from modeledit.errors import EditFailedError
from modeledit.llm.hooks import Hooks
from modeledit.llm.model import LanguageModel
from modeledit.llm.partial import PartialForward, split_rows
from modeledit.llm.request import Request
from modeledit.llm.rows import build_rows
from modeledit.llm.frozen import frozen_weights


@dataclass
class TuneResult:
    steps: int  # gradient steps taken
    losses: list[float]
    greedy: bool  # every target is the greedy continuation at the end
    seconds: float


def tune_on_targets(
    lm: LanguageModel,
    requests: Sequence[Request],
    params: Sequence[torch.nn.Parameter],
    lowest_layer: int,
    lr: float,
    steps: int,
    *,
    weight_decay: float = 0.0,
    after_step: Callable[[], None] | None = None,
) -> TuneResult:
    """Train ``params`` (which must all sit in blocks from ``lowest_layer`` up) on the requests' targets.
    ``after_step`` runs after each optimiser step (e.g. a projection onto a norm ball)."""
    t0 = time.perf_counter()
    rows = build_rows(lm, list(requests), ["{}"], ())
    n = rows.n_requests
    split = split_rows(rows.input_ids, rows.attention_mask, torch.zeros_like(rows.site))
    pf = PartialForward(lm, lowest_layer, split)
    t_rows, t_cols = rows.target_rows, rows.target_cols
    per_request = torch.bincount(t_rows, minlength=n).float()
    weight = 1.0 / (per_request[t_rows] * n)  # token-mean per request, mean over requests
    opt = torch.optim.Adam(list(params), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    greedy, step = False, 0
    with frozen_weights(lm.model):
        for p in params:
            p.requires_grad_(True)
        with Hooks(lm.model) as hooks:
            pf.first(hooks)
        with Hooks(lm.model) as hooks:
            pf.install(hooks)
            for step in range(steps + 1):
                opt.zero_grad(set_to_none=True)
                # the output layer may sit on another device than the inputs (a device map)
                logits = lm.logits(pf().to(t_rows.device)[t_rows, t_cols]).float().to(t_rows.device)
                loss = -(torch.log_softmax(logits, -1).gather(1, rows.target_ids[:, None])[:, 0] * weight).sum()
                if not torch.isfinite(loss):
                    raise EditFailedError(f"fine-tuning diverged (non-finite loss at step {step}); lower the learning rate (now {lr})")
                losses.append(loss.item())
                greedy = bool((logits.argmax(-1) == rows.target_ids).all())
                if greedy or step == steps:
                    break
                loss.backward()
                opt.step()
                if after_step:
                    with torch.no_grad():
                        after_step()
    return TuneResult(step, losses, greedy, time.perf_counter() - t0)
