"""Editing a classifier (Sinitsin et al., "Editable Neural Networks", ICLR 2020): the request, the edit
loss, and the editor.

A request asks that one input be classified as a given label. The edit loss is a hinge that is zero
once that label has the highest logit: ``max_{j≠y} z_j − z_y`` clipped at 0. An edit is plain gradient
descent on it over the editable parameters, stopping as soon as it holds, at most ``max_steps`` steps.
The same steps, unrolled and differentiated, are what editable training (train.py) optimises through.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import torch
from torch.func import functional_call

from modeledit.classifier.model import Classifier
from modeledit.errors import RequestError
from modeledit.fingerprint import fingerprint
from modeledit.delta import Delta
from modeledit.patch import Patch


@dataclass(frozen=True)
class ClassifierRequest:
    """Classify ``input`` (one example, without a batch dimension) as class ``label``."""

    input: torch.Tensor
    label: int

    def check(self, clf: Classifier) -> None:
        if not isinstance(self.input, torch.Tensor):
            raise RequestError("input", f"must be a tensor, got {type(self.input).__name__}")
        if tuple(self.input.shape) != tuple(clf.input_shape):
            raise RequestError("input", f"has shape {tuple(self.input.shape)}; this classifier takes one input of shape "
                                        f"{tuple(clf.input_shape)} (no batch dimension)")
        if not torch.isfinite(self.input).all():
            raise RequestError("input", "holds NaN or infinite values")
        if isinstance(self.label, bool) or not isinstance(self.label, int) or not 0 <= self.label < clf.n_classes:
            raise RequestError("label", f"{self.label!r} is not a class index 0..{clf.n_classes - 1} "
                                        f"({', '.join(clf.classes[:4])}, ...)")

    def to_dict(self) -> dict:
        return {"label": self.label, "input_shape": list(self.input.shape), "input_sha": fingerprint(self.input)}


def edit_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(batch,) hinge: how far the best other class's logit is above the wanted one's (0 once it wins)."""
    wanted = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return (others - wanted).clamp(min=0)


Forward = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]


def edit_steps(
    forward: Forward, params: dict[str, torch.Tensor], x: torch.Tensor, labels: torch.Tensor,
    lr: torch.Tensor | float, max_steps: int, *, create_graph: bool = False,
) -> tuple[dict[str, torch.Tensor], int, list[float]]:
    """Gradient steps on the edit loss until it is zero or ``max_steps`` are taken. With
    ``create_graph`` the steps stay differentiable (editable training). Returns the new parameters, the
    number of steps, and the loss before each step and after the last."""
    losses: list[float] = []
    steps = 0
    for steps in range(max_steps + 1):
        loss = edit_loss(forward(params, x), labels).sum()
        losses.append(float(loss.detach()))
        if losses[-1] <= 0 or steps == max_steps:
            break
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
    return params, steps, losses


@dataclass(frozen=True)
class ENNHyperParams:
    lr: float | None = None  # None: the classifier's own edit_lr (learnt by editable training)
    max_steps: int = 10

    def __post_init__(self) -> None:
        if self.lr is not None and not (0 < self.lr < float("inf")):
            raise RequestError("lr", f"must be a positive number, got {self.lr!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise RequestError("max_steps", f"must be a positive integer, got {self.max_steps!r}")


class ENN:
    """Gradient-descent editing of a classifier's editable parameters. On a model prepared by editable
    training this is the ENN editor; on a normally trained one it is the fine-tuning baseline."""

    name = "enn"
    family = "classifier"
    HyperParams = ENNHyperParams

    def __init__(self, hparams: ENNHyperParams | None = None, **overrides):
        base = hparams or ENNHyperParams()
        self.hparams = ENNHyperParams(**{**asdict(base), **overrides}) if overrides else base

    def prepare(self, clf: Classifier, progress=None) -> None:
        """Nothing to precompute."""

    def edit(self, clf: Classifier, request: ClassifierRequest, progress=None) -> Patch:
        """The edit as a patch (weights untouched). ``patch.entries[0].info["success"]`` says whether the
        label wins after at most ``max_steps`` steps; a failed edit's patch should not be applied."""
        request.check(clf)
        t0 = time.perf_counter()
        lr = self.hparams.lr if self.hparams.lr is not None else clf.edit_lr
        module = clf.module
        module.eval()
        live = dict(module.named_parameters())
        start = {n: live[n].detach().clone().requires_grad_(True) for n in clf.editable}
        x = request.input[None].to(clf.device, next(module.parameters()).dtype)
        y = torch.tensor([request.label], device=clf.device)
        with torch.enable_grad():
            new, steps, losses = edit_steps(lambda ps, inp: functional_call(module, ps, (inp,)), start, x, y, lr, self.hparams.max_steps)
        deltas = {n: Delta(dense=(new[n].detach() - start[n].detach())) for n in clf.editable}
        patch = Patch.from_deltas(module, deltas, method=self.name, hparams={**asdict(self.hparams), "lr": lr},
                                  request=request.to_dict(), meta={"classes": list(clf.classes)})
        with torch.no_grad(), patch.applied(module):  # success as the user will see it: on the patched weights
            success = int(module(x).argmax(1)) == request.label
        patch.entries[0].info.update(success=success, gradient_steps=steps, loss_first=losses[0], loss_last=losses[-1],
                                     seconds=time.perf_counter() - t0)
        return patch
