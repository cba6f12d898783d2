"""Which backend wins where: the most accurate, the fastest measured, the steadiest, per configuration."""

from __future__ import annotations

import pandas as pd

from harness.measure.stability import LAST_K
from harness.results.aggregate import STABILITY_DIGITS
from harness.results.findings.common import (
    SAME_LIBRARY,
    SAME_MODULES,
    SINGLE_SEED_TIE_PP,
    STABILITY_SINGLE_SEED_PP,
    Finding,
    _best_finding,
    trusted_speedups,
)


def best_backends(cells: pd.DataFrame, libraries: dict[str, str] | None = None,
                  modules: dict[str, str] | None = None) -> list[Finding]:
    """Best backend per comparison for final accuracy, measured speedup and stability, and a win tally.

    ``libraries`` (backend -> library) tells siblings apart from rivals: two backends of one library (tltorch and
    tltorch-rec) share a factorisation and differ only in the forward path, and a lead between them says so.
    ``modules`` (backend -> the modules its networks are built from) does the same for speed: native and tensorly
    build the same modules, so a speed lead between them is noise.
    """
    found = [
        _best_finding(cells, "best_accuracy", "Most accurate backend", "highest mean final accuracy",
                      "acc_final", True, " %", "final accuracy %", single_seed_floor=SINGLE_SEED_TIE_PP,
                      siblings=(libraries, SAME_LIBRARY)),
        _best_finding(trusted_speedups(cells), "best_speedup", "Fastest backend (measured)",
                      "largest measured latency speedup", "speedup", True, "×", "speedup ×",
                      spread=("speedup_iqr", "the IQR of the repeated latency measurements"),
                      siblings=(modules, SAME_MODULES)),
        _best_finding(cells, "best_stability", "Steadiest backend",
                      f"lowest std of the last {LAST_K} epochs' accuracy (ties: smallest best−last drop)",
                      "last_k_std", False, " pp", f"last-{LAST_K} std pp",
                      tiebreak=("overfit_drop", "best−last drop pp"), digits=STABILITY_DIGITS,
                      single_seed_floor=STABILITY_SINGLE_SEED_PP, siblings=(libraries, SAME_LIBRARY)),
    ]
    speed = found[1]
    if speed.numbers and all(entry["mean"] <= 1 for entry in speed.numbers["winners"].values()):
        speed.text += " No decomposed network ran faster than dense here: \"fastest\" means least slow."
    tally = {f.key.removeprefix("best_"): f.numbers["wins"] for f in found if f.numbers}
    if tally:
        table = pd.DataFrame(tally).fillna(0).astype(int)
        table["total"] = table.sum(axis=1)
        table = table.sort_values("total", ascending=False).rename_axis("backend").reset_index()
        comparisons = sum(f.numbers["comparisons"] for f in found if f.numbers)
        text = (f"Over {comparisons} comparisons (accuracy, speed, stability): "
                + ", ".join(f"{b} won {t}" for b, t in zip(table["backend"], table["total"])) + ".")
        found.append(Finding("backend_wins", "How often each backend wins", text,
                             {"comparisons": comparisons, "wins": dict(zip(table["backend"], table["total"]))}, table))
    return found
