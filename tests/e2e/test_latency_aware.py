"""The latency-aware selector: planted latency tables, the cached tables of a real run, and what a run records."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest
import torch
from torch import nn

from harness.cli.main import main
from harness.contract.selection import LatencyOption, LayerLatency, SelectionInput, SelectionLayer, layer_budgets
from harness.run.latency_tables import TABLES_FILE, TableCache, candidate_budgets, layer_inputs
from harness.run.selectors import SELECTORS, parse_target

LATENCY = {selector.name: selector for selector in SELECTORS}["latency"]
LATENCY_RATIO = {selector.name: selector for selector in SELECTORS}["latency-ratio"]


def _layer(path: str, out_features: int = 30, in_features: int = 40, seed: int = 0) -> SelectionLayer:
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    return SelectionLayer(path, "linear", weight, weight.numel() + out_features, True)


def _table(dense_ms: float, *options: tuple[int, float]) -> LayerLatency:
    return LayerLatency(dense_ms, tuple(LatencyOption("svd", budget, budget, ms, dense_ms) for budget, ms in options))


def _select(argument: str, tables: list[LayerLatency], network_ms: float, layers: list[SelectionLayer]):
    return layer_budgets(LATENCY, SelectionInput(argument, None, "svd", layers, latency=tables,
                                                 network_ms=network_ms))


def _predicted(budgets, tables, network_ms) -> float:
    return network_ms - sum(t.dense_ms for t in tables) + sum(b.predicted_ms for b in budgets)


def test_the_selector_meets_a_planted_tables_target_exactly_with_the_least_error():
    layers = [_layer("a", seed=1), _layer("b", seed=2)]
    # Two layers of 4 ms in a 10 ms network: x2 asks for 5 ms, so the layers get 3 ms between them. Each offers a
    # rank-8 structure (140+... params) at 1 ms and a rank-16 one at 2 ms; one of each fits exactly.
    small, large = 8 * 70 + 30, 16 * 70 + 30
    tables = [_table(4.0, (small, 1.0), (large, 2.0)), _table(4.0, (small, 1.0), (large, 2.0))]
    budgets = _select("2", tables, 10.0, layers)
    assert _predicted(budgets, tables, 10.0) == pytest.approx(5.0)
    assert sorted(b.params for b in budgets) == [small, large]
    assert all(b.dense is None and "against 4 ms dense" in b.why for b in budgets)
    # A looser target gives both layers the larger structure; a target in milliseconds is read as such.
    loose = _select("1.5", tables, 10.0, layers)
    assert [b.params for b in loose] == [large, large]
    assert _predicted(_select("4ms", tables, 10.0, layers), tables, 10.0) <= 4.0
    # A plan measured 1.25x slower than its tables: the selector aims at 5 / 1.25 = 4 ms on the tables.
    corrected = layer_budgets(LATENCY, SelectionInput("2", None, "svd", layers, latency=tables, network_ms=10.0,
                                                      latency_correction=1.25))
    assert _predicted(corrected, tables, 10.0) == pytest.approx(4.0)


def test_a_layer_whose_every_candidate_is_slower_stays_dense_with_its_reason():
    layers = [_layer("fast"), _layer("slow", seed=3)]
    tables = [_table(4.0, (300, 1.0)), _table(2.0, (300, 2.5), (600, 3.0))]
    budgets = _select("1.2", tables, 8.0, layers)
    assert budgets[1].dense == "every candidate is slower than the dense layer"
    assert budgets[1].params == layers[1].dense_params
    assert budgets[0].dense is None and budgets[0].params == 300
    # Even when the target cannot be met, a slower candidate is never taken: the fastest option there is dense.
    unreachable = _select("100", tables, 8.0, layers)
    assert unreachable[1].dense is not None and "out of reach" in unreachable[0].why


def test_with_the_ratio_the_plan_also_keeps_within_the_parameter_total():
    layers = [_layer("a", seed=1), _layer("b", seed=2)]  # 30x40 + 30 = 1230 dense parameters each
    small, large = 8 * 70 + 30, 16 * 70 + 30
    tables = [_table(4.0, (small, 1.0), (large, 2.0)), _table(4.0, (small, 1.0), (large, 2.0))]
    loose = layer_budgets(LATENCY, SelectionInput("1.5", None, "svd", layers, latency=tables, network_ms=10.0))
    assert [b.params for b in loose] == [large, large]
    # x1.4 in parameters allows 2 * 878 = 1756: one large and one small structure (1740), not two large ones.
    ratio = layer_budgets(LATENCY_RATIO, SelectionInput("1.5", 1.4, "svd", layers, latency=tables, network_ms=10.0))
    assert sorted(b.params for b in ratio) == [small, large]
    # A layer with no faster candidate may take a slower, smaller one when the parameter total needs it, and says so.
    slow = [_table(4.0, (small, 1.0)), _table(1.0, (small, 1.5))]
    forced = layer_budgets(LATENCY_RATIO, SelectionInput("1.01", 2.0, "svd", layers, latency=slow, network_ms=6.0))
    assert forced[1].dense is None and "taken for the parameter budget" in forced[1].why


def test_targets_are_parsed_and_nonsense_is_refused():
    assert parse_target("2") == ("speedup", 2.0) and parse_target("1.5x") == ("speedup", 1.5)
    assert parse_target("3.5ms") == ("ms", 3.5)
    for bad in ("fast", "1", "0.5", "-2ms", "nan", "infms"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_candidate_budgets_hold_hardware_friendly_ranks_below_dense():
    linear = nn.Linear(256, 128)
    budgets = candidate_budgets(linear, "svd")
    dense = 256 * 128 + 128
    assert all(0 < b < dense for b in budgets) and len(budgets) <= 16
    assert 64 * (256 + 128) + 128 in budgets  # the rank-64 SVD, a multiple of 16
    conv = nn.Conv2d(64, 64, 3)
    assert all(0 < b < 64 * 64 * 9 + 64 for b in candidate_budgets(conv, "tucker2"))
    shapes = layer_inputs(nn.Sequential(conv, nn.Flatten()), torch.zeros(2, 64, 8, 8), ["0"])
    assert shapes == {"0": (2, 64, 8, 8)}


def test_a_run_measures_the_tables_once_and_records_choices_and_predictions(tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["run", "--models", "lenet5", "--no-train", "--datasets", "random:1x28x28", "--backends", "native",
            "--methods", "svd", "--targets", "linear", "--rank-selection", "latency:1.01", "--latency-passes", "1",
            "--latency-batch", "8", "--executor", "inprocess", "--cache-dir", str(cache)]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    first = capsys.readouterr().out
    measured = int(first.split("candidates measured")[0].rsplit(": ", 1)[1])
    assert measured > 0
    cells = pd.read_csv(tmp_path / "one" / "cells.csv")
    assert cells["status"].tolist() == ["ok"]
    assert cells["predicted_speedup"].iloc[0] > 0 and cells["speedup"].notna().all()
    # The plan was checked on the whole network before the cell ran; the cell planned with the factor it found.
    checks = [line for line in first.splitlines() if line.startswith("plan check ")]
    assert checks and "x on the tables" in checks[0] and "x measured (lower quartile of" in checks[0]
    assert checks[0].endswith("target 1.01x")
    with sqlite3.connect(cache / TABLES_FILE) as conn:
        (factor,) = conn.execute("SELECT factor FROM corrections").fetchone()
    assert cells["latency_correction"].iloc[0] == pytest.approx(factor)
    assert cells["predicted_speedup"].iloc[0] == pytest.approx(cells["predicted_speedup_tables"].iloc[0] / factor)
    layers = pd.read_csv(tmp_path / "one" / "layers.csv")
    infos = [json.loads(info) for info in layers["info"]]
    assert all("latency_predicted_ms" in info and (info.get("why") or info.get("left_dense")) for info in infos)

    # A second run measures nothing: every entry is in the cache, and so is the plan's check.
    assert main([*args, "--out", str(tmp_path / "two")]) == 0
    second = capsys.readouterr().out
    assert ": 0 candidates measured" in second and "plan check" not in second

    # A damaged entry is measured again, never used; a file SQLite cannot read is replaced with a warning.
    with sqlite3.connect(cache / TABLES_FILE) as conn:
        conn.execute("UPDATE entries SET value = '{\"ms\": -1}' WHERE rowid = (SELECT min(rowid) FROM entries)")
    assert main([*args, "--out", str(tmp_path / "three")]) == 0
    assert ": 1 candidates measured" in capsys.readouterr().out
    (cache / TABLES_FILE).write_bytes(b"not a database" * 100)
    table = TableCache(cache, write=print)
    table.close()
    assert "cannot be read" in capsys.readouterr().out


def test_a_layers_table_holds_only_the_methods_its_plan_allows(tmp_path):
    from harness.run.latency_tables import read_tables

    cache = TableCache(tmp_path)
    for method, budget in (("svd", 100), ("tucker2", 120)):
        cache.add("layer", LatencyOption(method, budget, budget, 1.0, 2.0), "a layer")
    assert [o.method for o in read_tables(cache, ["layer"], [("tucker2",)])[0].options] == ["tucker2"]
    with pytest.raises(LookupError, match="no latency table for targeted layer 0 .cp."):
        read_tables(cache, ["layer"], [("cp",)])
    cache.close()


def test_layer_latency_gives_every_cells_rows_their_latency_and_flags_slower_layers(tmp_path):
    from harness.results.findings import slower_layers
    from harness.results.store import load_results

    out = tmp_path / "run"
    assert main(["run", "--models", "lenet5", "--no-train", "--datasets", "random:1x28x28", "--backends", "native",
                 "--methods", "svd", "--targets", "linear", "--ratios", "2", "--layer-latency", "--latency-passes", "1",
                 "--latency-batch", "8", "--executor", "inprocess", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    results = load_results(out)
    infos = [json.loads(info) for info in results.layers["info"]]
    # x2 is on the tables' grid, so each replacement's own structure was timed against its dense layer.
    assert infos and all("latency_predicted_ms" in info and "latency_dense_layer_ms" in info for info in infos)
    assert all(info.get("slower_than_dense", False) == (info["latency_predicted_ms"] >= info["latency_dense_layer_ms"])
               for info in infos)
    found = slower_layers(results.comparable, results.layers)
    assert len(found) == 1 and found[0].numbers["timed"] == len(infos)


def test_the_slower_layers_finding_names_the_slowest_and_is_silent_without_tables():
    from harness.results.findings import slower_layers

    cells = pd.DataFrame({"cell_id": ["a", "b"]})
    layers = pd.DataFrame({"cell_id": ["a", "a", "b"], "layer": ["fc1", "fc2", "fc1"], "info": [
        json.dumps({"method": "svd", "latency_predicted_ms": 2.0, "latency_dense_layer_ms": 1.0,
                    "slower_than_dense": True}),
        json.dumps({"method": "svd", "latency_predicted_ms": 0.5, "latency_dense_layer_ms": 1.0}),
        json.dumps({"method": "svd"})]})
    found, = slower_layers(cells, layers)
    assert found.numbers == {"slower": 1, "timed": 2} and "fc1 of a at 0.50×" in found.text
    assert slower_layers(cells, layers.iloc[2:]) == []


def test_an_expensive_layer_gets_a_thinner_grid_over_the_whole_range(tmp_path):
    from harness.run.latency_tables import coarse_to_fine, profile_layer
    from harness.tensor import structures

    order = coarse_to_fine(list(range(16)))
    assert sorted(order) == list(range(16)) and order[:3] == [0, 15, 8]
    layer = nn.Linear(64, 48)

    def build(method: str, budget: int) -> nn.Module:
        rank = max(1, budget // (64 + 48 + 1))
        return structures.svd_linear_module(layer, torch.randn(rank, 64), torch.randn(48, rank))

    cache = TableCache(tmp_path)
    # No time at all: one candidate (the smallest budget) per method, then the bound stops it.
    assert profile_layer(cache, ("ctx", "a layer"), layer, torch.randn(4, 64), ["svd"], build, rounds=1,
                         seconds=0.0) == 1
    assert profile_layer(cache, ("ctx", "a layer"), layer, torch.randn(4, 64), ["svd"], build, rounds=1) > 1
    cache.close()


def test_a_uniform_plan_matched_to_the_latency_plans_parameters(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--models", "lenet5", "--no-train", "--datasets", "random:1x28x28", "--backends", "native",
                 "--methods", "svd", "--targets", "linear", "--rank-selection", "latency:1.01,ratio@latency:1.01",
                 "--latency-passes", "1", "--latency-batch", "8", "--executor", "inprocess",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    cells = pd.read_csv(out / "cells.csv").set_index("rank_selection")
    assert set(cells["status"]) == {"ok"}
    # ratio@latency spreads exactly the parameters the latency plan kept (dense layers included) uniformly.
    assert cells.loc["ratio@latency:1.01", "matched_total"] == cells.loc["latency:1.01", "budget"]


def test_a_plan_check_goes_by_the_lower_quartile_of_its_rounds(tmp_path, capsys, monkeypatch):
    # Rounds whose median meets the target while a quarter of them miss it: the plan is not accepted as it is.
    from harness.run import profiling

    def spread(dense, network, batch, rounds, **timing):
        return [(1.0, 1 / ratio) for ratio in (1.0, 1.2, 1.25, 1.3, 1.3, 1.3, 1.3, 1.3)]

    monkeypatch.setattr(profiling, "latency_pairs", spread)
    assert main(["run", "--models", "lenet5", "--no-train", "--datasets", "random:1x28x28", "--backends", "native",
                 "--methods", "svd", "--targets", "linear", "--rank-selection", "latency:1.25", "--latency-passes",
                 "1", "--latency-batch", "8", "--executor", "inprocess", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "run")]) == 0
    checks = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan check ")]
    assert "1.24x measured (lower quartile of 8 rounds), target 1.25x" in checks[0]
    assert len(checks) == profiling.CHECK_ATTEMPTS  # planned again each time: the lower quartile stays short
