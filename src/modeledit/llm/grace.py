"""GRACE (Hartvigsen et al. 2023): edits kept in a codebook beside one layer, no weight changed.

For each request, the keys are the input of one block's MLP output projection at the tokens that predict
the target (the prompt's last token, then each target token but the last: a multi-token target gets one
key per token it must produce, so the whole target holds). Each key's value — the projection's output
there, replaced while the edit is applied — starts at the unedited output and is trained with Adam on the
target's NLL (the paper's lr 1.0, at most 100 steps, a request stopping early when its loss is below the
stop). The passes are the one partial forward pass (``partial.py``), from the edited block up.

Deferral radii (the paper's ε_init = 1.0, Euclidean): a key answers for inputs within its radius. Keys
that must produce different tokens are kept apart: a new key's radius is at most half its distance to
any such key, of this edit or of a codebook edit already applied at the same module (as the paper splits
conflicting keys); a key of an earlier edit at (nearly) the same place is re-edited: the newer wins there.
The paper's expansion of a radius to cover a same-answer key is not done (it would change an earlier,
saved edit); a second key is added instead.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from modeledit.errors import EditFailedError, RequestError
from modeledit.llm.codebook import CodebookEdit, CodebookEntry
from modeledit.llm.hooks import Hooks
from modeledit.llm.method import LLMMethod
from modeledit.llm.model import LanguageModel
from modeledit.llm.partial import PartialForward, eager_attention, split_rows
from modeledit.llm.request import Request
from modeledit.llm.rows import build_rows
from modeledit.llm.frozen import frozen_weights

SAME_PLACE = 1e-3  # relative to the radius: an earlier key this close to a new one is the same prompt, re-edited


@dataclass(frozen=True)
class GRACEHyperParams:
    """The GRACE paper's settings (EasyEdit's grace hparams: eps 1.0, edit_lr 1.0, n_iter 100)."""

    layers: tuple[int, ...] | None = None  # one layer; None: three quarters of the way up
    radius: float = 1.0  # ε_init: the deferral radius of a new key
    lr: float = 1.0  # Adam on the values
    steps: int = 100  # at most, per batch
    loss_stop: float = 1e-2  # a request stops when its target's token-mean NLL is below this

    def __post_init__(self) -> None:
        for name in ("radius", "lr", "loss_stop"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise RequestError(name, f"must be a positive finite number, got {v!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise RequestError("steps", f"must be a positive integer, got {self.steps!r}")


def key_labels(entry_requests: list[dict], owner: torch.Tensor) -> list[tuple[str, int]]:
    """What each key must produce: its request's target and the index of the token within it."""
    labels, seen = [], {}
    for o in owner.tolist():
        j = seen[o] = seen.get(o, -1) + 1
        labels.append((entry_requests[o]["target"], j))
    return labels


def deferral_radii(keys: torch.Tensor, labels: list, radius: float, earlier: list[tuple[torch.Tensor, list]]) -> torch.Tensor:
    """Each new key's radius: ``radius``, at most half the distance to any key (new, or of ``earlier``
    codebook entries at the same module) that must produce something else."""
    radii = torch.full((keys.shape[0],), float(radius))
    groups = [(keys, labels, False)] + [(k, lab, True) for k, lab in earlier]
    for other, other_labels, is_earlier in groups:
        dist = torch.cdist(keys, other.float())
        differs = torch.tensor([[a != b for b in other_labels] for a in labels], dtype=torch.bool)
        if is_earlier:
            differs &= dist > SAME_PLACE * radius  # the same place: re-edited, the newer wins
        half = torch.where(differs, dist / 2, torch.full_like(dist, float("inf"))).min(1).values
        radii = torch.minimum(radii, half)
    return radii


class GRACE(LLMMethod):
    name = "grace"
    HyperParams = GRACEHyperParams
    joint = True

    def default_layers(self, lm: LanguageModel) -> tuple[list[int], str]:
        n = lm.layout.n_layers
        return [3 * n // 4], (f"three quarters of the way up ({3 * n // 4} of {n}; the paper edits GPT2-XL's layer 35 of 48, "
                              "EasyEdit Llama-2's 27 of 32)")

    def edit_batch(self, lm: LanguageModel, requests: list[Request], progress=None) -> CodebookEdit:
        hp = self.hparams
        layers = self.layers(lm)
        if len(layers) != 1:
            raise RequestError("layers", f"GRACE keeps its codebook beside one layer; got {list(layers)}: give one, e.g. --set layers={layers[0]}")
        layer = layers[0]
        module = lm.layout.mlp_out[layer]
        keys, values, owner, res = train_values(lm, layer, requests, hp)
        reqs = [r.to_dict() for r in requests]
        labels = key_labels(reqs, owner)
        earlier = [(e.keys, key_labels(e.requests, e.owner)) for c in lm.codebooks for e in c.entries if e.module == module]
        radii = deferral_radii(keys, labels, hp.radius, earlier)
        info = {"layer": layer, "layer_reason": self.layers_reason(lm), "module": module, "keys": int(keys.shape[0]),
                "radius_min": float(radii.min()), "radius_max": float(radii.max()),
                "radii_shrunk": int((radii < hp.radius).sum()), "n_requests": len(requests), "seconds": res["seconds"],
                "gradient_steps": sum(res["steps"]) / len(res["steps"]),
                "per_request": {"gradient_steps": res["steps"], "loss_last": res["loss_last"]}}
        entry = CodebookEntry(self.name, {**asdict(hp), "layers": layers}, reqs, module, keys.cpu(), values.cpu(), radii,
                              owner.cpu(), info)
        return CodebookEdit([entry], {"model": lm.name, "model_identity": lm.identity})


def train_values(lm: LanguageModel, layer: int, requests: list[Request], hp: GRACEHyperParams):
    """Keys (K, d_in), trained values (K, d_out), each key's request, and a report of the training."""
    t0 = time.perf_counter()
    model, proj = lm.model, lm.layout.mlp_out[layer]
    rows = build_rows(lm, requests, ["{}"], ())  # one row per request: prompt + target
    n, dev = rows.n_requests, rows.input_ids.device
    t_rows, t_cols, t_ids = rows.target_rows, rows.target_cols, rows.target_ids
    first_col = torch.full((n,), 1 << 30, dtype=torch.long, device=dev).scatter_reduce(0, t_rows, t_cols, "amin")
    split = split_rows(rows.input_ids, rows.attention_mask, first_col, getattr(lm.config, "sliding_window", None))
    cols = split.cols(t_rows, t_cols)
    pf = PartialForward(lm, layer, split)
    with torch.no_grad(), Hooks(model) as hooks:
        rec = hooks.record(proj, inputs=True, outputs=True)
        pf.first(hooks)
        # the layer's tensors live on its device (a device map may spread layers); the bookkeeping on `dev`
        keys = rec.input[t_rows.to(rec.input.device), cols.to(rec.input.device)].float().to(dev)
        values0 = rec.output[t_rows.to(rec.output.device), cols.to(rec.output.device)].float().to(dev)
    if not (torch.isfinite(keys).all() and torch.isfinite(values0).all()):
        raise EditFailedError("the unedited model produces non-finite activations on this request; check the model's dtype")
    values = values0.clone().requires_grad_(True)
    final = values0.clone()  # each request's values when it stopped (Adam's momentum moves them after)
    opt = torch.optim.Adam([values], lr=hp.lr)
    per_request = torch.bincount(t_rows, minlength=n).float()
    active = torch.ones(n, dtype=torch.bool, device=dev)
    at = t_rows.clone()  # each key's row in the passes (-1 once its request has stopped)
    steps, loss_last = [hp.steps] * n, [float("nan")] * n

    def replace(out):  # the keys' outputs become their values (``at`` as it is at each pass)
        sel = at >= 0
        return out.index_put((at[sel].to(out.device), cols[sel].to(out.device)), values[sel].to(out.device, out.dtype))

    with frozen_weights(model), eager_attention(model), Hooks(model) as hooks:
        pf.install(hooks)
        hooks.edit_output(proj, replace)
        for step in range(hp.steps + 1):
            opt.zero_grad(set_to_none=True)
            sel = at >= 0
            logp = torch.log_softmax(lm.logits(pf().to(dev)[at[sel], cols[sel]]).float(), -1).to(dev)
            nll = -logp.gather(1, t_ids[sel][:, None])[:, 0]
            loss = torch.zeros(n, device=dev).index_add(0, t_rows[sel], nll / per_request[t_rows[sel]])
            if not torch.isfinite(loss).all():
                raise EditFailedError(f"GRACE's value training diverged (non-finite loss at step {step}); lower lr (now {hp.lr})")
            with torch.no_grad():
                for i in active.nonzero()[:, 0].tolist():
                    loss_last[i] = float(loss[i])
                done = active & ((loss < hp.loss_stop) | (step == hp.steps))
                for i in done.nonzero()[:, 0].tolist():
                    steps[i] = step
                    final[t_rows == i] = values[t_rows == i]
            if done.any():
                active &= ~done
                if not active.any():
                    break
                kept = active.nonzero()[:, 0]
                pf.select(kept)
                row = torch.full((n,), -1, dtype=torch.long, device=dev)
                row[kept] = torch.arange(len(kept), device=dev)
                at = row[t_rows]
            loss[active].sum().backward()
            opt.step()
    return keys.detach(), final, t_rows.detach(), {"steps": steps, "loss_last": loss_last, "seconds": time.perf_counter() - t0}
