"""A cell's network on disk as data, never as code: a state dict, its content hash, and the cell replayed to rebuild it.

A run directory is something people copy, share and download, so nothing in it is unpickled as code. A cell's
fine-tuned network (waiting in ``networks/`` for the latency phase, or kept in ``models/`` by ``--save-models``)
is one file written by :func:`save_network`: the state dict and the network's output on a fixed, seeded probe
input, read back with ``torch.load(weights_only=True)``. The file's SHA-256 goes to the cell's row in the store
(``network_sha256``) and is checked before the file is read (:func:`read_network`): a flipped byte is one line,
never a network. The architecture is not in the file: :func:`rebuild_network` starts from the cell's dense
baseline (or, where the cache no longer holds it, the model built afresh) and replays the cell's resolved
per-layer plan through its backend, with each layer's recorded budget and chosen method, asking the backend for
the structure only (``DecomposeRequest.rebuild``); the saved tensors are then loaded strictly (every name and
shape must agree) and the rebuilt network must reproduce the recorded probe output, so a replay that built
something else is refused instead of measured or exported.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.errors import one_line
from harness.core.files import write_atomically
from harness.plan.cells import Cell
from harness.plan.result import LayerResult, StoredCell
from harness.run.baseline import file_digest as file_sha256

NETWORKS = "networks"
# Bump when the file's content changes (1: state dict, probe input's seed and shape, probe output).
NETWORK_FORMAT = 1
PROBE_SEED, PROBE_BATCH = 0, 2
# A rebuilt network's probe output may differ from the recorded one by float32 rounding only (threads change the
# order of a conv's sums), relative to the output's own scale.
PROBE_TOLERANCE = 1e-4


class NetworkInvalid(Exception):
    """A saved network that cannot be trusted or rebuilt (damaged file, wrong hash, another architecture); the
    message is one line."""


def network_path(run_dir: str | os.PathLike, cell_id: str) -> Path:
    """Where a cell's fine-tuned network waits for the latency phase."""
    return Path(run_dir) / NETWORKS / f"{hashlib.sha1(cell_id.encode()).hexdigest()[:16]}.pt"


def probe_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed input whose output is recorded with a saved network and checked after every rebuild."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(PROBE_BATCH, *input_shape, generator=generator)


def _probe_output(model: nn.Module, probe: torch.Tensor) -> torch.Tensor:
    training = model.training
    try:
        with torch.inference_mode():
            return model.eval()(probe).detach().float().cpu().clone()
    finally:
        model.train(training)


def save_network(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> str:
    """Write ``model``'s tensors and its probe output to ``path`` atomically; returns the file's SHA-256.

    The model is moved to the CPU for the write and back to its device afterwards."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    model.cpu()
    try:
        state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        content = {"format": NETWORK_FORMAT, "state_dict": state, "probe_shape": list(input_shape),
                   "probe_output": _probe_output(model, probe_input(input_shape))}
        # Serialised once: the bytes written are the bytes hashed, without reading the file back.
        buffer = io.BytesIO()
        torch.save(content, buffer)
        data = buffer.getvalue()
        write_atomically(path, lambda handle: handle.write(data))
    finally:
        model.to(device)
    return hashlib.sha256(data).hexdigest()


@dataclass
class SavedNetwork:
    """What :func:`read_network` gives: the tensors, and the probe the rebuilt network must reproduce."""

    state_dict: dict[str, torch.Tensor]
    probe_shape: tuple[int, ...]
    probe_output: torch.Tensor


def read_network(path: Path, expected_sha256: str | None) -> SavedNetwork:
    """The saved network at ``path``, checked against the content hash the store recorded for it."""
    if not path.is_file():
        raise NetworkInvalid(f"the saved network {path} is missing")
    if not expected_sha256:
        raise NetworkInvalid(f"the store records no content hash for {path} (a network saved by an older harness, "
                             "as a pickled module, is not loaded: unpickling it could run code)")
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise NetworkInvalid(f"the saved network {path} does not match the content hash in the store "
                             f"(sha256 {actual[:12]}… where {expected_sha256[:12]}… was recorded): it is damaged "
                             "or was replaced, and is not used")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        state, shape, output = content["state_dict"], tuple(content["probe_shape"]), content["probe_output"]
    except Exception as exc:  # noqa: BLE001 - a file that is not what save_network writes: one line
        raise NetworkInvalid(f"the saved network {path} cannot be read as data: {one_line(exc)[:250]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NetworkInvalid(f"the saved network {path} holds no state dict")
    return SavedNetwork(state, shape, output)


def load_cell_network(record: StoredCell | None, path: Path, host: Any, base: nn.Module,
                      base_is_baseline: bool = True) -> nn.Module:
    """The network a stored cell saved at ``path``: its file checked against the hash in ``record`` (what
    :func:`harness.results.store.read_cell` gives), read as data and rebuilt on ``base`` (see :func:`rebuild_network`)."""
    if record is None:
        raise NetworkInvalid(f"the store has no cell for the saved network {path}")
    saved = read_network(path, record.metrics.get("network_sha256"))
    if not record.spec:
        raise NetworkInvalid(f"the store keeps no plan to rebuild the network {path} from (a run by an older harness)")
    try:
        cell = Cell.from_dict(record.spec)
    except (TypeError, ValueError, KeyError) as exc:
        raise NetworkInvalid(f"the stored plan of the network {path} cannot be read: {exc}") from None
    return rebuild_network(cell, record.layers, host, base, saved, base_is_baseline)


def held_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _same_output(output: torch.Tensor, recorded: torch.Tensor) -> bool:
    """Equal up to rounding, non-finite entries (a diverged cell's) in the same places."""
    if output.shape != recorded.shape:
        return False
    finite = torch.isfinite(recorded)
    if not torch.equal(torch.isfinite(output), finite):
        return False
    if not finite.any():
        return True
    scale = max(1.0, float(recorded[finite].abs().max()))
    return float((output[finite] - recorded[finite]).abs().max()) <= PROBE_TOLERANCE * scale


def rebuild_network(cell: Cell, rows: list[LayerResult], host: Any, base: nn.Module, saved: SavedNetwork,
                    base_is_baseline: bool = True) -> nn.Module:
    """The cell's network: ``base`` (the dense network the cell started from, copied, not changed) with the cell's
    plan replayed on it through ``host`` (see :func:`harness.run.runner.replay_plan`), the saved tensors loaded
    strictly, checked against the saved probe output; on the CPU, in eval mode."""
    from harness.run.runner import replay_plan

    model = copy.deepcopy(base).cpu()
    why = "" if base_is_baseline else (" (the cell's dense baseline is no longer in the cache, so the model was "
                                       "built afresh: a replay that depends on the trained weights cannot be redone)")
    try:
        replay_plan(cell, host, model, rows)
    except Exception as exc:  # noqa: BLE001 - a backend that cannot replay: one line
        raise NetworkInvalid(f"the architecture of {cell.cell_id} cannot be rebuilt: {one_line(exc)[:250]}{why}"
                             ) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(saved.state_dict))
    unexpected = sorted(set(saved.state_dict) - set(expected))
    wrong = [name for name in expected if name in saved.state_dict
             and tuple(expected[name].shape) != tuple(saved.state_dict[name].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            f"other shapes for {', '.join(wrong[:3])}" if wrong else "") if part)
        raise NetworkInvalid(f"the rebuilt architecture of {cell.cell_id} does not fit its saved weights "
                             f"({detail}){why}")
    model.load_state_dict(saved.state_dict, strict=True)
    if not _same_output(_probe_output(model, probe_input(saved.probe_shape)), saved.probe_output):
        raise NetworkInvalid(f"the rebuilt network of {cell.cell_id} does not reproduce the saved one's output on "
                             f"its probe input{why}")
    return model.eval()
