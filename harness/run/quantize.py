"""INT8 graphs for ONNX Runtime, made by ONNX Runtime's own quantization tooling, and their test-set accuracy.

With ``--quantize int8`` the ONNX Runtime phase (:func:`harness.run.latency.measure_ort`) hands every FP32 graph it
exported (each kept network's and each dense baseline's) to :func:`quantize_int8`: ``onnxruntime.quantization``'s
pre-processing (shape inference and graph optimisation), then static QDQ quantization calibrated (MinMax) on
:func:`calibration_sample`, the same seeded sample of the training split for every graph of a dataset, and where
static quantization fails, dynamic quantization (INT8 weights, activations quantized as they come), the mode and
the static failure recorded. The data types follow ONNX Runtime's guidance for the CPU that runs them
(:func:`cpu_scheme`). A graph that neither mode quantizes, or whose quantized graph does not run, raises
:class:`QuantizeFailed` naming the node that fails, found by quantizing the graph's nodes one at a time.
:func:`onnx_accuracy` is a graph's accuracy on the test split, run in ONNX Runtime as a user would run it.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.core.errors import one_line
from harness.run.export import load_exported, quiet

# The calibration sample: this many training images at most, fewer for large inputs (each image is a forward of the
# whole graph with a min and max taken of every tensor, so the sample's size sets the quantization's time).
CALIBRATION_IMAGES = 128
CALIBRATION_ELEMENTS = 1 << 23
CALIBRATION_BATCH = 8
# Not any cell's seed: every cell of a dataset, whatever its seed, is calibrated on the very same images.
CALIBRATION_SEED = 20_241_207
# The quantizer logs its advice through the root logger (and numpy warns on the way).
ROOT_LOGGER = ("",)
# Nodes tried one by one to name the one that fails (on a failure only; each try is a quantization).
MAX_NODES_TRIED = 60
# CPU flags of the 8-bit dot-product instructions, with which 8-bit products accumulate without saturation.
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


class QuantizeFailed(Exception):
    """A graph that cannot be quantized to INT8; the message is one line naming the node that fails."""


@dataclass(frozen=True)
class Quantized:
    """An INT8 graph written to ``path``: ``mode`` is ``static`` or ``dynamic``; ``static_error`` says why static
    quantization was not possible where the mode is dynamic."""

    path: Path
    mode: str
    static_error: str | None = None


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags") for word in line.split())


@dataclass(frozen=True)
class Scheme:
    """The data types and options of a quantization, and their short name (``U8S8 per-channel``)."""

    activation: str
    weight: str
    reduce_range: bool
    per_channel: bool = True

    @property
    def name(self) -> str:
        short = {"QUInt8": "U8", "QInt8": "S8"}
        return (f"{short[self.activation]}{short[self.weight]}{' reduced-range' if self.reduce_range else ''}"
                f"{' per-channel' if self.per_channel else ''}")

    def options(self) -> dict:
        from onnxruntime.quantization import QuantType

        return {"activation_type": getattr(QuantType, self.activation), "weight_type": getattr(QuantType, self.weight),
                "reduce_range": self.reduce_range, "per_channel": self.per_channel}


def cpu_scheme() -> Scheme:
    """ONNX Runtime's recommendation for CPU inference (``quantize_static``'s documentation): unsigned activations and
    signed weights on x86-64, with 7-bit weights where the CPU lacks VNNI (8-bit products would saturate); signed
    both on ARM. Per-channel weights: the small factor convs of a decomposed network vary widely between channels."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return Scheme("QInt8", "QInt8", reduce_range=False)
    return Scheme("QUInt8", "QInt8", reduce_range=not (_cpu_flags() & VNNI_FLAGS))


def calibration_sample(data) -> torch.Tensor:
    """The calibration images of a dataset: the first images of a permutation of its training split drawn with
    :data:`CALIBRATION_SEED` (``data`` is a :class:`harness.run.data.DataSplits` or ``FolderData``), on the CPU."""
    elements = 1
    for size in data.input_shape:
        elements *= int(size)
    count = max(1, min(CALIBRATION_IMAGES, CALIBRATION_ELEMENTS // max(elements, 1)))
    images, _ = next(iter(data.train_batches(count, torch.Generator().manual_seed(CALIBRATION_SEED))))
    return images.detach().cpu().float()


class _Reader:
    """``onnxruntime.quantization``'s calibration data reader over a tensor of images, in batches."""

    def __init__(self, images: torch.Tensor, input_name: str) -> None:
        self.batches: Iterator[dict] = iter([{input_name: batch.numpy()} for batch in images.split(CALIBRATION_BATCH)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def _runs(path: Path, example: torch.Tensor) -> None:
    """Load the graph in ONNX Runtime and run it once: a quantized graph whose kernels are missing fails here."""
    load_exported(path, "onnx", threads=1)(example)


def _static(source: Path, out: Path, calibration: torch.Tensor, scheme: Scheme) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    quantize_static(str(source), str(out), _Reader(calibration, _input_name(source)), quant_format=QuantFormat.QDQ,
                    calibrate_method=CalibrationMethod.MinMax, **scheme.options())


def _dynamic(source: Path, out: Path, scheme: Scheme, nodes: list[str] | None = None) -> None:
    from onnxruntime.quantization import quantize_dynamic

    options = scheme.options()
    del options["activation_type"]  # dynamic quantization picks unsigned activations itself
    quantize_dynamic(str(source), str(out), nodes_to_quantize=nodes, **options)


def quantize_int8(fp32: Path, out: Path, calibration: torch.Tensor, scheme: Scheme | None = None) -> Quantized:
    """Write the INT8 graph of the FP32 graph ``fp32`` to ``out`` (see the module docstring); :class:`QuantizeFailed`
    when neither static nor dynamic quantization gives a graph that runs."""
    scheme = scheme or cpu_scheme()
    prepared = out.with_name(f".{out.name}.pre.onnx")
    example = calibration[:2]
    try:
        with quiet(ROOT_LOGGER):
            try:
                from onnxruntime.quantization import quant_pre_process

                quant_pre_process(str(fp32), str(prepared))
                source = prepared
            except Exception:  # noqa: BLE001 - pre-processing only helps; the graph as exported is quantized instead
                source = fp32
            try:
                _static(source, out, calibration, scheme)
                _runs(out, example)
                return Quantized(out, "static")
            except Exception as exc:  # noqa: BLE001 - the quantizer raises anything (AssertionError among them)
                static_error = one_line(exc)[:300]
            try:
                _dynamic(source, out, scheme)
                _runs(out, example)
                return Quantized(out, "dynamic", static_error)
            except Exception as exc:  # noqa: BLE001 - as above
                out.unlink(missing_ok=True)
                node = _failing_node(source, out.with_name(f".{out.name}.node.onnx"), scheme, example)
                where = f"node {node}" if node else "the graph"
                raise QuantizeFailed(f"INT8 quantization fails at {where}: {one_line(exc)[:200]} (static: "
                                     f"{static_error})") from None
    finally:
        prepared.unlink(missing_ok=True)


def _describe(node) -> str:
    """``name (OpType of layer path)``: the layer path from the exporter's name scopes, where it recorded them."""
    scopes = next((entry.value for entry in node.metadata_props if entry.key == "pkg.torch.onnx.name_scopes"), "")
    parts = [part.strip(" '\"") for part in scopes.strip("[]").split(",")]
    layer = ".".join(part for part in parts[:-1] if part)
    return f"{node.name} ({node.op_type}{f' of layer {layer}' if layer else ''})"


def _failing_node(source: Path, scratch: Path, scheme: Scheme, example: torch.Tensor) -> str | None:
    """The first node of ``source`` whose quantization alone (dynamic: no calibration to repeat) fails or gives a
    graph that does not run."""
    import onnx

    nodes = [node for node in onnx.load(str(source)).graph.node if node.name][:MAX_NODES_TRIED]
    try:
        for node in nodes:
            try:
                _dynamic(source, scratch, scheme, nodes=[node.name])
                _runs(scratch, example)
            except Exception:  # noqa: BLE001 - any failure marks this node as the one that fails
                return _describe(node)
    finally:
        scratch.unlink(missing_ok=True)
    return None


def onnx_accuracy(path: Path, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], threads: int | None = None
                  ) -> float:
    """Accuracy (in %) of the graph at ``path`` in ONNX Runtime over ``batches`` of (images, labels)."""
    run = load_exported(path, "onnx", threads)
    correct = seen = 0
    for images, labels in batches:
        logits = run(images.detach().cpu().float())
        correct += int((logits.argmax(dim=1) == labels.cpu()).sum())
        seen += len(labels)
    return 100.0 * correct / max(seen, 1)
