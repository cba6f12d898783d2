"""What a cell hands to the store, and what the run reads back from it: typed, torch-free values.

A :class:`CellResult` is built by the runner for every cell it ran (whatever its status) and by an executor for
a cell that never reached its end (a time limit, a dead worker): its status (:class:`harness.plan.status.Status`),
the measured ``metrics`` (name -> number, string or bool), one :class:`EpochRecord` per fine-tuning epoch and one
:class:`LayerResult` per targeted layer, decomposed or left dense. :class:`ResultStore` is the part of the store the
run layer calls (the store itself lives in the results layer above it); :class:`StoredCell` and
:class:`PendingNetwork` are what it answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from harness.plan.cells import Cell
from harness.plan.status import Status


@dataclass(frozen=True)
class EpochRecord:
    """One fine-tuning epoch: its mean training loss, the test loss and accuracy after it, and its wall time."""

    epoch: int
    train_loss: float
    test_loss: float
    test_acc: float | None
    epoch_s: float


@dataclass(frozen=True)
class LayerResult:
    """One targeted layer of a cell: its parameters before and after, its budget (None: planned dense), the
    relative error of its replacement, the backend's decomposition seconds, what the backend said about it
    (``info``: method, ranks, ``left_dense`` with the reason when it was not replaced) and what it printed."""

    layer: str
    kind: str
    params_dense: int
    params: int
    max_params: int | None
    recon_error: float | None = 0.0
    decompose_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    stdout: str | None = None

    @property
    def left_dense(self) -> str | None:
        """Why the layer was left dense, or None when it was replaced."""
        return self.info.get("left_dense")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerResult:
        return cls(**data)


@dataclass
class CellResult:
    """A finished cell: filled in by the runner as the cell runs, then stored whole in one transaction."""

    cell: Cell
    status: Status = Status.OK
    error: str | None = None
    traceback: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    epochs: list[EpochRecord] = field(default_factory=list)
    layers: list[LayerResult] = field(default_factory=list)

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    @classmethod
    def failed(cls, cell: Cell, status: Status, message: str) -> CellResult:
        """The result of a cell that measured nothing: it was refused before it ran, or stopped before its end."""
        return cls(cell, status=status, error=message)

    def fail(self, status: Status, message: str, traceback: str | None = None) -> None:
        self.status, self.error, self.traceback = status, message, traceback

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cell": self.cell.to_dict(), "status": self.status.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        return cls(Cell.from_dict(data["cell"]), status=Status(data["status"]), error=data.get("error"),
                   traceback=data.get("traceback"), metrics=dict(data.get("metrics", {})),
                   epochs=[EpochRecord(**e) for e in data.get("epochs", ())],
                   layers=[LayerResult.from_dict(r) for r in data.get("layers", ())])


@dataclass(frozen=True)
class PendingNetwork:
    """A finished cell whose saved network the latency (or ONNX Runtime) phase has still to time."""

    cell_id: str
    model: str
    dataset: str
    seed: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class StoredCell(PendingNetwork):
    """A finished cell as the store keeps it, as much as rebuilding its saved network needs: its key, metrics,
    plan (``spec``: the :class:`harness.plan.cells.Cell` as a dict; None in stores from before plans were kept)
    and layer rows."""

    spec: dict[str, Any] | None
    layers: list[LayerResult]


class ResultStore(Protocol):
    """What the run layer asks of a run's store (:class:`harness.results.store.Store` is the one it gets)."""

    def finished_ids(self) -> set[str]: ...

    def ids_with_status(self, statuses: tuple[str, ...]) -> set[str]: ...

    def add_result(self, result: CellResult) -> None: ...

    def update_metrics(self, cell_id: str, values: dict[str, Any]) -> None: ...

    def pending_latency(self) -> list[PendingNetwork]: ...

    def awaiting_ort(self, int8: bool = False) -> list[PendingNetwork]: ...

    def cell_record(self, cell_id: str) -> StoredCell | None: ...

    def close(self) -> None: ...
