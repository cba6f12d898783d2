"""Stability metrics on synthetic curves whose answers are known."""

import pytest

from harness.measure.stability import recovery_epoch, stability_metrics


def test_recovery_epoch_cases():
    assert recovery_epoch(97.0, 96.8, [90.0]) == 0          # never lost more than the tolerance
    assert recovery_epoch(97.0, 80.0, [90.0, 96.4, 96.6]) == 3  # 96.6 >= 96.5
    assert recovery_epoch(97.0, 80.0, [90.0, 96.5]) == 2     # the boundary counts
    assert recovery_epoch(97.0, 80.0, [90.0, 91.0]) is None
    assert recovery_epoch(97.0, 80.0, [96.0], tolerance=1.0) == 1


def test_stability_metrics_on_a_known_curve():
    metrics = stability_metrics(97.0, 85.0, [92.0, 96.0, 97.5, 96.5, 97.0])
    assert metrics["acc_drop"] == pytest.approx(12.0)
    assert metrics["recovery_epoch"] == 3  # 96.0 is still 1 point short; 97.5 is back
    assert metrics["overfit_drop"] == pytest.approx(0.5)
    assert metrics["last_k_std"] == pytest.approx(0.408248, rel=1e-5)  # pstdev of 97.5, 96.5, 97.0


def test_stability_metrics_with_no_or_one_epoch_and_nan():
    assert stability_metrics(97.0, 90.0, [])["overfit_drop"] is None
    single = stability_metrics(97.0, 90.0, [95.0])
    assert single["last_k_std"] is None and single["overfit_drop"] == 0
    assert stability_metrics(97.0, 90.0, [95.0, float("nan")])["overfit_drop"] == 0
