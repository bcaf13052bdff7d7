"""One step of MEND's training (or of its validation) on a batch of edits (Mitchell et al. 2022, Alg. 1).

For each edit of the batch, as a single edit of the unedited model: the gradient factors (u, δ) of its
edit prompt's NLL at every edited weight, the editor's (ũ, −α δ̃), and with that edit applied — beside
the weights, by hooks, never written — the edit loss (NLL of the new target after the edit prompt and
its paraphrases) and the locality loss KL(p_unedited ‖ p_edited) at every token of its unrelated prompts:

    L = c_edit · L_edit + c_loc · L_loc,  averaged over the batch's edits.

The edits of a batch are computed side by side, each row seeing only its own edit (tested against one
edit at a time). Every pass is the one partial forward pass (``partial.py``): the blocks below the lowest
edited one run once, without gradient; the rest run for the gradient and for the losses after the edit.
The gradient of L reaches the editor's networks and step sizes only (u and δ are data, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from modeledit.errors import EditFailedError
from modeledit.llm.hooks import Hooks
from modeledit.llm.mend import Watch, add_edits, base_log_probs, kl_per_edit, nll_per_edit, token_owner
from modeledit.llm.mend_data import EDIT, TrainCase, case_rows
from modeledit.llm.mend_editor import MENDEditor
from modeledit.llm.model import LanguageModel
from modeledit.llm.partial import PartialForward, eager_attention, split_rows
from modeledit.llm.frozen import frozen_weights


@dataclass
class StepResult:
    loss: torch.Tensor  # c_edit · L_edit + c_loc · L_loc, mean over the edits (differentiable when training)
    edit: list[float]  # per edit: L_edit after the edit
    loc: list[float]  # per edit: L_loc
    correct: list[bool]  # per edit: every target token of the edit prompt and its paraphrases is top-1 after the edit
    edit_before: list[float]  # per edit: the edit prompt's NLL before the edit


def edit_step(lm: LanguageModel, editor: MENDEditor, cases: Sequence[TrainCase], c_edit: float, c_loc: float,
              train: bool) -> StepResult:
    """The losses of the batch's edits; ``train``: the editor's statistics are updated and the loss keeps
    its graph (call ``.backward()``); else nothing is learnt."""
    rows = case_rows(lm, cases)
    R = rows.input_ids.shape[0]
    everything = torch.arange(R, device=lm.device)
    edits = rows.of(EDIT)
    modules = [w.module for w in editor.weights]
    lowest = min(i for i, mlp in enumerate(lm.layout.mlp) if any(m.startswith(mlp + ".") for m in modules))
    split = split_rows(rows.input_ids, rows.attention_mask, torch.zeros(R, dtype=torch.long, device=lm.device))
    pf = PartialForward(lm, lowest, split)
    with frozen_weights(lm.model), eager_attention(lm.model):
        with Hooks(lm.model) as hooks:
            base = base_log_probs(lm, pf.first(hooks), rows, everything)
        pf.select(edits)
        with Hooks(lm.model) as hooks:  # the gradient of each edit prompt's NLL at every edited weight
            pf.install(hooks)
            watch = Watch(hooks, modules)
            before, _ = nll_per_edit(lm, pf(), rows, edits)
            if not torch.isfinite(before).all():
                raise EditFailedError("the edit loss is not finite on this batch; check the model's dtype")
            mask = rows.attention_mask[edits]
            factors = watch.factors(before.sum(), mask)
        owner = token_owner(rows, edits, mask)
        pf.select(everything)
        with torch.set_grad_enabled(train):
            if train:
                editor.observe(factors)
            transformed = {m: (*ud, owner) for m, ud in editor.transform(factors).items()}
            with Hooks(lm.model) as hooks:  # every row with its own edit applied
                pf.install(hooks)
                add_edits(hooks, transformed, lambda: rows.owner)
                hidden = pf()
                l_edit, correct = nll_per_edit(lm, hidden, rows, everything)
                l_loc = kl_per_edit(lm, hidden, base, rows, everything)
            loss = (c_edit * l_edit + c_loc * l_loc).mean()
    if not torch.isfinite(loss):
        raise EditFailedError("MEND's training loss is not finite: lower the learning rates (lr, lr_lr) or the initial edit_lr")
    return StepResult(loss, l_edit.tolist(), l_loc.tolist(), correct.tolist(), before.tolist())
