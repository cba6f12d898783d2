"""Measurements that cannot be trusted: speedups above the FLOP bound, a dense latency that moved."""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.results.aggregate import is_control
from harness.results.findings.common import (
    ABOVE_BOUND_SLACK,
    CHANCE_MARGIN_PP,
    DENSE_LATENCY_TOLERANCE,
    Finding,
    _pp,
    _times,
    above_bound,
    at_chance,
)


def _group_name(index: Any) -> str:
    """A groupby key (one value or a tuple) as text: "lenet5/mnist-embedded/32/cpu"."""
    return "/".join(str(v) for v in (index if isinstance(index, tuple) else (index,)))


def measurement_problems(cells: pd.DataFrame) -> list[Finding]:
    """What the run cannot vouch for: speedups above their FLOP bound, a dense latency that moved within the run,
    and cells that ended at chance accuracy (failures, not results)."""
    key, title = "measurement_problems", "Measurement problems"
    ok = cells[~is_control(cells)] if not cells.empty else cells
    sentences, numbers, rows = [], {}, []
    suspect = ok[above_bound(ok)]
    if not suspect.empty:
        sentences.append(f"{len(suspect)} cells measured a speedup more than {ABOVE_BOUND_SLACK:.0%} above their own "
                         "FLOP bound, which the arithmetic does not allow: a timing problem, so they are not ranked.")
        numbers["above_bound"] = suspect["cell_id"].tolist()
        rows += [{"problem": "speedup above FLOP bound", "cell": r["cell_id"],
                  "value": f"{_times(r['speedup'])} vs bound {_times(r['flop_speedup'])}"} for _, r in suspect.iterrows()]
    if not cells.empty and "latency_dense_ms" in cells.columns:
        dense = cells.assign(latency_dense_ms=pd.to_numeric(cells["latency_dense_ms"], errors="coerce"))
        group = [c for c in ("model", "dataset", "latency_batch", "device") if c in dense.columns]
        spread = dense.dropna(subset=["latency_dense_ms"]).groupby(group)["latency_dense_ms"].agg(["min", "max"])
        spread = spread[spread["min"] > 0]
        loose = spread[spread["max"] / spread["min"] > DENSE_LATENCY_TOLERANCE]
        for index, r in loose.iterrows():
            sentences.append(f"The dense latency of {_group_name(index)} ranged {r['min']:.3g}–{r['max']:.3g} ms "
                             f"within the run (more than {DENSE_LATENCY_TOLERANCE:g}× apart): its speedups carry that "
                             "noise.")
            rows.append({"problem": "dense latency moved", "cell": _group_name(index),
                         "value": f"{r['min']:.3g}–{r['max']:.3g} ms"})
        numbers["dense_latency_spread"] = {_group_name(i): r["max"] / r["min"] for i, r in spread.iterrows()}
    failed = ok[at_chance(ok)]
    if not failed.empty:
        sentences.append(f"{len(failed)} cells ended within {CHANCE_MARGIN_PP:g} pp of chance accuracy: they learned "
                         "nothing, a failure of that backend and method, and are kept out of regime comparisons.")
        numbers["at_chance"] = failed["cell_id"].tolist()
        rows += [{"problem": "accuracy at chance", "cell": r["cell_id"], "value": f"{_pp(r['acc_final'])} %"}
                 for _, r in failed.iterrows()]
    if not sentences:
        return [Finding(key, title, "None found: no speedup above its FLOP bound, the dense latency stayed within "
                                    f"{DENSE_LATENCY_TOLERANCE:g}× over the run, and no cell ended at chance.", numbers)]
    return [Finding(key, title, " ".join(sentences), numbers, pd.DataFrame(rows))]
