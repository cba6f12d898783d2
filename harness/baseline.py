"""The dense baseline: trained once per (model, dataset, seed, training settings), cached on disk.

The cache key is a hash of that spec, so a change to any training setting trains a new
baseline while every cell and every later run with the same spec reuses the stored
weights. Files are written to a temporary name and renamed, so a run killed while
saving never leaves a half-written baseline behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from harness.data import DataSplits
from harness.training import TrainSettings, evaluate, train

# Bump when the training procedure changes in a way the settings do not capture.
BASELINE_FORMAT = 1


def baseline_key(model: str, dataset: str, seed: int, training: dict[str, Any]) -> str:
    spec = {"model": model, "dataset": dataset, "seed": seed, "training": training, "format": BASELINE_FORMAT,
            "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def baseline_path(cache_dir: str | os.PathLike, model: str, dataset: str, seed: int, training: dict[str, Any]) -> Path:
    key = baseline_key(model, dataset, seed, training)
    return Path(cache_dir) / "baselines" / f"{model}-{dataset}-s{seed}-{key}.pt"


def build_seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with initial weights drawn from ``seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def ensure_baseline(
    path: Path,
    build: Callable[[], nn.Module],
    data: DataSplits,
    seed: int,
    training: dict[str, Any],
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Load the cached baseline at ``path`` or train and cache it; returns its metadata."""
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)["meta"]
    model = build_seeded(build, seed).to(data.train_x.device)
    settings = TrainSettings(**training)
    start = time.perf_counter()
    records = train(model, data, settings, seed=seed, progress=progress)
    _, accuracy = evaluate(model, data.test_x, data.test_y)
    meta = {"acc": accuracy, "train_s": time.perf_counter() - start, "epochs": len(records),
            "final_train_loss": records[-1].train_loss if records else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save({"state_dict": state, "meta": meta}, tmp)
    os.replace(tmp, path)
    return meta


def load_baseline(path: Path, build: Callable[[], nn.Module], device: torch.device | str) -> nn.Module:
    model = build()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return model.to(device).eval()
