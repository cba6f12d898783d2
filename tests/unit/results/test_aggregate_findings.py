"""Seed aggregation and findings on a planted run: the right backend, the right numbers, missing data said so.

The planted run (no training) has backends a, b, c × methods cp, tt × targets conv, linear
× ratios 2, 4 × seeds 0, 1, 2. Backend b is the most accurate and steadiest, c the
fastest and the quickest to decompose; b alone also runs target "all"; backend a also
trains cp/linear from scratch; the dense control has flat, tight curves; c's layers fill
less than 90 % of the budget.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from harness.results.aggregate import format_summary, mean_std, seed_summary
from harness.results.findings import all_findings, control_stability, regime, target_payoff
from harness.results.store import KEY_COLUMNS, RunResults

BASELINE = 98.0
ACC_LOSS = {"a": 2.0, "b": 0.5, "c": 3.0}
TARGET_LOSS = {"conv": 0.0, "linear": 1.0, "all": 1.5}
SPEED = {"a": 0.8, "b": 0.6, "c": 1.5}
TARGET_SPEED = {"conv": 1.0, "linear": 0.9, "all": 0.7}
STEADINESS = {"a": 0.3, "b": 0.1, "c": 0.5}
DECOMPOSE_S = {"a": 0.1, "b": 1.0, "c": 0.01}
SEEDS = (0, 1, 2)
EPOCHS = 3


def _cell(backend: str, method: str, target: str, ratio: float, seed: int, init: str = "decompose") -> dict:
    final = BASELINE - ACC_LOSS[backend] - TARGET_LOSS[target] - 0.25 * ratio + 0.1 * seed
    if init == "scratch":
        final = 90.0 + 0.1 * seed
    speedup = SPEED[backend] * TARGET_SPEED[target] + 0.01 * seed
    compression = ratio * (1.25 if backend == "c" else 1.05)  # c misses the budget fill (a deviation)
    params = 1000 / compression
    return {
        "backend": backend, "method": method, "model": "m", "dataset": "d", "target": target, "ratio": ratio,
        "seed": seed, "init": init, "rank_selection": "ratio", "tensorize": "", "status": "ok", "error": None,
        "params_dense": 1000.0, "params": params, "compression": compression, "budget": 1000 / ratio,
        "budget_ok": True, "model_params_dense": 10000.0,
        "model_params": 10000.0 - (1000 - params) * (0.3 if target == "conv" else 1.0),
        "flops_dense": 2e6, "flops": 1e6, "flop_speedup": 2.0, "latency_dense_ms": 1.0,
        "latency_ms": 1.0 / speedup, "speedup": speedup, "latency_batch": 64, "threads": 1, "device": "cpu",
        "decompose_s": DECOMPOSE_S[backend] * ratio, "acc_baseline": BASELINE,
        "acc_decomposed": 10.0 if init == "scratch" else final - 5.0, "acc_final": final,
        "acc_best": final + STEADINESS[backend], "recon_error": 0.1, "acc_drop": 5.0,
        "recovery_epoch": 1.0 if backend == "b" else math.nan, "overfit_drop": STEADINESS[backend],
        "last_k_std": STEADINESS[backend], "epoch_s": 0.1, "cell_s": 1.0,
        "cell_id": f"{backend}/m/d/{method}/{target}/x{ratio:g}/s{seed}" + ("/scratch" if init == "scratch" else ""),
    }


def _control(seed: int) -> dict:
    row = _cell("a", "cp", "conv", 1.0, seed)
    row.update(backend="dense", method="dense", target="none", init="control", ratio=1.0, compression=1.0,
               params=1000.0, model_params=10000.0, speedup=1.0, flop_speedup=1.0, latency_ms=1.0,
               decompose_s=0.0, acc_decomposed=BASELINE, acc_final=98.2 + 0.02 * seed, acc_best=98.25,
               acc_drop=0.0, recovery_epoch=0.0, overfit_drop=0.02, last_k_std=0.05,
               cell_id=f"dense/m/d/dense/none/x1/s{seed}")
    return row


def _curve(row: dict) -> list[float]:
    if row["init"] == "control":
        return [97.9 + 0.02 * row["seed"], 98.1 + 0.02 * row["seed"], row["acc_final"]]
    return [row["acc_final"] - 1.0, row["acc_final"] - 0.4, row["acc_final"]]


def planted_results(run_dir: Path | str = ".", seeds: tuple[int, ...] = SEEDS, control: bool = True,
                    scratch: bool = True, targets: tuple[str, ...] = ("conv", "linear")) -> RunResults:
    rows = [_cell(b, m, t, r, s) for b in ACC_LOSS for m in ("cp", "tt") for t in targets
            for r in (2.0, 4.0) for s in seeds]
    if "linear" in targets:
        rows += [_cell("b", "cp", "all", r, s) for r in (2.0, 4.0) for s in seeds]
    if scratch:
        rows += [_cell("a", "cp", "linear", r, s, init="scratch") for r in (2.0, 4.0) for s in seeds]
    if control:
        rows += [_control(s) for s in seeds]
    failed = _cell("c", "cp", "linear", 8.0, 0)
    failed.update({k: math.nan for k in failed if k.startswith(("acc_", "speedup", "latency"))},
                  status="error", error="<script>alert('x')</script> boom")
    unsupported = _cell("a", "tt", "conv", 8.0, 0)
    unsupported.update(status="unsupported", error="tt & conv: not offered", acc_final=math.nan)
    cells = pd.DataFrame(rows + [failed, unsupported])
    epochs = pd.DataFrame([
        {"cell_id": row["cell_id"], "epoch": epoch, "train_loss": 0.1, "test_loss": 0.2, "test_acc": accuracy,
         "epoch_s": 0.1, **{k: row[k] for k in KEY_COLUMNS}}
        for row in rows for epoch, accuracy in enumerate(_curve(row), start=1)])
    layers = pd.DataFrame([
        {"cell_id": row["cell_id"], "layer": "fc1", "kind": "linear", "params_dense": 1000, "params": 500,
         "max_params": 500, "recon_error": 0.1, "decompose_s": row["decompose_s"], "info": '{"rank": 3}',
         "stdout": None, **{k: row[k] for k in KEY_COLUMNS}} for row in rows])
    meta = {"command": "harness run --backends a,b,c --out run & echo", "started_at": "2026-01-01T00:00:00",
            "harness_version": "0.1.0", "git_commit": "abc123", "python": "3.11.7", "platform": "Linux",
            "torch": "2.9.0", "libraries": {"a": {"library": "liba", "version": "1.2"},
                                            "b": {"library": "libb", "version": "3.4"},
                                            "c": {"library": "libc", "version": "5.6"}},
            "device": "cpu", "device_name": "Test CPU", "threads": 1, "cpu_count": 2, "seeds": list(seeds),
            "flop_convention": "FlopCounterMode, a multiply-add is 2 FLOPs", "config": {}}
    return RunResults(Path(run_dir), meta, cells, epochs, layers)


def _by_key(results: RunResults) -> dict:
    return {f.key: f for f in all_findings(results)}


def test_seed_summary_gives_mean_sample_std_and_count():
    cells = planted_results().cells
    summary = seed_summary(cells, ["acc_final"], ["backend", "method", "target", "ratio"])
    row = summary[(summary["backend"] == "b") & (summary["method"] == "cp") & (summary["target"] == "conv")
                  & (summary["ratio"] == 2.0)].iloc[0]
    assert row["acc_final_mean"] == pytest.approx(97.1)
    assert row["acc_final_std"] == pytest.approx(0.1)  # ddof=1 over 97.0, 97.1, 97.2
    assert row["n"] == 3
    assert "error" not in set(summary["backend"])  # only ok cells count
    one = seed_summary(planted_results(seeds=(0,)).cells, ["acc_final"], [k for k in KEY_COLUMNS if k != "seed"])
    assert one["acc_final_std"].isna().all()


def test_mean_std_formats_with_and_without_spread():
    assert mean_std(97.1, 0.2134, 3) == "97.10 ± 0.21 (n=3)"
    assert mean_std(97.1, math.nan, 1) == "97.10 (n=1)"
    assert mean_std(97.1, 0.2, None, digits=1) == "97.1 ± 0.2"
    assert mean_std(math.nan, 0.2, 3) == "–"
    summary = seed_summary(planted_results().cells, ["acc_final"], ["backend"])
    text = format_summary(summary, ["backend"], {"acc_final": "acc"})
    assert text.columns.tolist() == ["backend", "acc", "seeds"] and "±" in text["acc"].iloc[0]


def test_best_backends_name_the_planted_winners_with_numbers():
    found = _by_key(planted_results())
    accuracy = found["best_accuracy"]
    assert accuracy.numbers["wins"] == {"b": 8}  # 2 methods × 2 targets × 2 ratios with ≥ 2 backends
    winner = accuracy.numbers["winners"]["m/d/conv/decompose/cp/x2"]
    assert winner["backend"] == "b" and winner["mean"] == pytest.approx(97.1)
    assert winner["std"] == pytest.approx(0.1) and winner["n"] == 3
    assert "b 8" in accuracy.text and "± 0.10" in accuracy.text and "(n=3)" in accuracy.text
    assert found["best_speedup"].numbers["wins"] == {"c": 8}
    assert found["best_stability"].numbers["wins"] == {"b": 8}
    assert found["backend_wins"].numbers["wins"] == {"b": 16, "c": 8}
    assert "b won 16" in found["backend_wins"].text


def test_conv_vs_linear_finding_says_which_target_paid_off():
    finding = target_payoff(planted_results().cells)[0]
    assert finding.numbers["least_accuracy_loss"] == "conv"
    # The planted mean speedups are all below 1x (conv 0.97): nothing "gained speed", and the text says so.
    assert finding.numbers["most_speedup"] is None
    assert "no target gained speed" in finding.text and "conv lost least" in finding.text
    assert "gained most speed" not in finding.text
    assert set(finding.numbers["delta"]) == {"conv", "linear", "all"}
    # conv at ×2 and ×4 over a, b, c and both methods: −(mean loss 11/6) − 0.25·3 + 0.1
    assert finding.numbers["delta"]["conv"] == pytest.approx(-(11 / 6) - 0.75 + 0.1)
    assert finding.numbers["delta"]["all"] == pytest.approx(-2.0 - 0.75 + 0.1)
    assert "conv lost least accuracy" in finding.text and "×2, ×4" in finding.text


def test_conv_vs_linear_in_a_data_free_run_compares_speed_alone():
    cells = planted_results().cells.copy()
    cells[["acc_final", "acc_baseline"]] = float("nan")  # no accuracy: it had raised on idxmax of all-NA deltas
    finding = target_payoff(cells)[0]
    assert finding.numbers["least_accuracy_loss"] is None and "lost least accuracy" not in finding.text
    assert "no target gained speed" in finding.text


def test_regime_finding_compares_only_matching_configurations():
    finding = regime(planted_results().cells)[0]
    assert finding.numbers["scratch"]["pairs"] == 2  # cp/linear at ×2 and ×4
    assert finding.numbers["scratch"]["decompose_wins"] == 2
    assert finding.numbers["scratch"]["better"] == "decompose"
    assert "decompose beat scratch in 2 of 2" in finding.text
    single = regime(planted_results(scratch=False).cells)[0]
    assert "Only the decompose regime" in single.text and single.table is None


def test_control_stability_compares_decomposed_nets_with_dense_control():
    results = planted_results()
    finding = control_stability(results.cells, results.epochs)[0]
    control = finding.numbers["control"]
    assert control["cells"] == 3
    assert control["last_k_std"] == pytest.approx(0.05)
    assert control["spread"] == pytest.approx(0.02)  # test accuracy 0.02 apart per seed at every epoch
    assert finding.numbers["decomposed"]["spread"] > control["spread"]
    assert finding.numbers["steadier_measures"] == []
    assert len(finding.numbers["compared_measures"]) == 3
    assert "not more stable" in finding.text and "0.05" in finding.text
    assert "dense control" in finding.table["networks"].tolist()


def test_speed_time_and_recovery_findings():
    found = _by_key(planted_results())
    speed = found["speedup_vs_flops"]
    # c runs faster than dense in every ok cell (conv, linear; 2 methods × 2 ratios × 3 seeds), nobody else does
    assert speed.numbers["faster"] == 24
    assert max(speed.numbers["share_by_backend"], key=speed.numbers["share_by_backend"].get) == "c"
    assert found["decomposition_time"].numbers["fastest"]["cp"]["backend"] == "c"
    recovery = found["recovery"]
    assert recovery.numbers["share_by_backend"]["b"] == 1.0 and recovery.numbers["share_by_backend"]["a"] == 0.0
    assert recovery.numbers["median_epoch"] == 1.0


def test_missing_data_is_said_not_guessed():
    thin = planted_results(seeds=(0,), control=False, scratch=False, targets=("conv",))
    found = _by_key(thin)
    assert "no ok dense control rows" in found["control_stability"].text
    assert "Only the decompose regime" in found["regime"].text
    assert "Only target(s) conv" in found["target_payoff"].text
    assert "(n=1)" in found["best_accuracy"].text and "±" not in found["best_accuracy"].text
    nothing = planted_results()
    nothing.cells["status"] = "error"
    texts = {f.key: f.text for f in all_findings(nothing)}
    assert not any(key.startswith("failed") for key in texts)
    assert "no winner" in texts["best_accuracy"] and "No ok decomposed" in texts["recovery"]


def test_stability_ties_at_the_shown_precision_name_no_winner():
    cells = planted_results().cells
    decomposed = cells["init"] != "control"
    # Differences far below the 3 decimals shown (a 30-epoch cosine schedule ends this flat): noise, not a winner.
    cells.loc[decomposed, "last_k_std"] = 0.0101 + 1e-5 * cells.loc[decomposed, "backend"].map(
        {"a": 1, "b": 2, "c": 3}).fillna(0)
    cells.loc[decomposed, "overfit_drop"] = 0.0204
    found = {f.key: f for f in all_findings(planted_results())}  # the planted run still has winners
    assert found["best_stability"].numbers["ties"] == 0
    stability = {f.key: f for f in all_findings(RunResults(Path("."), {}, cells, planted_results().epochs,
                                                           pd.DataFrame()))}["best_stability"]
    assert stability.numbers["wins"] == {} and stability.numbers["ties"] == stability.numbers["comparisons"] == 8
    assert "8 of 8 comparisons are a tie" in stability.text and "no winner" in stability.text
    assert "0.010" in stability.table.iloc[0]["last-3 std pp"]
    assert stability.table["winner"].str.startswith("tie: a, b, c").all()
    assert all(w["backend"] == "tie" and w["tied"] == ["a", "b", "c"] for w in stability.numbers["winners"].values())


def test_control_stability_ties_and_shows_three_decimals():
    results = planted_results(seeds=(0,))
    cells = results.cells
    control = cells["init"] == "control"
    cells.loc[~control, ["last_k_std", "overfit_drop"]] = 0.0104
    cells.loc[control, ["last_k_std", "overfit_drop"]] = 0.0096
    finding = control_stability(cells, results.epochs)[0]
    assert finding.numbers["tied_measures"] == ["last_k_std", "overfit_drop"]
    assert finding.numbers["steadier_measures"] == []
    assert "A tie" in finding.text and "as stable as" in finding.text and "0.010" in finding.text
    assert "0.00 " not in finding.text
    assert set(finding.table["last-3-epoch std pp"]) == {"0.010"}
