"""A data-free run's report holds what it measured: no accuracy-only findings ("no winner to name") and the
accuracy plots folded away with the reason, not drawn empty."""

from __future__ import annotations

from harness.cli.main import main
from harness.results.findings import ACCURACY_ONLY, all_findings
from harness.results.store import load_results


def test_a_data_free_report_leaves_accuracy_out(tmp_path, cache_dir):
    out = tmp_path / "run"
    assert main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
                 "--models", "lenet5", "--ratios", "4", "--no-train", "--datasets", "random:1x28x28",
                 "--latency-passes", "1", "--executor", "inprocess", "--cache-dir", str(cache_dir),
                 "--out", str(out)]) == 0
    keys = {finding.key for finding in all_findings(load_results(out))}
    assert keys and not keys & ACCURACY_ONLY
    page = (out / "report.html").read_text()
    assert "Most accurate backend" not in page and "Steadiest backend" not in page
    for plot in ("accuracy_vs_compression", "epoch_curves"):
        assert not (out / "plots" / f"{plot}.png").exists()
    assert page.count("a data-free run (--no-train): no accuracy was measured") >= 2
