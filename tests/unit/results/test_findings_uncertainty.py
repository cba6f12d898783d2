"""Findings a skeptic accepts: a winner only beyond the spread, noise flagged, words that follow the numbers.

Each test plants cells with known accuracies, latencies and spreads (no training) and checks what the findings
say about them: a lead inside the seed std, the latency IQR or the single-seed threshold is a tie; a speedup
above its FLOP bound and a dense latency that moved are measurement problems, never ranked; a cell at chance is
a failure, kept out of the regime comparison; "gained speed" and shares of the bound only where the numbers
allow; siblings of one library are not presented as rivals.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.results.findings import (
    SINGLE_SEED_TIE_PP,
    all_findings,
    best_backends,
    measurement_problems,
    regime,
    speedup_vs_flops,
    target_payoff,
)
from harness.results.store import RunResults


def cell(backend: str, acc: float, speedup: float = 1.5, seed: int = 0, *, target: str = "conv",
         method: str = "cp", init: str = "decompose", iqr: float = 0.01, bound: float = 2.0,
         dense_ms: float = 10.0, ratio: float = 4.0) -> dict:
    return {"backend": backend, "method": method, "model": "m", "dataset": "d", "target": target, "ratio": ratio,
            "seed": seed, "init": init, "rank_selection": "ratio", "tensorize": "", "status": "ok", "error": None,
            "params_dense": 1000.0, "params": 250.0, "compression": 4.0, "budget": 250.0, "budget_ok": True,
            "flop_speedup": bound, "speedup": speedup, "speedup_iqr": iqr, "latency_dense_ms": dense_ms,
            "latency_ms": dense_ms / speedup, "latency_batch": 1, "device": "cpu", "decompose_s": 0.1,
            "acc_baseline": 98.0, "acc_final": acc, "acc_decomposed": acc - 1, "chance_acc": 10.0,
            "last_k_std": 0.1, "overfit_drop": 0.1, "recovery_epoch": 1.0,
            "cell_id": f"{backend}/m/d/{method}/{target}/x{ratio:g}/s{seed}/{init}"}


def results(rows: list[dict], libraries: dict[str, str] | None = None, modules: dict[str, str] | None = None
            ) -> RunResults:
    meta = {"libraries": {b: {"library": lib, "version": "1", "modules": (modules or {}).get(b, "")}
                          for b, lib in (libraries or {}).items()}}
    return RunResults(Path("."), meta, pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())


def winners(finding) -> dict:
    return {key: entry["backend"] for key, entry in finding.numbers["winners"].items()}


def test_one_seed_accuracy_leads_below_the_threshold_are_ties_and_ask_for_seeds():
    close = [cell("a", 97.0), cell("b", 97.0 + SINGLE_SEED_TIE_PP * 0.6)]
    accuracy = best_backends(pd.DataFrame(close))[0]
    assert list(winners(accuracy).values()) == ["tie"] and accuracy.numbers["wins"] == {}
    assert "run more seeds" in accuracy.text and f"{SINGLE_SEED_TIE_PP:g} pp" in accuracy.text
    apart = [cell("a", 97.0), cell("b", 97.0 + SINGLE_SEED_TIE_PP * 2)]
    assert list(winners(best_backends(pd.DataFrame(apart))[0]).values()) == ["b"]


def test_with_seeds_a_lead_inside_the_seed_std_is_a_tie():
    within = [cell("a", 97.0 + d, seed=s) for s, d in enumerate((-0.6, 0.0, 0.6))]
    within += [cell("b", 97.3 + d, seed=s) for s, d in enumerate((-0.5, 0.0, 0.5))]
    assert list(winners(best_backends(pd.DataFrame(within))[0]).values()) == ["tie"]
    beyond = [cell("a", 95.0 + d, seed=s) for s, d in enumerate((-0.1, 0.0, 0.1))]
    beyond += [cell("b", 97.3 + d, seed=s) for s, d in enumerate((-0.1, 0.0, 0.1))]
    finding = best_backends(pd.DataFrame(beyond))[0]
    assert list(winners(finding).values()) == ["b"] and "± 0.10" in finding.text


def test_a_speedup_lead_inside_the_latency_iqr_is_a_tie():
    rows = [cell("a", 97, speedup=1.50, iqr=0.30), cell("b", 97, speedup=1.35, iqr=0.20)]
    speed = best_backends(pd.DataFrame(rows))[1]
    assert list(winners(speed).values()) == ["tie"] and "IQR" in speed.text
    rows = [cell("a", 97, speedup=1.80, iqr=0.05), cell("b", 97, speedup=1.35, iqr=0.05)]
    assert list(winners(best_backends(pd.DataFrame(rows))[1]).values()) == ["a"]


def test_a_speedup_above_its_flop_bound_is_flagged_and_never_ranked():
    rows = [cell("a", 97, speedup=8.31, bound=1.98), cell("b", 97, speedup=1.50, bound=1.98),
            cell("c", 97, speedup=1.20, bound=1.98)]
    speed = best_backends(pd.DataFrame(rows))[1]
    assert list(winners(speed).values()) == ["b"]  # a's 8.31x is not a result
    problems = measurement_problems(pd.DataFrame(rows))[0]
    assert problems.numbers["above_bound"] == [rows[0]["cell_id"]] and "FLOP bound" in problems.text
    shares = speedup_vs_flops(pd.DataFrame(rows))[0]
    assert shares.numbers["above_bound"] == 1 and shares.numbers["cells"] == 2


def test_a_dense_latency_that_moved_within_the_run_is_flagged():
    rows = [cell("a", 97, dense_ms=1.19), cell("b", 97, dense_ms=179.9), cell("c", 97, dense_ms=8.9)]
    problems = measurement_problems(pd.DataFrame(rows))[0]
    assert "dense latency of m/d/1/cpu ranged 1.19–180 ms" in problems.text
    quiet = [cell("a", 97, dense_ms=10.0), cell("b", 97, dense_ms=10.5)]
    assert measurement_problems(pd.DataFrame(quiet))[0].text.startswith("None found")


def test_a_cell_at_chance_is_a_failure_not_a_regime():
    rows = [cell("t", 97.0, method="cp", target="linear"),
            cell("d", 10.4, method="cp", target="linear", init="scratch"),
            cell("t", 96.0, method="tt", target="linear"), cell("d", 95.0, method="tt", target="linear",
                                                                   init="scratch")]
    found = regime(pd.DataFrame(rows))[0]
    assert found.numbers["scratch"]["pairs"] == 1  # only tt: cp's scratch cell learned nothing
    assert "chance" in found.text
    problems = measurement_problems(pd.DataFrame(rows))[0]
    assert problems.numbers["at_chance"] == [rows[1]["cell_id"]]


def test_wording_follows_the_numbers():
    slow = [cell("a", 97, speedup=0.85, target="conv"), cell("a", 97, speedup=0.70, target="linear")]
    payoff = target_payoff(pd.DataFrame(slow))[0]
    assert "no target gained speed" in payoff.text and "gained most speed" not in payoff.text
    fast = [cell("a", 97, speedup=1.3, target="conv"), cell("a", 97, speedup=0.7, target="linear")]
    assert "conv gained most speed" in target_payoff(pd.DataFrame(fast))[0].text
    least_slow = [cell("a", 97, speedup=0.80), cell("b", 97, speedup=0.60)]
    assert "means least slow" in best_backends(pd.DataFrame(least_slow))[1].text
    assert "least slow" not in best_backends(pd.DataFrame(fast))[1].text
    # A bound below 1x has no share: 0.47x against a 0.45x bound is not "104 % of its bound".
    below = [cell("rec", 97, speedup=0.47, bound=0.45), cell("n", 97, speedup=1.5, bound=2.0)]
    shares = speedup_vs_flops(pd.DataFrame(below))[0]
    assert shares.numbers["share_by_backend"] == {"n": 0.75, "rec": None}
    assert "rec: no cell with fewer FLOPs than dense" in shares.text and "104" not in shares.text


def test_siblings_of_one_library_are_not_presented_as_rivals():
    rows = [cell("tltorch", 97.0), cell("tltorch-rec", 92.0), cell("native", 96.0, method="tt")]
    found = {f.key: f for f in all_findings(results(rows, {"tltorch": "tensorly-torch",
                                                           "tltorch-rec": "tensorly-torch", "native": "torch"}))}
    text = found["best_accuracy"].text
    assert "Widest lead: tltorch" in text and "tltorch and tltorch-rec are both tensorly-torch" in text and "forward path" in text


def test_backends_built_from_the_same_modules_are_not_speed_rivals():
    rows = [cell("native", 97.0, speedup=1.80, iqr=0.01), cell("tensorly", 97.0, speedup=1.20, iqr=0.01)]
    found = {f.key: f for f in all_findings(results(rows, {"native": "torch", "tensorly": "tensorly"},
                                                    {"native": "harness.tensor.structures", "tensorly": "harness.tensor.structures"}))}
    text = found["best_speedup"].text
    assert "build their networks from the same modules (harness.tensor.structures)" in text and "noise" in text


def test_one_seed_steadiness_leads_below_the_threshold_are_ties():
    rows = [dict(cell("a", 97.0), last_k_std=0.15), dict(cell("b", 97.0), last_k_std=0.10)]
    assert list(winners(best_backends(pd.DataFrame(rows))[2]).values()) == ["tie"]
    rows = [dict(cell("a", 97.0), last_k_std=0.40), dict(cell("b", 97.0), last_k_std=0.10)]
    assert list(winners(best_backends(pd.DataFrame(rows))[2]).values()) == ["b"]
