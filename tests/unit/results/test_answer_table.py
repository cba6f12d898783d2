"""The answer table on planted cells: slower rows flagged, whole-model size shown, ties broken by speed then size,
exports offered only in a format the cell is known to export to, and the sentence when nothing beats dense."""

from __future__ import annotations

import pandas as pd

from harness.results.findings import best_networks, faster_than_dense_sentence, verdict_lines


def _cell(backend: str, method: str, *, acc: float, speedup: float, compression: float = 4.1,
          model_params: int = 20_000, ratio: float = 4.0, target: str = "conv", **extra) -> dict:
    return {"cell_id": f"{backend}/lenet5/mnist/{method}/{target}/x{ratio:g}/s0", "status": "ok", "budget_ok": True,
            "backend": backend, "model": "lenet5", "dataset": "mnist", "method": method, "target": target,
            "init": "decompose", "ratio": ratio, "rank_selection": "ratio", "tensorize": "", "seed": 0,
            "acc_final": acc, "acc_baseline": 97.0, "compression": compression, "speedup": speedup,
            "flop_speedup": 10.0, "model_params_dense": 60_000, "model_params": model_params,
            "model_file": f"models/{backend}-{method}.pt", **extra}


def _answer(*cells: dict) -> pd.DataFrame:
    return best_networks(pd.DataFrame(list(cells)))


def _row(answer: pd.DataFrame, constraint: str) -> pd.Series:
    """The row answering ``constraint`` (a row may answer several, joined by "; ")."""
    return answer[answer["constraint"].map(lambda text: any(part.startswith(constraint)
                                                            for part in text.split("; ")))].iloc[0]


def test_a_row_slower_than_dense_says_so_and_every_row_shows_the_whole_model():
    answer = _answer(_cell("tednet", "btt", acc=96.9, speedup=0.02, target="linear"),
                     _cell("native", "tucker2", acc=96.5, speedup=1.3, model_params=30_000))
    most = _row(answer, "most accurate at ≥ ×4 compression of the decomposed layers")
    assert most["backend"] == "tednet" and most["speedup ×"] == "0.02× (slower than dense)"
    assert all(answer["compression × (whole model)"] != "–") and "params (whole model)" in answer.columns
    assert most["compression × (whole model)"] == "3.00×"
    for _, row in answer.iterrows():  # a speedup below 1 never appears without its flag
        value = float(row["speedup ×"].split("×")[0])
        assert value >= 1 or "slower than dense" in row["speedup ×"]


def test_accuracy_ties_go_to_the_faster_then_the_smaller_network():
    answer = _answer(_cell("slow", "svd", acc=96.5, speedup=0.9),
                     _cell("fast", "svd", acc=96.5, speedup=1.4),
                     _cell("fast-big", "svd", acc=96.5, speedup=1.4, model_params=50_000))
    assert _row(answer, "most accurate at ≥ ×4")["backend"] == "fast"


def test_a_configuration_answering_several_constraints_is_one_row():
    answer = _answer(_cell("a", "svd", acc=96.8, speedup=1.5))
    assert len(answer) == 1 and answer["constraint"].iloc[0].count("; ") == 2


def test_fastest_and_smallest_not_slower_rows_within_a_point_of_dense():
    answer = _answer(_cell("a", "svd", acc=96.8, speedup=1.1, model_params=40_000),
                     _cell("b", "svd", acc=96.5, speedup=1.6, model_params=30_000),
                     _cell("c", "svd", acc=96.6, speedup=0.8, model_params=10_000),  # smallest, but slower
                     _cell("d", "svd", acc=90.0, speedup=3.0, model_params=5_000))  # fast and small, 7 points off
    assert _row(answer, "fastest within 1 point")["backend"] == "b"
    assert _row(answer, "smallest whole network within 1 point of dense accuracy and not slower")["backend"] == "b"


def test_exports_are_offered_only_in_a_format_the_run_found_to_work():
    from harness_html import with_export_commands

    onnx_failed = "onnx cannot express layer 2"
    answer = _answer(_cell("tltorch", "btt", acc=96.9, speedup=1.2, ort_error=onnx_failed,
                           export_format="torchscript"),
                     _cell("native", "svd", acc=96.0, speedup=1.5, onnx_file="models/native-svd.onnx",
                           ort_speedup=1.4),
                     _cell("tednet", "cp", acc=95.0, speedup=0.5, ratio=8.0, compression=8.2, ort_error=onnx_failed))
    commands = with_export_commands(answer, "RUN").assign(constraint=answer["constraint"])
    assert _row(commands, "most accurate at ≥ ×4")["take it home"].endswith("--format torchscript")
    assert _row(commands, "fastest within 1 point")["take it home"].endswith("--format onnx")
    assert _row(commands, "most accurate at ≥ ×8")["take it home"].startswith("no export format is known to work")
    # A run that tried no export (no onnxruntime) offers pt and says it was not checked.
    untried = with_export_commands(_answer(_cell("native", "svd", acc=96.0, speedup=1.5)), "RUN")
    assert untried["take it home"].iloc[0].endswith("--format pt (not checked: this run tried no export)")


def test_when_nothing_beats_dense_one_sentence_says_so():
    slow = pd.DataFrame([_cell("a", "svd", acc=96.8, speedup=0.7), _cell("b", "cp", acc=96.0, speedup=0.95)])
    sentence = faster_than_dense_sentence(slow)
    assert sentence.startswith("No decomposed network ran faster than dense on this machine") and "0.95×" in sentence
    assert sentence in verdict_lines(slow)
    assert faster_than_dense_sentence(pd.DataFrame([_cell("a", "svd", acc=96.8, speedup=1.1)])) == ""


def test_a_data_free_run_answers_by_speed_and_size():
    answer = _answer(_cell("a", "svd", acc=None, speedup=1.2, model_params=30_000),
                     _cell("b", "tucker2", acc=None, speedup=1.8, model_params=40_000))
    assert _row(answer, "fastest at ≥ ×4")["backend"] == "b"
    assert _row(answer, "smallest whole network and not slower")["backend"] == "a"
    assert all(", accuracy" not in line for line in verdict_lines(pd.DataFrame(
        [_cell("a", "svd", acc=None, speedup=1.2)])))


def test_the_prediction_finding_says_how_far_the_tables_were_off():
    from harness.results.findings import latency_prediction

    cells = pd.DataFrame([_cell("a", "svd", acc=96.8, speedup=1.9, predicted_speedup=2.0),
                          _cell("b", "svd", acc=96.8, speedup=1.2, predicted_speedup=2.0)])
    found, = latency_prediction(cells)
    assert found.numbers["networks"] == 2 and found.numbers["off"] == 1
    assert "1 were more than 15% off" in found.text and "-40%" in found.text
    assert latency_prediction(pd.DataFrame([_cell("a", "svd", acc=96.8, speedup=1.9)])) == []


def test_a_run_whose_latency_was_never_measured_has_no_speed_sentence():
    cells = pd.DataFrame([_cell("a", "svd", acc=96.8, speedup=0.9)]).drop(columns=["speedup"])
    assert faster_than_dense_sentence(cells) == ""
    assert len(verdict_lines(cells)) == 1
