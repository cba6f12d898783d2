"""Shared fixtures: a private baseline cache, small configs and the test plugins on sys.path.

The tests are laid out after the code: ``unit/<layer>/`` tests one layer of ``harness/`` (core, tensor, measure,
config, results, and run's cost model) without a run; ``backends/`` holds the conformance kit over every installed
backend, the host's enforcement of the plugin contract and the missing-library cases, and one folder per built-in
backend;
``e2e/`` runs ``harness`` end to end (runs, resume and kills, export, Ray, real networks, the golden run);
``project/`` checks the repository itself (the import layers, the docs against ``--help``). ``plugins/`` holds the
misbehaving plugins the tests load by name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "plugins"))
sys.path.insert(0, str(TESTS))  # tests/paths.py, for test files in any subfolder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One baseline cache for the whole test session, so each baseline trains once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def fast_args(cache_dir) -> list[str]:
    """Flags for a small, quick run of the default model and data (without the dense control cell), in one worker:
    a test's few cells gain nothing from a second worker's start-up on a busy 2-core machine."""
    return ["--models", "lenet5", "--ratios", "4", "--epochs", "1", "--baseline-epochs", "1",
            "--no-dense-control", "--latency-passes", "1", "--jobs", "1", "--cache-dir", str(cache_dir)]


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """One intra-op thread in the test process: tests measure correctness, not speed, and on
    a busy 2-core machine OpenMP/MKL spinning can make small decompositions 100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
