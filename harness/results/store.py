"""The results store: one SQLite file per run directory, one transaction per finished cell.

``results.sqlite`` holds the run's metadata (config, command line, versions, device,
threads, git commit), one row per finished cell, one row per cell and fine-tuning
epoch, and one row per decomposed layer. A cell's rows are written in a single
transaction, so a run killed at any moment keeps every finished cell and nothing
half-written; ``--resume`` asks the store which cells are done. Reports read the store
through :func:`load_results`, never the runner's memory.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.plan.result import CellResult, LayerResult, PendingNetwork, StoredCell
from harness.plan.status import Status

if TYPE_CHECKING:  # pandas is imported where results are read, so --help starts fast
    import pandas as pd

STORE_NAME = "results.sqlite"
KEY_COLUMNS = ["backend", "model", "dataset", "method", "target", "ratio", "seed", "init", "rank_selection",
               "tensorize"]
# Key columns added after the first release, with the value that rows of older stores stand for
# (tensorize "": the default balanced d = 3 shapes, the only ones before the setting existed).
ADDED_KEY_COLUMNS = {"rank_selection": "ratio", "tensorize": ""}
# The cell as planned (its resolved per-layer plan included), JSON: what a kept network is rebuilt from.
SPEC_COLUMN = "spec"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, backend TEXT, model TEXT, dataset TEXT, method TEXT, target TEXT,
    ratio REAL, seed INTEGER, init TEXT, status TEXT NOT NULL, error TEXT, traceback TEXT,
    metrics TEXT NOT NULL, finished_at REAL NOT NULL, rank_selection TEXT NOT NULL DEFAULT 'ratio',
    tensorize TEXT NOT NULL DEFAULT '', spec TEXT);
CREATE TABLE IF NOT EXISTS epochs (
    cell_id TEXT NOT NULL, epoch INTEGER NOT NULL, train_loss REAL, test_loss REAL, test_acc REAL, epoch_s REAL,
    PRIMARY KEY (cell_id, epoch));
CREATE TABLE IF NOT EXISTS layers (
    cell_id TEXT NOT NULL, layer TEXT NOT NULL, kind TEXT, params_dense INTEGER, params INTEGER, max_params INTEGER,
    recon_error REAL, decompose_s REAL, info TEXT, stdout TEXT, PRIMARY KEY (cell_id, layer));
"""


class StoreError(Exception):
    """The run directory has no readable store, or another driver holds it; the message is one line."""


def check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """Raise :class:`StoreError` unless SQLite's own integrity check passes: a damaged store is never resumed
    or reported from."""
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{str(path)!r} cannot be read: {exc}") from None
    if [tuple(row) for row in rows] != [("ok",)]:
        first = rows[0][0] if rows else "no answer"
        raise StoreError(f"{str(path)!r} is damaged (SQLite integrity check: {str(first)[:200]})")


class RunLock:
    """The advisory lock (``fcntl.flock`` on ``RUN_DIR/.lock``) that makes one driver the only writer of a run.

    The lock file holds the holder's pid, so a second ``harness run --resume`` names who has the run. The kernel
    drops the lock when its holder dies however it dies, so a killed run never leaves a stale lock behind.
    """

    NAME = ".lock"

    def __init__(self, run_dir: str | Path):
        import fcntl

        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise StoreError(f"{str(self.run_dir)!r} is a file, not a run directory")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.run_dir / self.NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot use {str(self.run_dir)!r} as a run directory: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise StoreError(f"{str(self.run_dir)!r} is in use by another harness run (pid {holder}); wait for it "
                             "to finish or use another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None


def _json_object(text: Any) -> dict[str, Any] | None:
    """A stored JSON object (a cell's metrics or spec, a layer's info), or None where its JSON is damaged."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + "-journal")


def connect_for_reading(path: Path) -> sqlite3.Connection:
    """A connection that reads ``path`` and writes nothing of its own.

    A driver killed inside a cell's transaction leaves a hot journal beside the store, which only a connection
    that may write can roll back (a read-only one fails with "attempt to write a readonly database"); SQLite
    rolls it back on the first read, restoring the last committed state. So where such a journal is present and
    the store is writable, the connection opens read-write with ``query_only`` on; elsewhere it is read-only."""
    if journal_path(path).exists() and os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA query_only = ON")
        return conn
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _cell_record(conn: sqlite3.Connection, cell_id: str) -> StoredCell | None:
    """One stored cell as a kept network's rebuild needs it (its layer rows' ``info`` parsed)."""
    row = conn.execute(f"SELECT model, dataset, seed, {SPEC_COLUMN}, metrics FROM cells WHERE cell_id = ?",
                       (cell_id,)).fetchone()
    if row is None:
        return None
    model, dataset, seed, spec, metrics = row
    layers = [LayerResult(layer, kind, params_dense, params, max_params, recon_error, decompose_s,
                          _json_object(info) or {}, stdout)
              for layer, kind, params_dense, params, max_params, recon_error, decompose_s, info, stdout
              in conn.execute("SELECT layer, kind, params_dense, params, max_params, recon_error, decompose_s, info, "
                              "stdout FROM layers WHERE cell_id = ?", (cell_id,))]
    return StoredCell(cell_id, model, dataset, seed, _json_object(metrics) or {},
                      _json_object(spec) if spec else None, layers)


def _finite(value: Any) -> Any:
    # SQLite stores NaN as NULL anyway; doing it here keeps JSON valid too.
    if isinstance(value, float) and value != value:
        return None
    return value


class Store:
    """Write side of a run's SQLite store (used by the driver only)."""

    def __init__(self, run_dir: str | Path):
        """Open the existing store of ``run_dir`` (see :meth:`create` for a new one); raises :class:`StoreError`
        when there is none or it is damaged."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        if not self.path.is_file():
            raise StoreError(f"{str(self.run_dir)!r} is not a run directory (no {STORE_NAME} in it)")
        self.conn = sqlite3.connect(self.path)
        try:
            check_integrity(self.conn, self.path)
            # The default rollback journal keeps the run directory one file, and each cell's
            # transaction is still atomic and durable across a kill.
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
            self._add_missing_columns()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StoreError(f"{str(self.path)!r} cannot be read: {exc}") from None
        except StoreError:
            self.conn.close()
            raise

    @classmethod
    def create(cls, run_dir: str | Path, meta: dict[str, Any]) -> Store:
        """Make ``run_dir``'s store with its metadata in one step: written under a temporary name, flushed and
        renamed, so a kill leaves either no store or a whole one, never a store without its configuration."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        partial = run_dir / f".{STORE_NAME}.partial"
        partial.unlink(missing_ok=True)
        conn = sqlite3.connect(partial)
        try:
            conn.executescript(SCHEMA)
            with conn:
                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 [(k, json.dumps(v, default=str)) for k, v in meta.items()])
        finally:
            conn.close()
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, run_dir / STORE_NAME)
        return cls(run_dir)

    def _add_missing_columns(self) -> None:
        """Bring a store written before a key column existed up to date, so such a run can be resumed."""
        present = {row[1] for row in self.conn.execute("PRAGMA table_info(cells)")}
        with self.conn:
            for column, default in ADDED_KEY_COLUMNS.items():
                if column not in present:
                    # Appended last, as in SCHEMA, so old and new stores have the same column order.
                    self.conn.execute(f"ALTER TABLE cells ADD COLUMN {column} TEXT NOT NULL DEFAULT '{default}'")
            if SPEC_COLUMN not in present:
                self.conn.execute(f"ALTER TABLE cells ADD COLUMN {SPEC_COLUMN} TEXT")

    def close(self) -> None:
        self.conn.close()

    def set_meta(self, values: dict[str, Any]) -> None:
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                  [(k, json.dumps(v, default=str)) for k, v in values.items()])

    def meta(self) -> dict[str, Any]:
        try:
            return _checked_meta(self.conn, self.path)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{str(self.path)!r} cannot be read: {exc}") from None

    def cell_record(self, cell_id: str) -> StoredCell | None:
        """See :func:`read_cell`."""
        return _cell_record(self.conn, cell_id)

    def finished_ids(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT cell_id FROM cells")}

    def ids_with_status(self, statuses: tuple[str, ...]) -> set[str]:
        marks = ", ".join("?" * len(statuses))
        return {row[0] for row in self.conn.execute(f"SELECT cell_id FROM cells WHERE status IN ({marks})", statuses)}

    def _networks(self, waiting: Callable[[dict[str, Any]], bool]) -> list[PendingNetwork]:
        rows = self.conn.execute("SELECT cell_id, model, dataset, seed, metrics FROM cells ORDER BY finished_at")
        return [PendingNetwork(cell_id, model, dataset, seed, metrics) for cell_id, model, dataset, seed, text in rows
                if waiting(metrics := _json_object(text) or {})]

    def pending_latency(self) -> list[PendingNetwork]:
        """Every cell whose network waits for the latency phase, in the order they finished."""
        return self._networks(lambda metrics: bool(metrics.get("latency_pending")))

    def awaiting_ort(self, int8: bool = False) -> list[PendingNetwork]:
        """Every cell whose kept network (``--save-models``) has not been timed in ONNX Runtime yet (with ``int8``,
        ``--quantize int8``: or not quantized yet), in the order they finished."""

        def waiting(metrics: dict[str, Any]) -> bool:
            if not metrics.get("model_file") or "ort_error" in metrics:
                return False
            return "ort_speedup" not in metrics or int8 and "int8_speedup" not in metrics and "int8_error" not in metrics
        return self._networks(waiting)

    def update_metrics(self, cell_id: str, values: dict[str, Any]) -> None:
        """Merge ``values`` into a finished cell's metrics, in one transaction."""
        with self.conn:
            (text,) = self.conn.execute("SELECT metrics FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
            metrics = {**(_json_object(text) or {}), **{k: _finite(v) for k, v in values.items()}}
            self.conn.execute("UPDATE cells SET metrics = ? WHERE cell_id = ?", (json.dumps(metrics), cell_id))

    def add_result(self, result: CellResult) -> None:
        """Store a finished cell, its epochs and its layers in one transaction."""
        cell, cell_id = result.cell.to_dict(), result.cell_id
        metrics = {k: _finite(v) for k, v in result.metrics.items()}
        with self.conn:
            self.conn.execute("DELETE FROM epochs WHERE cell_id = ?", (cell_id,))
            self.conn.execute("DELETE FROM layers WHERE cell_id = ?", (cell_id,))
            columns = ["cell_id", *KEY_COLUMNS, "status", "error", "traceback", "metrics", "finished_at", SPEC_COLUMN]
            keys = [cell.get(k, ADDED_KEY_COLUMNS.get(k)) for k in KEY_COLUMNS]
            self.conn.execute(
                f"INSERT OR REPLACE INTO cells ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                (cell_id, *keys, Status(result.status).value, result.error, result.traceback, json.dumps(metrics),
                 time.time(), json.dumps(cell)))
            self.conn.executemany(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?)",
                [(cell_id, e.epoch, _finite(e.train_loss), _finite(e.test_loss), e.test_acc, e.epoch_s)
                 for e in result.epochs])
            self.conn.executemany(
                "INSERT INTO layers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(cell_id, r.layer, r.kind, r.params_dense, r.params, r.max_params, _finite(r.recon_error),
                  r.decompose_s, json.dumps(r.info), r.stdout) for r in result.layers])


# The only status whose cells may be compared, ranked or summarised.
COMPARABLE_STATUS = Status.OK


def comparable_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells a report may compare: status ``ok`` and, where the store says so, within their parameter budget.

    A cell whose backend broke its budget is stored ``over_budget`` by runs since that status exists; an older
    store's ``ok`` cell with ``budget_ok`` false is left out here all the same.
    """
    if cells.empty or "status" not in cells.columns:
        return cells
    keep = cells["status"] == COMPARABLE_STATUS
    if "budget_ok" in cells.columns:
        keep &= cells["budget_ok"].map(lambda value: value is not False and value != 0)
    return cells[keep]


@dataclass
class RunResults:
    """A run as the reports see it, read from ``results.sqlite`` alone: what a report plugin may use.

    - ``run_dir``: the run directory (write report files here).
    - ``meta``: the run's metadata: ``config`` (every setting, as a dict), ``command``, ``started_at``,
      ``harness_version``, ``git_commit``, ``python``, ``platform``, ``torch``, ``libraries`` (backend ->
      library and version), ``plugins``, ``device``, ``device_name``, ``threads``, ``cpu_count``, ``seeds``,
      ``flop_convention`` and ``not_planned`` (combinations the planner left out and why).
    - ``cells``: one row per finished cell: the key columns (:data:`KEY_COLUMNS`), ``cell_id``, ``status``
      (``ok``, ``unsupported``, ``error``, ``timeout``, ``diverged``, ``over_budget``, ``damaged``), ``error`` and every
      metric the runner measured (``params``, ``compression``, ``acc_final``, ``speedup``, ...).
    - ``epochs``: one row per cell and fine-tuning epoch; ``layers``: one row per decomposed layer; both
      carry the key columns of their cell.
    - :attr:`comparable`: the cells that may be ranked, compared or summarised (ok, within budget, the dense
      control included: tell it apart with ``harness.results.aggregate.is_control``). Rank only these.
    """

    run_dir: Path
    meta: dict[str, Any]
    cells: pd.DataFrame
    epochs: pd.DataFrame
    layers: pd.DataFrame
    # One line per stored row that could not be read back (its cell is listed with status "damaged").
    warnings: list[str] = field(default_factory=list)

    @property
    def comparable(self) -> pd.DataFrame:
        """The cells a report may rank: see :func:`comparable_cells`."""
        return comparable_cells(self.cells)

    @property
    def data_free(self) -> bool:
        """Whether the run measured no accuracy (``--no-train``: random inputs, untrained networks)."""
        return bool((self.meta.get("config") or {}).get("no_train"))


def _checked_meta(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """The meta table as a dict, with the run's configuration a table (a damaged one is a :class:`StoreError`)."""
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    if not isinstance(meta.get("config", {}), dict):
        raise StoreError(f"{str(path)!r} cannot be read: its stored configuration is not a table")
    return meta


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """A run's metadata, read without writing anything (raises :class:`StoreError` for a missing or damaged
    store)."""
    path = Path(run_dir) / STORE_NAME
    if not path.is_file():
        raise StoreError(f"{str(run_dir)!r} is not a run directory (no {STORE_NAME} in it)")
    try:
        conn = connect_for_reading(path)
        try:
            check_integrity(conn, path)
            return _checked_meta(conn, path)
        finally:
            conn.close()
    except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
        raise StoreError(f"{str(path)!r} cannot be read: {str(exc).splitlines()[0][:300]}") from None


def load_results(run_dir: str | Path) -> RunResults:
    """Read a run directory's store into :class:`RunResults` (raises :class:`StoreError`)."""
    import pandas as pd

    run_dir = Path(run_dir)
    path = run_dir / STORE_NAME
    if not path.is_file():
        raise StoreError(f"{str(run_dir)!r} is not a run directory (no {STORE_NAME} in it)")
    try:
        conn = connect_for_reading(path)
        check_integrity(conn, path)
        meta = _checked_meta(conn, path)
        raw = pd.read_sql_query("SELECT * FROM cells ORDER BY finished_at", conn)
        epochs = pd.read_sql_query("SELECT * FROM epochs ORDER BY cell_id, epoch", conn)
        layers = pd.read_sql_query("SELECT * FROM layers ORDER BY cell_id, layer", conn)
        conn.close()
    except (sqlite3.DatabaseError, pd.errors.DatabaseError, json.JSONDecodeError) as exc:
        raise StoreError(f"{str(path)!r} cannot be read: {str(exc).splitlines()[0][:300]}") from None
    for column, default in ADDED_KEY_COLUMNS.items():
        if column not in raw.columns:  # a store from before the column, opened read-only: fill what it meant
            raw[column] = default
    if SPEC_COLUMN in raw.columns:  # the rebuild's input (read_cell), not a result
        raw = raw.drop(columns=[SPEC_COLUMN])
    parsed, warnings = [], []
    for index, text in zip(raw.index, raw["metrics"]):
        values = _json_object(text)
        if values is None:
            warnings.append(f"warning: the stored row of cell {raw.at[index, 'cell_id']} is damaged (its metrics are "
                            "not valid JSON); it is listed as damaged and left out of every comparison")
            raw.at[index, "status"], raw.at[index, "error"] = Status.DAMAGED.value, "its stored metrics cannot be read"
        parsed.append(values or {})
    metrics = pd.DataFrame(parsed, index=raw.index)
    # A metric named like a stored column would duplicate it; the column wins.
    metrics = metrics.drop(columns=[c for c in metrics.columns if c in raw.columns])
    cells = pd.concat([raw.drop(columns=["metrics"]), metrics], axis=1)
    keys = cells.set_index("cell_id")[KEY_COLUMNS]
    epochs = epochs.join(keys, on="cell_id")
    layers = layers.join(keys, on="cell_id")
    return RunResults(run_dir=run_dir, meta=meta, cells=cells, epochs=epochs, layers=layers, warnings=warnings)


def read_cell(run_dir: str | Path, cell_id: str) -> StoredCell | None:
    """One stored cell as rebuilding its saved network needs it (:class:`harness.plan.result.StoredCell`), or None
    when the run has no such cell."""
    path = Path(run_dir) / STORE_NAME
    try:
        conn = connect_for_reading(path)
        try:
            return _cell_record(conn, cell_id)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{str(path)!r} cannot be read: {str(exc).splitlines()[0][:300]}") from None
