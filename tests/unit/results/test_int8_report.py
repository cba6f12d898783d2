"""The report side of ``--quantize int8`` on planted cells: the answer table's "after INT8" column, the summary's INT8
columns, the finding that says whether decomposition still pays off once both networks are INT8, and its plot.

Backend ``a`` (svd) stays faster than dense in INT8 and loses little accuracy to it; ``b`` (cp) is faster in FP32 ORT
but slower once both are INT8, and INT8 costs it more accuracy than it costs dense; ``c`` (tt) could not be
quantized. Every number below follows from those plants.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from harness.results import plots
from harness.results.findings import all_findings, best_networks, int8_payoff
from harness.results.store import RunResults
from harness.results.tables import summary_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EINSUM = "static and dynamic quantization failed: Einsum has no INT8 kernel"
INT8_COLUMNS = ("int8_", "ort_acc", "ort_dense_acc")


def _cell(backend: str, method: str, seed: int, *, acc: float, int8_acc: float, ort: float, int8: float,
          int8_iqr: float = 0.03, **extra) -> dict:
    return {"cell_id": f"{backend}/lenet5/mnist/{method}/conv/x4/s{seed}", "status": "ok", "error": None,
            "budget_ok": True, "backend": backend, "model": "lenet5", "dataset": "mnist", "method": method,
            "target": "conv", "init": "decompose", "ratio": 4.0, "rank_selection": "ratio", "tensorize": "",
            "seed": seed, "acc_final": acc, "acc_baseline": 98.0, "params_dense": 1000.0, "params": 244.0,
            "budget": 250.0, "compression": 4.1, "speedup": 1.3, "flop_speedup": 3.0,
            "model_params_dense": 60_000, "model_params": 20_000, "model_file": f"models/{backend}-s{seed}.pt",
            "ort_acc": acc, "ort_dense_acc": 98.0, "ort_latency_ms": 3.4 / ort, "ort_latency_dense_ms": 3.4,
            "ort_speedup": ort, "ort_speedup_iqr": 0.02,
            "int8_acc": int8_acc, "int8_dense_acc": 97.9, "int8_latency_ms": 1.6 / int8,
            "int8_dense_latency_ms": 1.6, "int8_speedup": int8, "int8_speedup_iqr": int8_iqr,
            "int8_vs_fp32_speedup": (3.4 / ort) / (1.6 / int8), "int8_mode": "static",
            "int8_file": f"models/{backend}-s{seed}.int8.onnx", **extra}


def planted(seeds: tuple[int, ...] = (0, 1, 2)) -> pd.DataFrame:
    rows = [_cell("a", "svd", s, acc=97.7 + 0.1 * s, int8_acc=97.4 + 0.1 * s, ort=1.7, int8=1.6 + 0.05 * s)
            for s in seeds]
    # b: 0.5 pp below dense in FP32, 1.5-1.9 pp below the INT8 dense; 1.4x in FP32 ORT, 0.9x once INT8.
    rows += [_cell("b", "cp", s, acc=97.5, int8_acc=96.0 + 0.2 * s, ort=1.4, int8=0.9) for s in seeds]
    rows.append(_cell("c", "tt", 0, acc=97.0, int8_acc=math.nan, ort=1.2, int8=math.nan,
                      int8_error=EINSUM + "\nTraceback ...", int8_mode=None, int8_file=None))
    return pd.DataFrame(rows)


def without_int8(cells: pd.DataFrame) -> pd.DataFrame:
    return cells.drop(columns=[c for c in cells.columns if c.startswith(INT8_COLUMNS)])


def data_free(cells: pd.DataFrame) -> pd.DataFrame:
    """As --no-train stores it: no final accuracy; the INT8 accuracies are on random inputs."""
    return cells.assign(acc_final=math.nan, acc_baseline=math.nan)


def _row(answer: pd.DataFrame, backend: str) -> pd.Series:
    return answer[answer["backend"] == backend].iloc[0]


def test_the_answer_table_shows_int8_accuracy_and_speedup_only_when_the_run_quantized():
    answer = best_networks(planted())
    assert _row(answer, "a")["after INT8"] == "97.50 ± 0.10 % · 1.65×"
    # b is the fastest row in FP32 (ORT 1.40x) and the table says it turns slower than dense once INT8.
    assert _row(answer, "b")["after INT8"] == "96.20 ± 0.20 % · 0.90× (slower than dense)"
    assert "after INT8" not in best_networks(without_int8(planted())).columns


def test_the_answer_table_of_a_data_free_run_shows_the_int8_speedup_alone():
    answer = best_networks(data_free(planted()))
    assert set(answer["after INT8"]) <= {"1.65×", "0.90× (slower than dense)"}
    assert "%" not in "".join(answer["after INT8"])


def test_a_row_none_of_whose_seeds_was_quantized_says_so():
    cells = planted()
    cells = cells[cells["backend"] != "a"]
    cells.loc[cells["backend"] == "c", "acc_final"] = 97.9  # c, never quantized, is now the most accurate
    assert _row(best_networks(cells), "c")["after INT8"] == "could not be quantized (see int8_error)"


def test_the_summary_table_gains_int8_columns_and_keeps_accuracy_out_of_a_data_free_run():
    table = summary_table(planted())
    a = table[table["backend"] == "a"].iloc[0]
    assert a["INT8 acc %"] == "97.50 ± 0.10" and a["INT8 speedup ×"] == "1.65 ± 0.05"
    speed_only = summary_table(data_free(planted()))
    assert "INT8 speedup ×" in speed_only.columns and "INT8 acc %" not in speed_only.columns
    assert not {"INT8 acc %", "INT8 speedup ×"} & set(summary_table(without_int8(planted())).columns)


def test_the_finding_says_where_int8_erases_the_speedup_and_costs_more_accuracy():
    finding, = int8_payoff(planted())
    numbers = finding.numbers
    assert (numbers["configurations"], numbers["faster"], numbers["slower"], numbers["erased"]) == (2, 1, 1, 1)
    assert numbers["median_int8_speedup"] == pytest.approx(1.275)
    assert numbers["median_ort_speedup"] == pytest.approx(1.55)
    assert numbers["more_loss"] == 2 and numbers["median_int8_delta"] == pytest.approx(-1.05)
    assert numbers["median_fp32_delta"] == pytest.approx(-0.35)
    assert finding.text.startswith("Once both networks are INT8 in ONNX Runtime (static INT8, calibrated QDQ), "
                                   "decomposition still pays off in latency for 1 of 2 configurations (median "
                                   "speedup 1.28× over the INT8 dense baseline, against 1.55× in FP32 ORT); 1 is "
                                   "slower than dense, INT8 erased the FP32 speedup of 1.")
    assert ("Fastest in INT8: a svd on conv ×4, 1.65 ± 0.05× (n=3), IQR 0.03, against 1.70× in FP32 ORT."
            in finding.text)
    assert "a median -1.05 pp in INT8 against -0.35 pp in FP32" in finding.text
    assert "Largest extra loss: b cp on conv ×4, 1.20 ± 0.20 pp (n=3)." in finding.text
    table = finding.table.set_index("backend")
    assert table.loc["b", "INT8"] == "slower than dense" and table.loc["a", "INT8"] == "faster than dense"
    assert table.loc["b", "extra INT8 loss pp"] == "+1.20 ± 0.20"
    assert table.loc["b", "INT8 speedup ×"] == "0.90 ± 0.00× IQR 0.03"


def test_networks_that_could_not_be_quantized_are_counted_and_named():
    finding, = int8_payoff(planted())
    assert finding.numbers["not_quantized"] == 1 and finding.numbers["first_error"] == EINSUM
    assert finding.text.endswith(f"1 network could not be quantized: {EINSUM}.")
    assert finding.table.set_index("backend").loc["c", "INT8"] == "not quantized: " + EINSUM[:120]
    # Nothing quantized at all: the finding says so rather than compare nothing.
    lost, = int8_payoff(planted()[lambda f: f["backend"] == "c"])
    assert lost.text == ("No network was quantized, so nothing compares decomposition in INT8. 1 network could not "
                         f"be quantized: {EINSUM}.")


def test_a_speedup_within_its_spread_of_dense_does_not_pay_off():
    cells = pd.DataFrame([_cell("a", "svd", s, acc=97.8, int8_acc=97.7, ort=1.3, int8=1.02, int8_iqr=0.05)
                          for s in (0, 1)])
    finding, = int8_payoff(cells)
    assert (finding.numbers["faster"], finding.numbers["within_spread"], finding.numbers["erased"]) == (0, 1, 1)
    assert "pays off in latency for 0 of 1 configurations" in finding.text
    assert "1 is within the spread of dense, INT8 erased the FP32 speedup of 1." in finding.text


def test_with_one_seed_an_extra_int8_loss_below_the_single_seed_threshold_is_noise():
    # FP32: 0.2 pp below dense; INT8: 0.5 pp (0.3 pp more, within 0.5 pp) or 1.0 pp (0.8 pp more) below.
    noise, = int8_payoff(pd.DataFrame([_cell("a", "svd", 0, acc=97.8, int8_acc=97.4, ort=1.3, int8=1.5)]))
    assert noise.numbers["more_loss"] == 0 and "(with one seed, 0.5 pp)" in noise.text
    cost, = int8_payoff(pd.DataFrame([_cell("a", "svd", 0, acc=97.8, int8_acc=96.9, ort=1.3, int8=1.5)]))
    assert cost.numbers["more_loss"] == 1 and "Largest extra loss: a svd on conv ×4, 0.80 pp (n=1)." in cost.text


def test_a_data_free_run_is_compared_in_latency_only():
    finding, = int8_payoff(data_free(planted()))
    assert finding.numbers["data_free"] and "median_int8_delta" not in finding.numbers
    assert "A data-free run: accuracies on random inputs mean nothing, so only latency is compared." in finding.text
    assert "pp" not in finding.text and "INT8 Δ vs dense pp" not in finding.table.columns
    # The run's own flag is enough, even where a final accuracy was stored.
    assert int8_payoff(planted(), data_free=True)[0].numbers["data_free"]


def test_a_run_without_int8_gets_no_finding_and_all_findings_runs_it():
    assert int8_payoff(without_int8(planted())) == []
    results = RunResults(Path("."), {"config": {"no_train": True}}, planted(), pd.DataFrame(), pd.DataFrame())
    found = {f.key: f for f in all_findings(results)}
    assert found["int8_payoff"].numbers["data_free"]
    plain = replace(results, cells=without_int8(planted()), meta={})
    assert "int8_payoff" not in {f.key for f in all_findings(plain)}


def test_the_int8_plot_is_drawn_when_the_run_quantized_and_folds_away_otherwise():
    draw, caption = plots.PLOTS["int8_accuracy_vs_latency"]
    results = RunResults(Path("."), {}, planted(), pd.DataFrame(), pd.DataFrame())
    figure = draw(results)
    assert plots.nothing_to_show(figure) is None and plots.to_png(figure).startswith(PNG_MAGIC)
    assert figure.get_suptitle().startswith("Accuracy vs ONNX Runtime latency")
    free = draw(replace(results, cells=data_free(planted()), meta={"config": {"no_train": True}}))
    assert plots.nothing_to_show(free) is None and free.get_suptitle().startswith("Whole-model compression")
    assert plots.to_png(free).startswith(PNG_MAGIC)
    assert plots.nothing_to_show(draw(replace(results, cells=without_int8(planted())))) is not None
    # A network that collapsed in INT8 is a marker at the lower edge, not a reason to fail.
    collapsed = planted().assign(int8_acc=lambda f: f["int8_acc"].where(f["backend"] != "b", 11.0))
    assert plots.to_png(draw(replace(results, cells=collapsed))).startswith(PNG_MAGIC)


def test_the_html_report_of_a_quantized_run_shows_the_column_the_finding_and_the_plot(tmp_path):
    import harness_html

    results = RunResults(tmp_path, {"command": "harness run --save-models --quantize int8"}, planted(),
                         pd.DataFrame(), pd.DataFrame())
    harness_html.harness_report(results=results, run_dir=str(tmp_path))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<th>after INT8</th>" in page and "After INT8 = the network quantized to INT8" in page
    assert 'id="finding-int8_payoff"' in page
    assert '<figure id="plot-int8_accuracy_vs_latency"><img' in page
    assert (tmp_path / "plots" / "int8_accuracy_vs_latency.png").read_bytes().startswith(PNG_MAGIC)
