"""Classifiers to edit: a module, its classes, its input shape, and which parameters edits may change.

Saved as a directory: ``model.safetensors`` (weights) and ``classifier.json`` (architecture, classes,
editable parameters, the editor's learning rate, how it was trained). Built-in architectures are named in
``ARCHITECTURES``; any other ``torch.nn.Module`` works in memory (``Classifier(module, ...)``) and loads
from a directory when the same module is passed to ``load_classifier``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from modeledit.errors import ModelNotFoundError, RequestError


def cnn(n_classes: int = 10, width: int = 16, hidden: int = 128) -> nn.Sequential:
    """A small convolutional network for 28×28 grey images: two conv blocks, then a 2-layer MLP head
    (the head is the late block that edits change by default)."""
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        ),
        nn.Sequential(nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"cnn": cnn}


def last_block(module: nn.Module) -> tuple[str, ...]:
    """Names of the parameters of the last top-level child that has parameters (the default editable set)."""
    children = [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]
    if not children:
        return tuple(n for n, _ in module.named_parameters())
    name, child = children[-1]
    return tuple(f"{name}.{n}" for n, _ in child.named_parameters())


@dataclass
class Classifier:
    module: nn.Module
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]  # one input, without the batch dimension
    editable: tuple[str, ...] = ()  # parameter names edits change; () means last_block(module)
    edit_lr: float = 0.1  # the editor's step size (learnt by editable training)
    architecture: dict[str, Any] | None = None  # {"name": ..., "kwargs": {...}} for built-in architectures
    info: dict[str, Any] = field(default_factory=dict)  # how it was trained, its test error ...

    def __post_init__(self) -> None:
        names = dict(self.module.named_parameters())
        self.editable = tuple(self.editable) or last_block(self.module)
        unknown = [n for n in self.editable if n not in names]
        if unknown:
            raise RequestError("editable", f"{unknown} are not parameters of the model; choose among {list(names)[:8]}...")
        self.module.eval()

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def split(self) -> tuple[nn.Module, nn.Module] | None:
        """(trunk, head) when the module is a Sequential whose editable parameters all lie in its last
        children: edits then leave the trunk's output unchanged, so evaluation can cache it."""
        if not isinstance(self.module, nn.Sequential):
            return None
        first = min(int(n.split(".")[0]) for n in self.editable)
        return self.module[:first], self.module[first:]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        self.module.eval()
        return torch.cat([self.module(images[i : i + batch_size].to(self.device)).argmax(1).cpu()
                          for i in range(0, len(images), batch_size)])

    def error(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return int((self.predict(images) != labels).sum()) / len(labels)  # exact count, not a float32 mean

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.module.state_dict().items()}, str(out / "model.safetensors"))
        meta = {"format": "modeledit.classifier", "classes": list(self.classes), "input_shape": list(self.input_shape),
                "editable": list(self.editable), "edit_lr": self.edit_lr, "architecture": self.architecture, "info": self.info}
        tmp = out / "classifier.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(out / "classifier.json")
        return out


def build(name: str = "cnn", classes: tuple[str, ...] = tuple(map(str, range(10))), **kwargs: Any) -> Classifier:
    if name not in ARCHITECTURES:
        raise RequestError("architecture", f"unknown architecture {name!r}: choose one of {', '.join(ARCHITECTURES)}")
    module = ARCHITECTURES[name](n_classes=len(classes), **kwargs)
    return Classifier(module, tuple(classes), (1, 28, 28), architecture={"name": name, "kwargs": kwargs})


def load_classifier(path: str | Path, module: nn.Module | None = None, device: str | torch.device = "cpu") -> Classifier:
    """Load a saved classifier; pass ``module`` for an architecture that is not built in."""
    path = Path(path)
    meta_file = path / "classifier.json"
    if not meta_file.exists():
        raise ModelNotFoundError(f"{path} holds no classifier.json: give a directory written by `modeledit classifier train`")
    meta = json.loads(meta_file.read_text())
    arch = meta.get("architecture")
    if module is None:
        if not arch or arch.get("name") not in ARCHITECTURES:
            raise ModelNotFoundError(f"{path}: the architecture is not built in; pass the module to load_classifier")
        module = ARCHITECTURES[arch["name"]](n_classes=len(meta["classes"]), **arch.get("kwargs", {}))
    try:
        module.load_state_dict(load_file(str(path / "model.safetensors")))
    except (RuntimeError, OSError) as exc:
        raise ModelNotFoundError(f"{path}: the weights do not fit the architecture ({exc})") from exc
    module.to(device)
    return Classifier(module, tuple(meta["classes"]), tuple(meta["input_shape"]), tuple(meta["editable"]),
                      float(meta["edit_lr"]), arch, meta.get("info", {}))
