"""--save-models and harness export: every backend's kept network written as pt, TorchScript and ONNX, read back
without the backend's library, matching the kept network; ORT latency in the store; one line when a network
cannot be exported or a query finds nothing.

One data-free run (module scope) keeps seven networks: native CP, Tucker-2 and TT (conv) and SVD (linear),
tensorly's Tucker-2, tltorch's CP and TedNet's Tucker-2 (conv), and the ``sealed`` test backend's Linear layer,
whose forward goes through a Python list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from harness.cli.main import EXPORT_FORMATS, main
from harness.run.export import FORMATS, MATCH_TOLERANCE

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# One cell per (backend, method, target) the done-when names, out of the grid the flags below span.
SKIP = ["native/*/*/tt/linear/*", "native/*/*/svd/conv/*", "tensorly/*/*/cp/*", "tensorly/*/*/tt/*",
        "tensorly/*/*/svd/*", "tltorch/*/*/tucker2/*", "tltorch/*/*/tt/*", "tltorch/*/*/cp/linear/*",
        "tednet/*/*/cp/*", "tednet/*/*/tt/*", "tednet/*/*/tucker2/linear/*", "sealed/*/*/*/conv/*"]
EXPECTED = {("native", "cp", "conv"), ("native", "tucker2", "conv"), ("native", "tt", "conv"),
            ("native", "svd", "linear"), ("tensorly", "tucker2", "conv"), ("tltorch", "cp", "conv"),
            ("tednet", "tucker2", "conv"), ("sealed", "lowrank", "linear")}
# The libraries a deployed file must not need.
LIBRARIES = ("harness", "tensorly", "tltorch", "tednet", "sealed_backend")


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("export") / "run"
    available = {"tensorly", "tltorch", "tednet"} & {name for name in ("tensorly", "tltorch", "tednet")
                                                     if _importable(name)}
    backends = ["native", *sorted(available), "sealed"]
    code = main(["-p", "sealed_backend", "run", "--no-train", "--datasets", "random:1x28x28", "--backends", ",".join(backends),
                 "--methods", "cp,tucker2,tt,svd,lowrank", "--targets", "conv,linear", "--ratios", "4",
                 "--skip", ",".join(SKIP), "--latency-passes", "1", "--save-models", "--cache-dir", str(cache_dir), "--out", str(out)])
    assert code == 0
    yield out, pd.read_csv(out / "cells.csv")


def kept(out, cell_id):
    """A kept network as harness export rebuilds it: from the store's plan and the file's tensors."""
    from harness.run.host import load_host
    from harness.results.store import load_results, read_cell
    from harness.run.session import kept_network

    results = load_results(out)
    cell = results.cells.set_index("cell_id").loc[cell_id]
    cell = {**cell.to_dict(), "cell_id": cell_id}
    host = load_host(extra_modules=["sealed_backend"])
    return kept_network(out, results.meta, read_cell(out, cell_id), host, out / cell["model_file"])[0]


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_the_formats_named_for_help_are_the_exporters(kept_run):
    assert EXPORT_FORMATS == FORMATS


def test_save_models_keeps_each_network_and_times_it_in_onnx_runtime(kept_run):
    out, cells = kept_run
    assert {(b, m, t) for b, m, t in zip(cells["backend"], cells["method"], cells["target"])} <= EXPECTED
    assert (cells["status"] == "ok").all()
    for row in cells.itertuples():
        kept = out / row.model_file
        assert kept.is_file() and kept.stat().st_size == row.model_bytes
    exported = cells[cells["backend"] != "sealed"]
    assert exported["ort_speedup"].gt(0).all() and exported["ort_latency_ms"].gt(0).all()
    sealed = cells[cells["backend"] == "sealed"].iloc[0]
    assert "layer" in sealed["ort_error"] and "ListLowRank" in sealed["ort_error"]
    assert "ORT speedup" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    # The answer row is whichever network measured fastest (the sealed one, which ONNX cannot express, now and then):
    # its command names the format that network is known to export to.
    assert f"harness export {out}" in page and ("--format onnx" in page or "--format torchscript" in page)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_backend_exports_and_reloads_without_its_library(kept_run, tmp_path, capsys, fmt):
    out, cells = kept_run
    files = {}
    for row in cells[cells["backend"] != "sealed"].itertuples():
        target = tmp_path / f"{row.backend}-{row.method}{'.onnx' if fmt == 'onnx' else '.pt'}"
        code = main(["-p", "sealed_backend", "export", str(out), row.cell_id, "--format", fmt, "--out", str(target)])
        said = capsys.readouterr().out
        assert code == 0, said
        assert f"wrote {target}" in said and "outputs match the kept network on" in said
        files[row.cell_id] = target
    # Read back in a fresh interpreter that imports neither harness nor any backend library.
    sample = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    torch.save(sample, tmp_path / "sample.pt")
    script = f"""
import json, sys, torch
sample = torch.load({str(tmp_path / 'sample.pt')!r})
files = json.loads({json.dumps({k: str(v) for k, v in files.items()})!r})
outputs = {{}}
for cell_id, path in files.items():
    if {fmt!r} == "pt":
        module = torch.export.load(path).module()
        outputs[cell_id] = module(sample).tolist()
    elif {fmt!r} == "torchscript":
        outputs[cell_id] = torch.jit.load(path)(sample).tolist()
    else:
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        outputs[cell_id] = session.run(None, {{session.get_inputs()[0].name: sample.numpy()}})[0].tolist()
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {LIBRARIES!r})
print(json.dumps({{"outputs": outputs, "loaded": loaded}}))
"""
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    for row in cells[cells["backend"] != "sealed"].itertuples():
        with torch.inference_mode():
            expected = kept(out, row.cell_id)(sample)
        got = torch.tensor(report["outputs"][row.cell_id])
        assert (got - expected).abs().max().item() <= MATCH_TOLERANCE, (row.cell_id, fmt)


@pytest.mark.parametrize("fmt", ["pt", "onnx"])
def test_a_network_a_format_cannot_express_gets_one_line_naming_its_layer(kept_run, tmp_path, capsys, fmt):
    out, cells = kept_run
    sealed = cells[cells["backend"] == "sealed"].iloc[0]
    code = main(["-p", "sealed_backend", "export", str(out), sealed["cell_id"], "--format", fmt,
                 "--out", str(tmp_path / "sealed")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "ListLowRank from sealed_backend" in err and "Traceback" not in err
    assert not (tmp_path / "sealed").exists()


def test_a_traced_network_that_froze_a_value_is_caught_by_the_check(kept_run, tmp_path, capsys):
    # TorchScript's tracer turns the list round trip into a constant: the file is written, and the check on the
    # test inputs says it does not match.
    out, cells = kept_run
    sealed = cells[cells["backend"] == "sealed"].iloc[0]
    code = main(["-p", "sealed_backend", "export", str(out), sealed["cell_id"], "--format", "torchscript",
                 "--out", str(tmp_path / "sealed.pt")])
    said = capsys.readouterr().out
    assert code == 1 and "do NOT match" in said


def test_best_picks_the_kept_network_within_the_constraints(kept_run, tmp_path, capsys):
    out, cells = kept_run
    decomposed = cells[cells["backend"] != "sealed"]
    code = main(["-p", "sealed_backend", "export", str(out), "--best", "ort_speedup", "--min-compression", "3",
                 "--format", "onnx", "--out", str(tmp_path / "best.onnx")])
    said = capsys.readouterr().out
    eligible = cells[cells["compression"] >= 3].dropna(subset=["ort_speedup"])
    assert code == 0 and f"from cell {eligible.loc[eligible['ort_speedup'].idxmax(), 'cell_id']}" in said
    assert len(decomposed) >= 1


@pytest.mark.parametrize("args, words", [
    (["nowhere"], "not a run directory"),
    (["RUN", "native/no/such/cell"], "no cell"),
    (["RUN"], "give a CELL_ID or --best"),
    (["RUN", "--best", "no_such_metric"], "is not a numeric metric"),
    (["RUN", "--best", "status"], "is not a numeric metric"),
    (["RUN", "--best", "speedup", "--min-compression", "1000"], "meets the constraints"),
    (["RUN", "--best", "speedup", "--format", "tflite"], "invalid choice"),
])
def test_bad_export_requests_get_one_line_and_exit_2(kept_run, capsys, args, words):
    out, _ = kept_run
    code = main(["-p", "sealed_backend", "export", *[str(out) if a == "RUN" else a for a in args]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err


def test_a_run_without_save_models_says_how_to_keep_them(tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    assert main(["run", "--no-train", "--datasets", "random:1x28x28", "--backends", "native", "--methods", "svd", "--targets", "linear",
                 "--ratios", "4", "--latency-passes", "1", "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    cell = pd.read_csv(out / "cells.csv").iloc[0]
    capsys.readouterr()
    assert main(["export", str(out), cell["cell_id"]]) == 2
    assert "run without --save-models" in capsys.readouterr().err
    assert "not kept: run with --save-models" in (out / "report.html").read_text()


def test_an_export_past_its_time_limit_is_abandoned_in_one_line(tmp_path):
    from harness.run.export import ExportFailed, export_network

    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(200)])
    with pytest.raises(ExportFailed, match="did not finish in 0.01 s"):
        export_network(model, torch.randn(2, 8), "onnx", tmp_path / "slow.onnx", time_limit=0.01)
    assert not (tmp_path / "slow.onnx").exists()
    export_network(model[:2], torch.randn(2, 8), "pt", tmp_path / "quick.pt2")  # the limit is gone afterwards


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_network_timed_at_batch_1_exports_for_any_batch(tmp_path, fmt):
    # --latency-batch 1 hands the exporters a batch of one, which torch.export would specialise to that size.
    from harness.run.export import export_network, load_exported

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10)).eval()
    path = tmp_path / f"net.{fmt}"
    export_network(model, torch.randn(1, 1, 28, 28), fmt, path)
    batch = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(load_exported(path, fmt)(batch), model(batch), atol=MATCH_TOLERANCE)
