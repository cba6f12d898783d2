"""Datasets (embedded and torchvision from small files made here), models, and the metrics."""

from __future__ import annotations

import copy
import functools

import pickle
import struct

import numpy as np
import pytest
import torch
from torch import nn

from harness.run.data import DataUnavailable, load_cifar10, load_fashion_mnist, load_mnist, load_mnist_embedded
from harness.measure.metrics import count_flops, effective_weight, measure_latency, reconstruction_error
from harness.run.models import lenet5, mlp, vgg_small
from harness.plan.planner import target_layers


def test_embedded_mnist_is_a_deterministic_stratified_split():
    first, second = load_mnist_embedded(), load_mnist_embedded()
    assert first.train_x.shape == (4000, 1, 28, 28) and first.test_x.shape == (1000, 1, 28, 28)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert first.train_y.bincount().tolist() == [400] * 10
    assert first.test_y.bincount().tolist() == [100] * 10
    assert abs(first.train_x.mean().item()) < 1e-4  # standardised on the training split


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("loader, folder", [(load_mnist, "MNIST"), (load_fashion_mnist, "FashionMNIST")])
def test_torchvision_mnist_formats_from_a_local_directory(tmp_path, loader, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 30), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    splits = loader(tmp_path, False)
    assert splits.train_x.shape == (30, 1, 28, 28) and splits.test_x.shape == (10, 1, 28, 28)
    assert splits.num_classes == 10 and splits.test_y.tolist() == list(range(10))


def test_torchvision_cifar10_from_a_local_directory(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    # Small files cannot match torchvision's MD5 sums; everything after that check is real.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    splits = load_cifar10(tmp_path, False)
    assert splits.train_x.shape == (20, 3, 32, 32) and splits.test_x.shape == (4, 3, 32, 32)
    assert splits.num_classes == 10


def test_missing_data_directory_is_a_one_line_explanation(tmp_path):
    with pytest.raises(DataUnavailable, match="does not exist.*--download"):
        load_mnist(tmp_path / "nowhere", False)
    with pytest.raises(DataUnavailable, match="not found.*--download"):
        load_mnist(tmp_path, False)
    with pytest.raises(DataUnavailable, match="needs --data-dir"):
        load_cifar10(None, False)


@pytest.mark.parametrize("build, shape", [(mlp, (1, 28, 28)), (lenet5, (1, 28, 28)), (lenet5, (3, 32, 32)),
                                          (vgg_small, (1, 28, 28)), (vgg_small, (3, 32, 32))])
def test_models_build_for_each_input_shape(build, shape):
    model = build(shape, 10)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_targets_keep_first_conv_and_classifier_dense():
    model = vgg_small((1, 28, 28), 10)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [n for n, _ in target_layers(model, "conv")] == convs[1:]
    assert len(target_layers(model, "linear")) == 1
    assert len(target_layers(model, "all")) == len(convs) - 1 + 1
    assert len(target_layers(model, "conv", keep_edges_dense=False)) == len(convs)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(3, 5), padding=(1, 2)),
    dict(kernel_size=3, dilation=2, padding=2), dict(kernel_size=4, padding="same"), dict(kernel_size=3, stride=(2, 1)),
])
def test_effective_weight_of_a_conv_is_its_weight(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, **kwargs)
    assert torch.allclose(effective_weight(conv, conv), conv.weight, atol=1e-5)
    assert reconstruction_error(conv, conv) < 1e-5


@pytest.mark.parametrize("dense", [nn.Conv2d(64, 32, 3, padding=1), nn.Conv2d(16, 8, 5, stride=2), nn.Linear(300, 40)])
def test_effective_weight_probes_in_chunks_of_bounded_size(dense, monkeypatch):
    # All impulses in one batch once asked TedNet's TT conv for 18.9 GB on ResNet-18; chunks keep a probe small.
    import harness.measure.metrics

    monkeypatch.setattr(harness.measure.metrics, "PROBE_ELEMENTS", 4096)
    sizes = []
    dense.register_forward_pre_hook(lambda module, args: sizes.append(args[0][0].numel() * len(args[0])))
    torch.manual_seed(0)
    assert torch.allclose(effective_weight(dense, dense), dense.weight, atol=1e-5)
    per_input = sizes[0]  # the zero input that measures the bias comes first
    assert len(sizes) > 3 and max(sizes) <= max(4096, per_input)


@pytest.mark.parametrize("dense", [nn.Linear(120, 60), nn.Conv2d(12, 16, 3, stride=2, padding=1)])
def test_a_probe_too_slow_to_finish_gives_a_labelled_estimate_of_the_error(dense, monkeypatch):
    # tltorch's block-TT on VGG-11's 25,088-input Linear needs a forward per input feature: over 13 minutes exact.
    import harness.measure.metrics
    from harness.measure.metrics import replacement_error

    monkeypatch.setattr(harness.measure.metrics, "PROBE_ELEMENTS", 256)  # several chunks, so the first projects the rest

    torch.manual_seed(0)
    noisy = copy.deepcopy(dense)
    with torch.no_grad():
        noisy.weight.add_(0.3 * noisy.weight.std() * torch.randn_like(noisy.weight))
        noisy.bias.add_(1.0)  # a different bias is not a different weight
    exact, how = replacement_error(noisy, dense)
    assert how is None and exact == pytest.approx(reconstruction_error(noisy, dense), rel=1e-6)
    estimate, how = replacement_error(noisy, dense, seconds=0.0, inputs=512)
    assert how["estimated_from_random_inputs"] == 512 and "projected" in how["why"]
    assert 0 < how["stderr"] < 0.05 * exact
    assert abs(estimate - exact) < 4 * how["stderr"]


def test_effective_weight_sees_a_low_rank_replacement():
    torch.manual_seed(0)
    dense = nn.Linear(20, 10)
    u, s, vh = torch.linalg.svd(dense.weight.detach())
    first, second = nn.Linear(20, 3, bias=False), nn.Linear(3, 10)
    first.weight.data, second.weight.data, second.bias.data = vh[:3] * s[:3, None], u[:, :3], dense.bias.data
    replacement = nn.Sequential(first, second)
    expected = torch.linalg.vector_norm(s[3:]) / torch.linalg.vector_norm(s)
    assert reconstruction_error(replacement, dense) == pytest.approx(expected.item(), rel=1e-4)


def test_flops_follow_the_stated_convention():
    assert count_flops(nn.Linear(30, 20), torch.zeros(5, 30)) == 2 * 30 * 20  # one sample, multiply-add = 2
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, torch.zeros(2, 3, 10, 10)) == 2 * 8 * 3 * 9 * 100


def test_latency_is_positive_milliseconds():
    assert 0 < measure_latency(nn.Linear(10, 10), torch.zeros(4, 10), min_run_time=0.01) < 1000


def counting_sleeper(calls: dict[str, int], name: str, seconds: float):
    """A call that sleeps ``seconds`` and counts itself in ``calls[name]``: a stand-in network of known latency."""
    import time

    calls[name] = 0

    def call() -> None:
        calls[name] += 1
        time.sleep(seconds)
    return call


def test_paired_rounds_time_each_call_in_calibrated_blocks():
    from harness.measure.metrics import latency_summary, paired_rounds

    calls: dict[str, int] = {}
    sleeper = functools.partial(counting_sleeper, calls)
    pairs = paired_rounds(sleeper("dense", 0.004), sleeper("other", 0.002), rounds=4, block_seconds=0.02)
    assert len(pairs) == 4
    summary = latency_summary(pairs)
    assert 3.9 < summary["latency_dense_ms"] < 8 and 1.9 < summary["latency_ms"] < 5
    assert 1.3 < summary["speedup"] < 2.3
    # Warm-up and calibration once per call, then blocks of several calls each: not one call per round.
    assert calls["dense"] >= 4 * 3 and calls["other"] >= 4 * 6


def test_paired_rounds_of_slow_calls_stop_after_their_time_budget():
    from harness.measure.metrics import paired_rounds

    calls: dict[str, int] = {}
    sleeper = functools.partial(counting_sleeper, calls)
    # Each call fills a block by itself: the calibration is the first round, warm-up stops after one call, and
    # the rounds stop once their budget is spent instead of running all seven.
    pairs = paired_rounds(sleeper("dense", 0.05), sleeper("other", 0.03), rounds=7, block_seconds=0.02,
                          warmup_seconds=0.01, rounds_seconds=0.1)
    assert 1 <= len(pairs) < 7
    assert all(45 < dense < 80 and 25 < other < 60 for dense, other in pairs)
    assert calls["dense"] == 1 + len(pairs) and calls["other"] == 1 + len(pairs)


def test_a_cell_records_which_layers_errors_were_estimated(tmp_path, fast_args, monkeypatch):
    import json

    import pandas as pd

    import harness.measure.metrics
    from harness.cli.main import main

    monkeypatch.setattr(harness.measure.metrics, "PROBE_ELEMENTS", 20_000)
    monkeypatch.setattr(harness.measure.metrics, "PROBE_SECONDS", 0.0)  # every probe with more than one chunk is too slow
    out = tmp_path / "run"
    assert main(["run", "--backends", "native", "--methods", "svd", "--targets", "linear", "--no-train",
                 "--executor", "inprocess", "--out", str(out), *fast_args]) == 0
    layers = pd.read_csv(out / "layers.csv")
    estimated = [json.loads(info).get("recon_error_estimate") for info in layers["info"]]
    assert any(estimated) and not all(estimated)  # 400 inputs take several chunks, 120 one
    for (_, row), estimate in zip(layers.iterrows(), estimated):
        if estimate:
            assert estimate["estimated_from_random_inputs"] == 64 and 0 < estimate["stderr"] < 0.1 * row["recon_error"]
