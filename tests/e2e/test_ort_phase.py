"""The ONNX Runtime phase says what it does per network, and an export family that ran past its time limit is not
tried again for its other cells (each would burn the limit again: TedNet's CP on Linear layers took 111 s each)."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.cli.main import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_an_export_past_its_limit_is_not_tried_again_for_its_family(tmp_path, cache_dir, capsys, monkeypatch):
    from harness.run import export

    real, tried = export.export_network, []

    def slow_for_decomposed(model, example, fmt, path, *args, **kwargs):
        if fmt == "onnx" and not path.name.startswith("dense-"):
            tried.append(path.name)
            raise export.ExportTimedOut("onnx export of the network did not finish in 60 s")
        return real(model, example, fmt, path, *args, **kwargs)

    monkeypatch.setattr(export, "export_network", slow_for_decomposed)
    out = tmp_path / "run"
    assert main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
                 "--ratios", "2,4,8", "--no-train", "--datasets", "random:1x28x28", "--latency-passes", "1",
                 "--executor", "inprocess", "--save-models", "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert len(tried) == 1  # the first of the three; the other two are skipped with the reason
    cells = pd.read_csv(out / "cells.csv").set_index("ratio")
    assert "did not finish in 60 s" in cells.loc[2.0, "ort_error"]
    for ratio in (4.0, 8.0):
        assert cells.loc[ratio, "ort_error"].startswith("skipped: the onnx export of fake/lenet5/random:1x28x28/"
                                                        "lowrank/linear/x2/s0, of the same backend, method")
        assert str(cells.loc[ratio, "export_format"]) == str(cells.loc[2.0, "export_format"])  # as the first
    assert "[1/3] ONNX Runtime latency of fake/lenet5/random:1x28x28/lowrank/linear/x2/s0 not measured" in printed
