"""--quantize int8: kept networks and their dense baselines quantized by onnxruntime.quantization, evaluated on the
test set and timed in ONNX Runtime beside FP32; harness export writes the INT8 graph and checks its accuracy.

One trained LeNet-5 run (module scope) on the embedded MNIST keeps native Tucker-2 and SVD conv networks. It runs
first without ``--quantize`` and is then resumed with ``--quantize int8``, so adding INT8 to a finished run is
covered too; a network with a NaN weight goes through the phase itself to show a graph that cannot be quantized.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from harness.cli.main import main

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("int8") / "run"
    args = ["run", "--models", "lenet5", "--backends", "native", "--methods", "tucker2,svd", "--targets", "conv",
            "--ratios", "4", "--epochs", "1", "--baseline-epochs", "1", "--no-dense-control", "--latency-passes", "1",
            "--jobs", "1", "--save-models", "--cache-dir", str(cache_dir), "--out", str(out)]
    assert main(args) == 0
    assert "int8_speedup" not in pd.read_csv(out / "cells.csv").columns
    assert main(["run", "--resume", str(out), "--quantize", "int8"]) == 0
    yield out, pd.read_csv(out / "cells.csv").set_index("method")


def test_decomposed_networks_and_their_dense_baseline_are_quantized_evaluated_and_timed(int8_run):
    out, cells = int8_run
    assert set(cells.index) == {"tucker2", "svd"} and (cells["status"] == "ok").all()
    for column in ("int8_acc", "int8_dense_acc", "int8_latency_ms", "int8_dense_latency_ms", "int8_speedup",
                   "int8_vs_fp32_speedup", "ort_speedup"):
        assert cells[column].gt(0).all(), column
    assert (cells["int8_mode"] == "static").all()
    assert cells["int8_scheme"].str.startswith("QDQ ").all()
    assert cells["int8_calibration_images"].eq(128).all()
    assert cells["int8_dense_acc"].nunique() == 1  # one dense baseline, quantized once
    for row in cells.itertuples():
        graph = out / row.int8_file
        assert graph.name.endswith(".int8.onnx") and graph.is_file()
        ops = {node.op_type for node in __import__("onnx").load(str(graph)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "INT8" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "after INT8" in page and "--format onnx --quantize int8" in page  # the answer row's INT8 take-home command


def test_int8_accuracy_is_within_two_points_of_fp32_on_mnist(int8_run):
    _, cells = int8_run
    assert cells["acc_final"].gt(80).all()  # trained: a comparison of accuracies means something
    assert ((cells["ort_acc"] - cells["acc_final"]).abs() <= 0.2).all()  # the FP32 graph is the network
    assert ((cells["int8_acc"] - cells["ort_acc"]).abs() <= 2.0).all()
    assert ((cells["int8_dense_acc"] - cells["ort_dense_acc"]).abs() <= 2.0).all()


def test_export_writes_the_int8_graph_and_checks_its_accuracy(int8_run, tmp_path, capsys):
    out, cells = int8_run
    cell_id, stored = cells.loc["tucker2", "cell_id"], cells.loc["tucker2", "int8_acc"]
    target = tmp_path / "net.int8.onnx"
    assert main(["export", str(out), cell_id, "--quantize", "int8", "--out", str(target)]) == 0
    printed = capsys.readouterr().out
    assert f"its test accuracy in ONNX Runtime {stored:.2f} % matches the run's int8_acc" in printed
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: torch.zeros(3, 1, 28, 28).numpy()})[0]
    assert logits.shape == (3, 10)

    # Without the run's INT8 file the network is quantized again from the kept one, to the same accuracy.
    measured = out / cells.loc["tucker2", "int8_file"]
    saved = measured.read_bytes()
    measured.unlink()
    try:
        assert main(["export", str(out), cell_id, "--quantize", "int8", "--out", str(tmp_path / "again.onnx")]) == 0
        assert "quantized again (static)" in capsys.readouterr().out
        measured.write_bytes(saved[: len(saved) // 2])  # a damaged file is caught, in one line
        assert main(["export", str(out), cell_id, "--quantize", "int8", "--out", str(tmp_path / "bad.onnx")]) == 1
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "does not run in ONNX Runtime" in error
        assert not (tmp_path / "bad.onnx").exists()
    finally:
        measured.write_bytes(saved)


@pytest.mark.parametrize("args, words", [
    (["run", "--quantize", "int8"], "add --save-models"),
    (["run", "--quantize", "int4", "--save-models"], "unknown quantization 'int4'"),
])
def test_bad_quantize_requests_get_one_line_and_exit_2(args, words, capsys):
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and words in error


def test_export_int8_needs_onnx(int8_run, capsys):
    out, cells = int8_run
    assert main(["export", str(out), cells.loc["svd", "cell_id"], "--quantize", "int8", "--format", "pt"]) == 2
    assert "use --format onnx" in capsys.readouterr().err


class _Store:
    """The two store calls the ONNX Runtime phase makes, kept in memory."""

    def __init__(self) -> None:
        self.metrics: dict[str, dict] = {}

    def cell_record(self, cell_id):
        return None

    def update_metrics(self, cell_id, values):
        self.metrics.setdefault(cell_id, {}).update(values)


def _lenet_like() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 24 * 24, 10)).eval()


def test_a_network_that_cannot_be_quantized_gets_int8_error_naming_the_node(tmp_path):
    from harness.plan.result import PendingNetwork
    from harness.run.latency import Int8Data, measure_ort
    from harness.run.quantize import calibration_sample

    dense, broken = _lenet_like(), _lenet_like()
    with torch.no_grad():
        broken[0].weight[0, 0, 0, 0] = math.nan  # a scale computed from NaN: neither static nor dynamic can quantize
    images = torch.randn(64, 1, 28, 28)
    labels = torch.randint(0, 10, (64,))
    cells = [PendingNetwork("ok", "m", "d", 0, {}), PendingNetwork("nan", "m", "d", 0, {}),
             PendingNetwork("gone", "m", "d", 0, {})]

    def load(cell, path):
        if cell.cell_id == "gone":
            raise RuntimeError("the kept network cannot be rebuilt")
        return broken if cell.cell_id == "nan" else _lenet_like()

    class Splits:  # what calibration_sample reads: input_shape and train_batches(count, generator)
        input_shape = (1, 28, 28)

        def train_batches(self, count, generator):
            yield images[torch.randperm(64, generator=generator)[:count]], labels[:count]

    int8 = Int8Data(lambda cell: calibration_sample(Splits()), lambda cell: [(images, labels)])
    store = _Store()
    lines: list[str] = []
    measure_ort(tmp_path, cells, store, lambda cell: (dense, images[:4]), load, lines.append, passes=1, rounds=2,
                int8=int8)
    ok, nan = store.metrics["ok"], store.metrics["nan"]
    assert ok["int8_mode"] == "static" and ok["int8_speedup"] > 0 and "int8_error" not in ok
    assert nan["int8_error"].startswith("INT8 quantization fails at node node_conv2d (Conv of layer 0)")
    assert "int8_speedup" not in nan and nan["ort_speedup"] > 0  # the FP32 graph is timed all the same
    assert any(line.startswith("[2/3] INT8 of nan not measured: INT8 quantization fails") for line in lines)
    # A network without an FP32 graph has no INT8 one either, and says why.
    assert store.metrics["gone"]["int8_error"] == ("no ONNX graph to quantize: RuntimeError: the kept network cannot "
                                                   "be rebuilt")


def test_every_cell_is_calibrated_on_the_same_training_images():
    from harness.run.data import DataSplits
    from harness.run.quantize import CALIBRATION_IMAGES, calibration_sample

    generator = torch.Generator().manual_seed(1)
    splits = DataSplits(torch.randn(300, 1, 8, 8, generator=generator), torch.zeros(300, dtype=torch.long),
                        torch.randn(10, 1, 8, 8), torch.zeros(10, dtype=torch.long), 2)
    torch.manual_seed(5)
    first = calibration_sample(splits)
    torch.manual_seed(6)  # a cell's seed does not move the sample
    assert torch.equal(first, calibration_sample(splits)) and len(first) == CALIBRATION_IMAGES
    large = DataSplits(torch.randn(64, 3, 224, 224, generator=generator), torch.zeros(64, dtype=torch.long),
                       torch.randn(2, 3, 224, 224), torch.zeros(2, dtype=torch.long), 2)
    assert len(calibration_sample(large)) == 55  # fewer images where each is large
