"""The cost model behind a run's estimate: records scaled to a cell, this machine's before the reference, the
cells laid out over the workers, and the rest of a run rescaled by how its finished cells compared."""

from __future__ import annotations

import pytest

from harness.run.estimate import (
    COST_FILE,
    CellCost,
    CostModel,
    Estimate,
    RestEstimate,
    estimate_run,
    makespan,
    read_records,
    write_records,
)


def cost(**changes) -> CellCost:
    base = dict(backend="native", method="svd", target="linear", model="lenet5", dataset="mnist-embedded", ratio=2.0,
                epochs=2, train_size=4000, test_size=1000, params=50_000, probe_s=1e-4, run="r", cell_id="c")
    return CellCost(**{**base, **changes})


def test_cells_are_laid_out_over_the_workers_in_order():
    assert makespan([3, 1, 1, 1], 2) == 3
    assert makespan([1, 1, 1, 3], 2) == 4  # the long cell comes last and waits for a free worker
    assert makespan([2, 2], 1) == 4
    assert makespan([], 2) == 0


def test_a_record_is_scaled_to_the_cell_it_predicts(tmp_path):
    model = CostModel(tmp_path, priors=None)
    model.record(cost(decompose_s=1.0, train_s=8.0, other_s=2.0))
    seconds, _, source = model.predict(cost())
    assert source == "this machine" and seconds == pytest.approx(11.0)
    # Twice the epochs: twice the training, and evaluations (after each epoch, and two more) in proportion.
    assert model.predict(cost(epochs=4))[0] == pytest.approx(1.0 + 16.0 + 2.0 * 6 / 4)
    # A machine twice as slow (the probe) takes twice as long; twice the parameters decompose for twice as long.
    assert model.predict(cost(probe_s=2e-4))[0] == pytest.approx(22.0)
    assert model.predict(cost(params=100_000))[0] == pytest.approx(12.0)


def test_the_nearest_records_are_used_and_this_machine_before_the_reference(tmp_path):
    reference = tmp_path / "priors.csv"
    write_records([cost(train_s=100.0), cost(backend="tednet", method="btt", train_s=500.0)], reference)
    model = CostModel(tmp_path / "cache", priors=reference)
    assert model.predict(cost())[2] == "reference" and model.predict(cost())[0] == pytest.approx(100.0)
    assert model.predict(cost(backend="tednet", method="btt"))[0] == pytest.approx(500.0)
    # A backend without records of its own borrows those of its method and target.
    assert model.predict(cost(backend="tensorly"))[0] == pytest.approx(100.0)
    model.record(cost(ratio=4.0, train_s=10.0, cell_id="x4"))
    model.record(cost(ratio=8.0, train_s=30.0, cell_id="x8"))
    assert model.predict(cost(ratio=4.0)) [:2] == (pytest.approx(10.0), 0.0)  # the same ratio first
    assert model.predict(cost(ratio=2.0))[0] == pytest.approx(20.0)  # else the median of the model's records
    # Kept on disk for the next run, which reads this machine's records back.
    again = CostModel(tmp_path / "cache", priors=reference)
    assert len(again.local) == 2 and again.predict(cost(ratio=4.0))[2] == "this machine"
    assert CostModel(tmp_path / "empty", priors=None).predict(cost()) == (0.0, 0.0, "none")


def test_the_latency_phase_share_is_recorded_and_predicted(tmp_path):
    model = CostModel(tmp_path, priors=None)
    model.record(cost(cell_id="a", train_s=5.0, latency_key="b32/t1/p3/contiguous"))
    model.record_latency("r", {"a": 0.9}, "b32/t1/p3/contiguous")
    again = CostModel(tmp_path, priors=None)
    assert again.predict(cost(latency_key="b32/t1/p3/contiguous"))[1] == pytest.approx(0.9)
    # A record timed at another batch is not the nearest for the phase's share where one at this batch exists.
    again.record(cost(cell_id="b", train_s=5.0, latency_s=30.0, latency_key="b1/t1/p3/contiguous"))
    assert again.predict(cost(latency_key="b1/t1/p3/contiguous"))[1] == pytest.approx(30.0)
    assert again.predict(cost(latency_key="b32/t1/p3/contiguous"))[1] == pytest.approx(0.9)


def test_a_damaged_cost_model_is_set_aside_and_written_afresh(tmp_path):
    (tmp_path / COST_FILE).write_bytes(b"not a database" * 100)
    model = CostModel(tmp_path, priors=None)
    assert model.local == [] and not (tmp_path / COST_FILE).exists()
    model.record(cost(train_s=3.0))
    assert len(CostModel(tmp_path, priors=None).local) == 1


def test_the_rest_is_rescaled_by_how_the_finished_cells_compared():
    estimate = Estimate(0.0, {"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0}, 20.0, 4.0, {"this machine": 4}, 2)
    assert estimate.total_s == 24.0 and "about 24 s" in estimate.line()
    rest = RestEstimate(estimate)
    assert rest.left() is None  # nothing to compare with yet: the progress line goes by the pace instead
    rest.finished_cell("a", 20.0)  # twice as long as predicted: the rest is expected to be too
    assert rest.left() == pytest.approx((20.0 + 4.0) * 2)


def test_a_run_estimate_adds_baselines_cells_and_latency(tmp_path):
    model = CostModel(tmp_path, priors=None)
    model.record(cost(train_s=8.0, latency_s=1.0, latency_key="k"))
    result = estimate_run([("x", cost(latency_key="k")), ("y", cost(latency_key="k"))], model, 1, 5.0)
    assert result.cells_wall_s == pytest.approx(16.0) and result.latency_s == pytest.approx(2.0)
    assert result.total_s == pytest.approx(23.0) and result.sources == {"this machine": 2}


def test_the_shipped_reference_records_parse():
    from harness.run.estimate import PRIORS

    records = read_records(PRIORS)
    assert records and all(r.probe_s > 0 and r.train_size > 0 for r in records)


def test_records_of_the_same_model_come_first_and_untrained_records_never_predict_training(tmp_path):
    reference = tmp_path / "priors.csv"
    write_records([cost(train_s=100.0)], reference)
    model = CostModel(tmp_path / "cache", priors=reference)
    # This machine knows the method only on another model, and without training: the reference's model answers.
    model.record(cost(model="resnet50", dataset="random", epochs=0, train_s=0.0, other_s=1.0, cell_id="r"))
    assert model.predict(cost()) == (pytest.approx(100.0), 0.0, "reference")
    assert model.predict(cost(model="resnet50", dataset="random", epochs=0))[2] == "this machine"


def test_a_small_network_s_phase_share_is_set_by_the_phase_s_blocks_not_its_forward(tmp_path):
    model = CostModel(tmp_path, priors=None)
    model.record(cost(latency_s=0.9, latency_key="b32/t1/p3/contiguous", probe_s=1.5e-4))
    # Twenty times LeNet-5's training step, but a forward (~30 ms at batch 32) is about one 20 ms block:
    # its share grows a few times, not twentyfold (the probe's ratio had put a vgg-small run's phase at 14x).
    larger = model.predict(cost(model="vgg-small", latency_key="b32/t1/p3/contiguous", probe_s=3e-3))[1]
    assert 0.9 * 1.5 < larger < 0.9 * 3
    # A network whose forward takes a second costs its forwards: warm-up, calibration and rounds within their limits.
    huge = model.predict(cost(model="big", latency_key="b32/t1/p3/contiguous", probe_s=0.1))[1]
    assert huge > 20 * 0.9
    # Fewer passes: a smaller share in proportion.
    assert model.predict(cost(latency_key="b32/t1/p2/contiguous", probe_s=1.5e-4))[1] == pytest.approx(0.6)


def test_the_estimate_says_what_it_leaves_out():
    estimate = Estimate(0.0, {"a": 10.0}, 10.0, 2.0, {"this machine": 1}, 1, left_out="the ONNX Runtime phase")
    assert estimate.line().endswith("cells' records: 1 from this machine; the ONNX Runtime phase not included)")
