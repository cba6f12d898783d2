"""Training and evaluation loops shared by the dense baseline and every fine-tuning run.

Every backend gets the same optimiser (SGD with momentum and weight decay), the same
learning-rate schedule (cosine to zero, or constant for long stability runs, where a
schedule that freezes the last epochs would hide any instability) and the same data order (a permutation drawn from a
generator seeded by the cell's seed), so differences in the results come from the
decomposition, not from training. Batches come from the dataset's own ``train_batches`` and
``test_batches`` (slices of tensors in memory, or a ``DataLoader`` over an image folder).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.config.settings import TrainSettings
from harness.plan.result import EpochRecord
from harness.run.data import Batches, Data



def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_batches(model: nn.Module, batches: Batches) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in %) of ``model`` over ``batches`` of (images, labels)."""
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for x, target in batches:
            logits = model(x)
            total_loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(dim=1) == target).sum().item()
            seen += len(target)
    model.train(was_training)
    return total_loss / max(seen, 1), 100.0 * correct / max(seen, 1)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in %) of ``model`` on the tensors ``(x, y)``."""
    return evaluate_batches(model, ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)))


def evaluate_test(model: nn.Module, data: Data) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in %) of ``model`` on the test split of ``data``."""
    return evaluate_batches(model, data.test_batches())


def train(
    model: nn.Module,
    data: Data,
    settings: TrainSettings,
    seed: int,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[EpochRecord]:
    """Train ``model`` in place; returns one record per epoch (test metrics after each epoch).

    A loss that becomes NaN or infinite stops training early: the records so far are
    returned and the last one carries the non-finite loss, so callers can mark divergence.
    """
    device = next(model.parameters()).device
    optimiser = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(data.train_size / settings.batch_size)
    if settings.schedule == "constant":
        schedule = torch.optim.lr_scheduler.ConstantLR(optimiser, factor=1.0)
    else:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, settings.epochs * steps_per_epoch))
    order = torch.Generator()
    order.manual_seed(seed)
    records: list[EpochRecord] = []
    for epoch in range(1, settings.epochs + 1):
        start = time.perf_counter()
        model.train()
        total, seen = 0.0, 0
        for x, y in data.train_batches(settings.batch_size, order):
            loss = F.cross_entropy(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip_grad_norm:
                # Factorised layers start far from where SGD put the dense weights; clipping keeps
                # the first steps of every backend alike from blowing up (CP chains especially).
                nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm)
            optimiser.step()
            schedule.step()
            total += loss.item() * len(y)
            seen += len(y)
        synchronize(device)
        epoch_s = time.perf_counter() - start
        train_loss = total / seen
        test_loss, test_acc = evaluate_test(model, data)
        record = EpochRecord(epoch, train_loss, test_loss, test_acc, epoch_s)
        records.append(record)
        if on_epoch:
            on_epoch(record)
        if progress:
            progress(1)
        if not math.isfinite(train_loss):
            break
    model.eval()
    return records
