"""The dense baseline: trained once per (model, dataset, seed, training settings), cached on disk.

The cache key is a hash of that spec, so a change to any training setting trains a new
baseline while every cell and every later run with the same spec reuses the stored
weights. A user's checkpoint (``--weights``) replaces the random init: it is loaded with
``torch.load(weights_only=True)`` (a state dict, or a dict holding one under a usual key,
``module.`` prefixes of ``DataParallel`` removed), every key checked, and then fine-tuned
for ``--baseline-epochs`` (0: used as it is); the file's SHA-256 is part of the cache key.
A cache entry is verified before it is used: it must load, its weights must match the
content hash stored in it, and (where there is data) its re-measured test accuracy must
match the recorded one; an entry that fails is reported in one line, deleted and
retrained (:class:`CacheInvalid`). Files are written to a temporary name, flushed to disk
and renamed, so a run killed while saving never leaves a half-written baseline behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from harness.config.settings import RunConfig
from harness.core.errors import one_line
from harness.core.files import write_atomically
from harness.plan.cells import short_name
from harness.run.data import Data
from harness.run.training import TrainSettings, evaluate_test, train

# Bump when the training procedure or the file's content changes in a way the settings do not capture
# (2: every entry carries the content hash of its weights).
BASELINE_FORMAT = 2
# A re-measured accuracy further than this from the recorded one (points) marks the entry invalid; the same
# weights on the same data give the same accuracy, but a GPU-trained entry evaluated on a CPU may differ a little.
ACCURACY_TOLERANCE = 0.5


# Keys under which checkpoints commonly hold their state dict (training scripts, Lightning, timm, ...).
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params", "module")


class WeightsError(Exception):
    """A checkpoint that cannot be used for a model; the message is one line."""


class CacheInvalid(Exception):
    """A cached baseline that cannot be trusted (unreadable, or not what was stored); the message is one line."""


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape(-1): a 0-d tensor (BatchNorm's num_batches_tracked) has no bytes view of its own
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def read_baseline(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and metadata of a cache entry, checked against the content hash stored with them."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        state, meta = stored["state_dict"], stored["meta"]
    except Exception as exc:  # truncated, overwritten, not a torch file at all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CacheInvalid(f"cannot be read ({type(exc).__name__}: {first[:200]})") from None
    if meta.get("content_sha256") != state_digest(state):
        raise CacheInvalid("its weights do not match the content hash stored with them")
    return state, meta


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read in blocks, so a large checkpoint is not held twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def baseline_key(model: str, dataset: str, seed: int, training: dict[str, Any], weights: str | None = None) -> str:
    spec = {"model": model, "dataset": dataset, "seed": seed, "training": training, "format": BASELINE_FORMAT,
            "torch": torch.__version__.split("+")[0]}
    if weights is not None:
        spec["weights_sha256"] = file_digest(weights)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-80:]


def baseline_path(cache_dir: str | os.PathLike, model: str, dataset: str, seed: int, training: dict[str, Any],
                  weights: str | None = None) -> Path:
    key = baseline_key(model, dataset, seed, training, weights)
    # Short names: a file model's path would otherwise make a long name, or a hidden one ("./net.py" -> "._net").
    name = f"{_file_safe(short_name(model))}-{_file_safe(short_name(dataset))}-s{seed}-{key}.pt"
    return Path(cache_dir) / "baselines" / name


def run_baseline_path(config: RunConfig, model: str, dataset: str, seed: int) -> Path:
    """The cache entry of the dense baseline a run's cells of (model, dataset, seed) start from."""
    return baseline_path(config.cache_dir, model, dataset, int(seed), config.training_spec(),
                         config.weights_for(model))


def _state_dict_of(loaded: Any) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded
    if isinstance(loaded, dict):
        for key in STATE_DICT_KEYS:
            if key in loaded:
                return _state_dict_of(loaded[key])
    if isinstance(loaded, torch.nn.Module):
        return loaded.state_dict()
    raise WeightsError(f"holds no state dict (a dict of tensors, or one under {', '.join(STATE_DICT_KEYS)})")


def _first(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load the checkpoint at ``path`` into ``model``; :class:`WeightsError` (one line) when it does not fit."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"weights file {str(path)!r} does not exist") from None
    except Exception as exc:  # a pickle needing arbitrary code, a truncated or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"weights file {str(path)!r} cannot be loaded with torch.load(weights_only=True): "
                           f"{first[:300]}") from None
    try:
        state = _state_dict_of(loaded)
    except WeightsError as exc:
        raise WeightsError(f"weights file {str(path)!r} {exc}") from None
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {len(missing)} keys ({_first(missing)})"] if missing else []) + (
            [f"unexpected {len(unexpected)} keys ({_first(unexpected)})"] if unexpected else [])
        raise WeightsError(f"weights file {str(path)!r} does not fit the model: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise WeightsError(f"weights file {str(path)!r} does not fit the model: shapes differ for {_first(wrong)}")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # a diverged training's checkpoint: every cell would start from, and report on, NaNs
        raise WeightsError(f"weights file {str(path)!r} holds non-finite values (NaN or inf) in {len(broken)} "
                           f"tensors ({_first(broken)})")
    model.load_state_dict(state)


def build_seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with initial weights drawn from ``seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def ensure_baseline(
    path: Path,
    build: Callable[[], nn.Module],
    data: Data | None,
    seed: int,
    training: dict[str, Any],
    progress: Callable[[int], None] | None = None,
    weights: str | None = None,
    device: torch.device | str = "cpu",
    on_invalid: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Load the cached baseline at ``path`` if it verifies, or make and cache it; returns its metadata and whether
    it was made now.

    The model starts from ``weights`` when given, else from a random init drawn from ``seed``, and is trained
    on ``data`` for the epochs in ``training`` (none without data). An entry that does not verify (see
    :func:`read_baseline`, and its accuracy re-measured on ``data``) is reported through ``on_invalid``, deleted
    and made again. Raises :class:`WeightsError` for a checkpoint that does not fit.
    """
    if path.exists():
        try:
            state, meta = read_baseline(path)
            model = build()
            try:  # an entry whose weights are another architecture's would fail every cell that loads it
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise CacheInvalid(f"its weights do not fit the model ({one_line(exc)[:200]})") from None
            if data is not None and meta.get("acc") is not None:
                accuracy = evaluate_test(model.to(device).eval(), data)[1]
                if abs(accuracy - meta["acc"]) > ACCURACY_TOLERANCE:
                    raise CacheInvalid(f"its test accuracy is {accuracy:.2f}% where {meta['acc']:.2f}% was recorded")
            return meta, False
        except CacheInvalid as exc:
            if on_invalid:
                on_invalid(f"cached baseline {path} was invalid: {exc}; training it again")
            path.unlink(missing_ok=True)
    model = build_seeded(build, seed)
    if weights is not None:
        load_weights(model, weights)
    model = model.to(device)
    settings = TrainSettings(**training)
    start = time.perf_counter()
    records = train(model, data, settings, seed=seed, progress=progress) if data is not None else []
    accuracy = evaluate_test(model, data)[1] if data is not None else None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"acc": accuracy, "train_s": time.perf_counter() - start, "epochs": len(records),
            "final_train_loss": records[-1].train_loss if records else None, "weights": weights,
            "content_sha256": state_digest(state)}
    write_atomically(path, lambda handle: torch.save({"state_dict": state, "meta": meta}, handle))
    return meta, True


def load_baseline(path: Path, build: Callable[[], nn.Module], device: torch.device | str) -> nn.Module:
    """The cached baseline, verified against its content hash (a :class:`CacheInvalid` otherwise)."""
    state, _ = read_baseline(path)
    model = build()
    model.load_state_dict(state)
    return model.to(device).eval()
