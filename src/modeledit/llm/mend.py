"""MEND (Mitchell et al. 2022) as an editing method: one forward and backward pass, then the editor.

An edit takes the NLL of the requests' new targets (teacher-forced, each request's token mean, summed
over the requests — so each request's gradient is the one it has alone), and reads with the one tracer
(``hooks.py``), for every edited weight, its input u_t and the gradient δ_t of the loss with respect to its
output at every token of the rows: ∇W = Σ_t δ_t u_tᵀ. No weight gradient is computed and no weight is
written. The trained editor (``mend_editor.py``) maps each (u_t, δ_t) to (ũ_t, δ̃_t) and the edit is
ΔW = −α Σ_t δ̃_t ũ_tᵀ, returned as a low-rank Patch (the factors, rank = the number of tokens). A batch of
requests is edited jointly: one ΔW per weight from every request's tokens.

The edited weights are the linear maps of the MLPs of the last three blocks (the paper's and EasyEdit's
default: GPT-2's c_fc and c_proj, Llama's gate, up and down projections), found by walking the module
tree (``model.mlp_projections``); the editor fixes which, and is trained by ``mend_train.py``.

This file also holds what editing and training share: the choice of weights, the capture of (u, δ), the
losses, and the edit applied beside each weight (training applies it by hooks, without writing weights).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from modeledit.errors import EditFailedError, RequestError
from modeledit.llm.hooks import Hooks
from modeledit.llm.mend_data import EDIT, LOC, Rows, build_rows
from modeledit.llm.mend_editor import EditedWeight, MENDEditor, editor_file, load_editor
from modeledit.llm.method import LLMMethod, as_requests, check_layers
from modeledit.llm.layout import mlp_projections
from modeledit.llm.model import LanguageModel
from modeledit.llm.outcome import outcome_pairs, record_outcomes
from modeledit.llm.partial import PartialForward, eager_attention, split_rows
from modeledit.llm.request import Request
from modeledit.llm.frozen import frozen_weights
from modeledit.delta import Delta
from modeledit.patch import Patch

PAPER_LAYERS = 3  # the MLPs of the last three blocks


@dataclass(frozen=True)
class MENDHyperParams:
    """An edit needs only the trained editor; its architecture, weights and training settings are in it
    (``mend_train.MENDTrainConfig`` holds the paper's defaults)."""

    editor: str | None = None  # a directory written by `modeledit mend train` (or its editor file); None: this model's, in the cache

    def __post_init__(self) -> None:
        if self.editor is not None and not (isinstance(self.editor, (str, Path)) and str(self.editor).strip()):
            raise RequestError("editor", f"must be the directory of a trained MEND editor, got {self.editor!r}")


def edited_weights(lm: LanguageModel, layers: Sequence[int] | None = None, modules: Sequence[str] | None = None) -> list[EditedWeight]:
    """The weights MEND edits: every linear map of the MLPs of ``layers`` (default: the last three blocks),
    or only ``modules``, each of which must be such a map (of ``layers`` when given; a RequestError
    otherwise)."""
    n = lm.layout.n_layers
    if layers is not None:
        check_layers(lm, list(layers), "layers")
    default = list(range(max(0, n - PAPER_LAYERS), n))
    # the layers whose MLP maps may be chosen: ``layers``; with ``modules`` alone, any layer
    allowed = sorted(set(layers if layers is not None else (range(n) if modules is not None else default)))
    found = {name: d for layer in allowed for name, d in mlp_projections(lm.model, lm.layout, layer).items()}
    if modules is None:
        chosen = list(found)
    else:
        every = {name for layer in range(n) for name in mlp_projections(lm.model, lm.layout, layer)}
        bad = [m for m in modules if m.removesuffix(".weight") not in found]
        if bad:
            where = "of the chosen layers " if bad[0].removesuffix(".weight") in every else ""
            raise RequestError("modules", f"{bad[0]!r} is not an MLP projection {where}of this model; MEND edits the linear maps of "
                                          f"MLPs, e.g. {', '.join(list(found)[-3:])}")
        chosen = list(dict.fromkeys(m.removesuffix(".weight") for m in modules))
    if not chosen:
        raise RequestError("layers", f"the MLPs of layers {allowed} hold no linear map to edit")
    return [EditedWeight(m, found[m][0], found[m][1], found[m][2]) for m in chosen]


class Watch:
    """Inside a ``Hooks`` context: reads each watched linear map's input and keeps its output in the
    graph, so that ``factors`` gives u and δ = ∂loss/∂output at every token (no weight gradient)."""

    def __init__(self, hooks: Hooks, modules: Sequence[str]):
        self.modules = list(modules)
        self.inputs = {m: hooks.record(m, inputs=True, outputs=False) for m in self.modules}
        self.outputs: dict[str, torch.Tensor] = {}
        for m in self.modules:
            hooks.edit_output(m, self._keep(m))

    def _keep(self, module: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def keep(out: torch.Tensor) -> torch.Tensor:
            if not out.requires_grad:  # nothing below needs a gradient: the output starts the graph
                out = out.detach().requires_grad_(True)
            self.outputs[module] = out
            return out

        return keep

    def factors(self, loss: torch.Tensor, mask: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(u, δ) of each module at the tokens where ``mask`` (rows × width of the pass) is set, row by row."""
        grads = torch.autograd.grad(loss, [self.outputs[m] for m in self.modules])
        keep = mask.bool()
        return {m: (self.inputs[m].input[keep].detach().float(), g[keep].detach().float()) for m, g in zip(self.modules, grads)}


def token_owner(rows: Rows, sel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The owner (edit) of every token ``factors`` returns for the rows ``sel`` of a pass."""
    return rows.owner[sel][:, None].expand_as(mask)[mask.bool()]


def nll_per_edit(lm: LanguageModel, hidden: torch.Tensor, rows: Rows, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, correct) per edit from the final hidden states of the rows ``sel``: each row's token-mean
    NLL of its target, averaged over the edit's rows (EDIT and PARA rows among ``sel``); correct: every
    target token of every such row is the top-1 prediction."""
    R, E = rows.input_ids.shape[0], rows.n_edits
    pos = torch.full((R,), -1, dtype=torch.long, device=hidden.device)
    pos[sel] = torch.arange(len(sel), device=hidden.device)
    keep = pos[rows.target_rows] >= 0
    tr, tc, ids = rows.target_rows[keep], rows.target_cols[keep], rows.target_ids[keep]
    logp = torch.log_softmax(lm.logits(hidden[pos[tr], tc]).float(), -1)
    nll = -logp.gather(1, ids[:, None])[:, 0]
    wrong = (logp.argmax(-1) != ids).float()
    n_tok = torch.bincount(tr, minlength=R).float()
    has = n_tok > 0
    row_nll = torch.zeros(R, device=hidden.device).index_add(0, tr, nll) / n_tok.clamp(min=1)
    row_wrong = torch.zeros(R, device=hidden.device).index_add(0, tr, wrong)
    owner = rows.owner[has]
    n_rows = torch.bincount(owner, minlength=E).float().clamp(min=1)
    loss = torch.zeros(E, device=hidden.device).index_add(0, owner, row_nll[has]) / n_rows
    correct = torch.zeros(E, device=hidden.device).index_add(0, owner, row_wrong[has]) == 0
    return loss, correct


def kl_per_edit(lm: LanguageModel, hidden: torch.Tensor, base_logp: torch.Tensor, rows: Rows, sel: torch.Tensor) -> torch.Tensor:
    """KL(p_unedited ‖ p_edited) per edit, the mean over every token of its LOC rows; ``hidden``: the pass
    over rows ``sel`` (all rows), ``base_logp``: the unedited log-probabilities at the same tokens."""
    loc = (rows.kind[sel] == LOC).nonzero()[:, 0]
    mask = rows.attention_mask[sel][loc].bool()
    logp = torch.log_softmax(lm.logits(hidden[loc][mask]).float(), -1)
    kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
    owner = rows.owner[sel][loc][:, None].expand_as(mask)[mask]
    n = torch.bincount(owner, minlength=rows.n_edits).float().clamp(min=1)
    return torch.zeros(rows.n_edits, device=hidden.device).index_add(0, owner, kl) / n


def base_log_probs(lm: LanguageModel, hidden: torch.Tensor, rows: Rows, sel: torch.Tensor) -> torch.Tensor:
    """The unedited log-probabilities at every token of the LOC rows among ``sel`` (for ``kl_per_edit``)."""
    loc = (rows.kind[sel] == LOC).nonzero()[:, 0]
    mask = rows.attention_mask[sel][loc].bool()
    return torch.log_softmax(lm.logits(hidden[loc][mask]).float(), -1).detach()


def add_edits(hooks: Hooks, transformed: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
              row_owner: Callable[[], torch.Tensor]) -> None:
    """Apply each edit beside its weight, without writing it: the output of a watched map on the rows of a
    pass gains Σ_t d̃_t (ũ_t · x), summed over the tokens t of the row's own edit (``row_owner()``: the
    owner of each row of the pass; ``transformed``: module -> (ũ, d̃ = −α δ̃, owner of each token))."""
    for module, (u, d, owner) in transformed.items():
        def add(x: torch.Tensor, u=u, d=d, owner=owner) -> torch.Tensor:
            same = (row_owner()[:, None] == owner[None, :]).to(u.dtype)  # (rows, tokens)
            return (((x.to(u.dtype) @ u.T) * same[:, None, :]) @ d).to(x.dtype)

        hooks.add_to_output(module, add)


def gradient_factors(lm: LanguageModel, editor: MENDEditor, rows: Rows, start: int | None = None,
                     ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor, PartialForward | None]:
    """One forward and backward pass of the EDIT rows' loss: (u, δ) of every edited weight at every token
    of the EDIT rows but a whole row's last (``build_rows(..., whole=True)``: no target is read there), the
    loss per request and, with ``start`` (a block no higher than the edited ones), a partial pass from that
    block over all the rows (kept for the outcome check)."""
    sel = torch.arange(rows.input_ids.shape[0], device=lm.device)
    mask = rows.attention_mask * (rows.kind == EDIT)[:, None]
    mask[sel, rows.attention_mask.sum(1) - 1] = 0
    partial = None
    if start is not None:
        no_cut = torch.zeros(len(sel), dtype=torch.long, device=rows.input_ids.device)
        partial = PartialForward(lm, start, split_rows(rows.input_ids, rows.attention_mask, no_cut))
    with frozen_weights(lm.model), eager_attention(lm.model), Hooks(lm.model) as hooks:
        watch = Watch(hooks, [w.module for w in editor.weights])
        keep = partial.watch(hooks) if partial is not None else None
        hidden = lm.run(rows.input_ids, attention_mask=rows.attention_mask)[0]
        if keep:
            keep()
        loss, _ = nll_per_edit(lm, hidden, rows, sel)
        if not torch.isfinite(loss).all():
            raise EditFailedError("the edit loss is not finite on these requests; check the model's dtype")
        factors = watch.factors(loss.sum(), mask)
    return factors, loss.detach(), partial


class MEND(LLMMethod):
    """MEND: the trained editor maps the fine-tuning gradient of the requests to a low-rank update of the
    last MLPs, in one pass. A batch is edited jointly."""

    name = "mend"
    HyperParams = MENDHyperParams
    joint = True

    def prepare(self, lm: LanguageModel, progress=None) -> None:
        """Load the editor (and check it belongs to this model) before the first edit is timed."""
        load_editor(lm, self.hparams.editor)

    def edit(self, lm: LanguageModel, requests: Request | Sequence[Request], progress=None) -> Patch:
        """The edit, its outcome checked from the first edited block up on the hidden states of the edit's
        own pass (a whole second pass would double MEND's time)."""
        reqs = as_requests(requests)
        patch, partial = self._edit_batch(lm, reqs)
        return record_outcomes(lm, patch, reqs, partial)

    def edit_batch(self, lm: LanguageModel, requests: list[Request], progress=None) -> Patch:
        return self._edit_batch(lm, requests)[0]

    def _edit_batch(self, lm: LanguageModel, requests: list[Request]) -> tuple[Patch, PartialForward | None]:
        t0 = time.perf_counter()
        editor = load_editor(lm, self.hparams.editor)
        # the rows of the outcome check, read in the same pass: each request's prompt and new target, whole (the
        # last token's prediction the loss does not read, nor MEND's factors), then the old answers known
        pairs = outcome_pairs(requests)
        items = [(i, EDIT, p, a) for i, (p, a) in enumerate(pairs[: len(requests)])] + [(0, LOC, p, a) for p, a in pairs[len(requests):]]
        rows = build_rows(lm, items, len(requests), whole=True)
        layers = sorted({i for w in editor.weights for i, mlp in enumerate(lm.layout.mlp) if w.module.startswith(mlp + ".")})
        factors, loss, partial = gradient_factors(lm, editor, rows, layers[0])
        deltas = {}
        with torch.no_grad():
            transformed = editor.transform(factors)
            for w in editor.weights:
                u, d = transformed[w.module]
                if not (torch.isfinite(u).all() and torch.isfinite(d).all()):
                    raise EditFailedError(f"the MEND editor gave a non-finite update for {w.module}; train the editor again")
                u, d = u.T.contiguous().cpu(), d.T.contiguous().cpu()  # (d_in, tokens), (d_out, tokens)
                deltas[w.weight] = Delta(left=u, right=d) if w.transposed else Delta(left=d, right=u)
        info = {"layers": layers, "layers_reason": "the layers the MEND editor was trained for",
                "modules": [w.module for w in editor.weights], "editor": str(editor_file(lm, self.hparams.editor)),
                "editor_trained_on": editor.meta.get("data"), "gradient_steps": 1, "rank": int(factors[editor.weights[0].module][0].shape[0]),
                "loss_first": float(loss.mean()), "per_request": {"nll_before": loss.tolist()}, "n_requests": len(requests),
                "edit_lrs": editor.edit_lrs.detach().cpu().tolist(), "seconds": time.perf_counter() - t0,
                "advice": "a better-trained editor (more steps of `modeledit mend train`), or another method"}
        return self.patch(lm, deltas, requests, asdict(self.hparams), info), partial
