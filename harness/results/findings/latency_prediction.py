"""How well the latency tables predicted the measured speedup of the networks planned from them."""

from __future__ import annotations

import pandas as pd

from harness.results.aggregate import decomposed_ok
from harness.results.findings.common import Finding, _label

# A prediction further off than this (relative to the measured speedup) says the tables no longer describe the
# machine as the quiet phase found it: a busy profiling phase, another thread count, a frequency change.
PREDICTION_TOLERANCE = 0.15


def latency_prediction(cells: pd.DataFrame) -> list[Finding]:
    """Predicted (from the per-layer latency tables) against measured whole-network speedup, for the cells that
    record a prediction (``--rank-selection latency:S``, ``--layer-latency``); nothing for a run without one."""
    key, title = "latency_prediction", "Predicted against measured speedup"
    ok = decomposed_ok(cells)
    if ok.empty or "predicted_speedup" not in ok.columns:
        return []
    predicted = pd.to_numeric(ok["predicted_speedup"], errors="coerce")
    measured = pd.to_numeric(ok["speedup"], errors="coerce")
    both = ok[predicted.notna() & measured.notna()].assign(predicted=predicted, measured=measured)
    if both.empty:
        return []
    both = both.assign(error=both["measured"] / both["predicted"] - 1)
    off = both[both["error"].abs() > PREDICTION_TOLERANCE]
    worst = both.loc[both["error"].abs().idxmax()]
    text = (f"Over {len(both)} networks planned from latency tables, the measured speedup was "
            f"{both['error'].median():+.0%} off the predicted one at the median (worst {worst['error']:+.0%}: "
            f"{_label(worst)}, predicted "
            f"{worst['predicted']:.2f}×, measured {worst['measured']:.2f}×).")
    if off.empty:
        text += f" Every prediction was within {PREDICTION_TOLERANCE:.0%}."
    else:
        text += (f" {len(off)} were more than {PREDICTION_TOLERANCE:.0%} off: the tables may not describe this machine "
                 "as the quiet phase found it (another load, thread count or clock); measuring them again, with "
                 "nothing else running, should help.")
    table = pd.DataFrame({"cell": both["cell_id"], "predicted ×": both["predicted"].map("{:.2f}".format),
                          "measured ×": both["measured"].map("{:.2f}".format),
                          "off": both["error"].map("{:+.0%}".format)})
    return [Finding(key, title, text, {"median_error": float(both["error"].median()), "networks": len(both),
                                       "off": len(off)}, table)]
