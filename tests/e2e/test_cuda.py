"""--device cuda for real, where a GPU is present: every backend's cells on CUDA match the same cells on the CPU.

Parameters are identical (the budgets and ranks do not depend on the device), accuracies agree within a point
(CUDA kernels sum in another order), latency is measured with CUDA synchronisation, and the metadata names the
GPU. Skipped on machines without CUDA.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from harness.cli.main import main
from harness.results.store import load_results

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GRID = ["run", "--backends", "all", "--methods", "svd,tt,tucker2", "--targets", "conv,linear", "--ratios", "4",
        "--epochs", "1", "--baseline-epochs", "1", "--latency-passes", "1", "--no-dense-control"]


def test_every_backend_runs_on_cuda_like_on_the_cpu(tmp_path, cache_dir):
    assert main([*GRID, "--device", "cpu", "--cache-dir", str(cache_dir), "--out", str(tmp_path / "cpu")]) == 0
    assert main([*GRID, "--device", "cuda", "--cache-dir", str(cache_dir), "--out", str(tmp_path / "cuda")]) == 0
    cpu = load_results(tmp_path / "cpu")
    gpu = load_results(tmp_path / "cuda")
    assert gpu.meta["device"].startswith("cuda") and gpu.meta["device_name"] == torch.cuda.get_device_name(0)
    on_cpu, on_gpu = (r.cells.set_index("cell_id").sort_index() for r in (cpu, gpu))
    assert list(on_gpu.index) == list(on_cpu.index)
    assert set(on_gpu["backend"]) == set(on_cpu["backend"]) and len(set(on_gpu["backend"])) >= 2
    assert (on_gpu["status"] == on_cpu["status"]).all()
    ok = on_cpu["status"] == "ok"
    pd.testing.assert_series_equal(on_gpu.loc[ok, "params"], on_cpu.loc[ok, "params"])
    assert (on_gpu.loc[ok, "acc_final"] - on_cpu.loc[ok, "acc_final"]).abs().max() <= 1.0
    assert (on_gpu.loc[ok, "device"].astype(str).str.startswith("cuda")).all()
    assert (pd.to_numeric(on_gpu.loc[ok, "speedup"]) > 0).all()
