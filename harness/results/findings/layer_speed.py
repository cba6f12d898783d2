"""Which replaced layers run slower than the dense layers they replace, by their measured latency tables."""

from __future__ import annotations

import pandas as pd

from harness.results.aggregate import layer_info
from harness.results.findings.common import Finding

SHOWN = 8


def slower_layers(cells: pd.DataFrame, layers: pd.DataFrame) -> list[Finding]:
    """The decomposed layers of comparable cells whose replacement measured slower than its dense layer (only runs
    that measured latency tables: ``--layer-latency`` or a latency selector); nothing where none was measured."""
    key, title = "slower_layers", "Replaced layers slower than the dense layer"
    if layers.empty or cells.empty or "info" not in layers.columns:
        return []
    rows = layers[layers["cell_id"].isin(set(cells["cell_id"]))]
    infos = [layer_info(text) for text in rows["info"]]
    timed = [(row, info) for (_, row), info in zip(rows.iterrows(), infos)
             if info.get("latency_dense_layer_ms") is not None and not info.get("left_dense")]
    if not timed:
        return []
    slow = [(row, info) for row, info in timed if info.get("slower_than_dense")]
    if not slow:
        return [Finding(key, title, f"None: every one of the {len(timed)} replaced layers whose latency was measured "
                        "runs faster than its dense layer on this machine.", {"slower": 0, "timed": len(timed)})]
    table = pd.DataFrame([{"cell": row["cell_id"], "layer": row["layer"],
                           "method": info.get("method"), "replacement ms": info["latency_predicted_ms"],
                           "dense ms": info["latency_dense_layer_ms"],
                           "speed ×": info["latency_dense_layer_ms"] / info["latency_predicted_ms"]}
                          for row, info in slow]).sort_values("speed ×")
    worst = table.iloc[0]
    text = (f"{len(slow)} of {len(timed)} replaced layers run slower than the dense layer they replace (the slowest: "
            f"{worst['layer']} of {worst['cell']} at {worst['speed ×']:.2f}× the dense layer's speed). "
            "--rank-selection latency:S keeps such layers dense.")
    return [Finding(key, title, text, {"slower": len(slow), "timed": len(timed)}, table.head(SHOWN))]
