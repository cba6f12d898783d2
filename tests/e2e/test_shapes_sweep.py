"""Tensorized Linear shapes as a swept setting: factors, padding, planning, the runner's records, bad input, old stores."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from harness.cli.main import main
from harness.config.settings import ConfigError, RunConfig, build_config
from harness.config.tensorize import Tensorization, labels, padding_for
from harness.contract.backend import BackendInfo, DecomposeRequest, count_params
from harness.plan.cells import Cell
from harness.plan.planner import plan_cells
from harness.results.store import load_results
from harness.run.host import load_host
from harness.run.models import lenet5
from harness.run.names import validate_names
from harness.run.runner import CellContext, decompose_padded
from harness.tensor.shapes import balanced_factors, padded_factors, spread
from harness.tensor.structures import PaddedLinear

# LeNet-5's decomposed Linear layers with the edges kept dense: "2" (400 -> 120) and "4" (120 -> 84).
FC1, FC2 = "2", "4"
PREFIX = "lenet5/mnist-embedded"

BACKENDS = {
    "shaped": BackendInfo("shaped", "lib", "1", {"linear": ("svd", "tt"), "conv2d": ("tt",)},
                          tensorized_methods=frozenset({"tt"})),
    "flat": BackendInfo("flat", "lib", "1", {"linear": ("svd", "tt")}),
}


def _plan(**values) -> tuple[dict[str, Cell], list[str]]:
    config = build_config({"ratios": "4", "dense_control": False, "targets": "linear", **values})
    validate_names(config, BACKENDS, {"lenet5": None}, {"mnist-embedded": None})
    plan = plan_cells(config, BACKENDS, {"lenet5@mnist-embedded": lenet5((1, 28, 28), 10)})
    return {c.cell_id: c for c in plan.cells}, plan.notes


@pytest.mark.parametrize(("n", "d", "expected"), [(400, 3, (10, 8, 5)), (400, 2, (20, 20)), (120, 3, (6, 5, 4)),
                                                  (97, 3, (97, 1, 1))])
def test_balanced_factors_of_known_sizes(n, d, expected):
    assert balanced_factors(n, d) == expected


@pytest.mark.parametrize(("n", "d", "expected"), [(97, 3, (7, 7, 2)), (89, 3, (6, 5, 3)), (97, 2, (14, 7)),
                                                  (400, 3, (10, 8, 5)), (7, 3, (7, 1, 1))])
def test_padded_factors_pad_only_what_factors_badly(n, d, expected):
    factors = padded_factors(n, d)
    assert factors == expected and math.prod(factors) >= n
    # A size that already factors evenly is left alone; a tiny one has nothing in reach and stays as it is.
    assert spread(factors) <= 4 or math.prod(factors) == n


def test_labels_and_their_parsing():
    assert labels([], False, False) == [""] and labels([], False, True) == ["", "explicit"]
    assert labels([2, 3], True, True) == ["d2-pad", "d3-pad", "explicit-pad"] and labels([], True, False) == ["d3-pad"]
    assert Tensorization.parse("d4-pad") == Tensorization(4, False, True)
    assert Tensorization.parse("explicit") == Tensorization(3, True, False)
    with pytest.raises(ValueError):
        Tensorization.parse("d0")


def test_tt_d_plans_one_cell_per_d_for_tensorized_methods_only():
    cells, _ = _plan(backends="shaped,flat", methods="tt,svd", tt_d="2,3")
    assert sorted(cells) == sorted([
        f"shaped/{PREFIX}/tt/linear/x4/s0/t-d2", f"shaped/{PREFIX}/tt/linear/x4/s0/t-d3",
        f"shaped/{PREFIX}/svd/linear/x4/s0", f"flat/{PREFIX}/tt/linear/x4/s0", f"flat/{PREFIX}/svd/linear/x4/s0"])
    assert cells[f"shaped/{PREFIX}/tt/linear/x4/s0/t-d2"].tensorize == "d2"
    # Without the setting the ids are those of runs from before it, and a cell stored then loads as the default.
    default, _ = _plan(backends="shaped", methods="tt")
    assert list(default) == [f"shaped/{PREFIX}/tt/linear/x4/s0"]
    old = {k: v for k, v in default[f"shaped/{PREFIX}/tt/linear/x4/s0"].to_dict().items() if k != "tensorize"}
    assert Cell.from_dict(old).cell_id == f"shaped/{PREFIX}/tt/linear/x4/s0"


def test_conv_only_cells_and_mixes_without_tensorized_linear_are_not_swept():
    cells, _ = _plan(backends="shaped", methods="tt", targets="conv", tt_d="2,3")
    assert list(cells) == [f"shaped/{PREFIX}/tt/conv/x4/s0"]
    mixed, _ = _plan(backends="shaped", mix="conv=tt,linear=svd", targets="all", tt_d="2,3")
    assert list(mixed) == [f"shaped/{PREFIX}/mix-tt+svd/all/x4/s0"]
    swept, _ = _plan(backends="shaped", mix="conv=tt,linear=tt", targets="all", tt_d="2")
    assert list(swept) == [f"shaped/{PREFIX}/mix-tt+tt/all/x4/s0/t-d2"]


def test_explicit_shapes_add_a_cell_and_are_checked_against_the_model():
    shapes = {FC1: {"in": [4, 5, 20], "out": [4, 5, 6]}}
    cells, notes = _plan(backends="shaped", methods="tt", tensor_shapes=shapes)
    assert list(cells) == [f"shaped/{PREFIX}/tt/linear/x4/s0", f"shaped/{PREFIX}/tt/linear/x4/s0/t-explicit"]
    assert not notes
    _, notes = _plan(backends="shaped", methods="tt", tensor_shapes={**shapes, "fc*": {"in": [2], "out": [2]}})
    assert notes == ["tensor_shapes 'fc*' matches no decomposed Linear layer of lenet5 (those are: 2, 4)"]
    with pytest.raises(ConfigError, match="do not multiply out to lenet5 layer 4"):
        _plan(backends="shaped", methods="tt", tensor_shapes={"[24]": {"in": [20, 20], "out": [10, 12]}})


@pytest.mark.parametrize(("value", "message"), [
    ([1, 2], "tensor_shapes must be a table"),
    ({"2": {"in": [20, 20]}}, "exactly the keys in and out"),
    ({"2": {"in": [20, 0], "out": [10, 12]}}, "non-empty list of positive integers"),
    ({"2": {"in": [20, 20], "out": [120]}}, "different numbers of modes"),
])
def test_malformed_tensor_shapes_are_config_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"tensor_shapes": value})


def test_padded_linear_matches_the_dense_layer_at_full_rank_and_keeps_the_budget():
    torch.manual_seed(0)
    layer = nn.Linear(97, 89).double()
    padding = padding_for(layer, 3)
    assert padding == ((7, 7, 2), (6, 5, 3))
    ctx = CellContext(RunConfig(device="cpu"), load_host())
    base = DecomposeRequest(backend="native", method="tt", layer_path="fc", kind="linear",
                            dense_params=count_params(layer), options={"tt_d": 3})
    full, _, _ = decompose_padded(ctx, layer, DecomposeRequest(**{**vars(base), "rank": "full"}), padding)
    assert isinstance(full, PaddedLinear) and count_params(full) == count_params(full.inner)
    assert full.decomposition_info["in_shape"] == [7, 7, 2] and full.decomposition_info["out_shape"] == [6, 5, 3]
    assert full.decomposition_info["padded"] == {"in_features": 97, "out_features": 89, "padded_in": 98,
                                                 "padded_out": 90}
    x = torch.randn(16, 97, dtype=torch.float64)
    assert ((full(x) - layer(x)).norm() / layer(x).norm()).item() < 1e-4
    budget = count_params(layer) // 4
    fitted, _, _ = decompose_padded(ctx, layer, DecomposeRequest(**{**vars(base), "ratio": 4.0, "budget": budget}),
                                    padding)
    assert count_params(fitted) <= budget and fitted(x).shape == (16, 89)


def _run(tmp_path, fast_args, *extra):
    out = tmp_path / "run"
    code = main(["run", "--backends", "native", "--targets", "linear", "--executor", "inprocess",
                 "--out", str(out), *fast_args, *extra])
    return code, load_results(out)


def test_run_sweeps_d_and_records_shapes(tmp_path, fast_args):
    code, results = _run(tmp_path, fast_args, "--methods", "tt,svd", "--tt-d", "2,3")
    assert code == 0
    cells = results.cells.set_index("cell_id")
    assert dict(cells["status"]) == {f"native/{PREFIX}/tt/linear/x4/s0/t-d2": "ok",
                                     f"native/{PREFIX}/tt/linear/x4/s0/t-d3": "ok",
                                     f"native/{PREFIX}/svd/linear/x4/s0": "ok"}
    assert cells.loc[f"native/{PREFIX}/tt/linear/x4/s0/t-d2", "tensorize"] == "d2"
    assert cells.loc[f"native/{PREFIX}/svd/linear/x4/s0", "tensorize"] == ""
    assert cells["budget_ok"].all()
    tt = results.layers[results.layers["method"] == "tt"]
    for label, modes in (("d2", 2), ("d3", 3)):
        rows = tt[tt["tensorize"] == label]
        assert len(rows) == 2
        for info in map(json.loads, rows["info"]):
            assert len(info["in_shape"]) == modes and len(info["out_shape"]) == modes


def test_explicit_shapes_from_toml_and_padding_reach_the_backend(tmp_path, fast_args):
    config = tmp_path / "shapes.toml"
    config.write_text('[run]\ntensor_shapes = { "2" = { in = [4, 5, 20], out = [4, 5, 6] } }\n')
    code, results = _run(tmp_path, fast_args, "--methods", "tt", "--config", str(config), "--tt-d", "5", "--tt-pad")
    assert code == 0 and (results.cells["status"] == "ok").all() and results.cells["budget_ok"].all()
    assert sorted(results.cells["tensorize"]) == ["d5-pad", "explicit-pad"]
    layers = results.layers[results.layers["tensorize"] == "explicit-pad"].set_index("layer")
    explicit = json.loads(layers.loc[FC1, "info"])
    assert (explicit["in_shape"], explicit["out_shape"]) == ([4, 5, 20], [4, 5, 6])
    # The other layer keeps the default d = 3, where 120 and 84 factor evenly: nothing is padded.
    other = json.loads(layers.loc[FC2, "info"])
    assert len(other["in_shape"]) == 3 and "padded" not in other
    # With d = 5, 84 = (7, 3, 2, 2, 1) is padded to 90 = (5, 3, 3, 2, 1); 120 is not.
    five = results.layers[results.layers["tensorize"] == "d5-pad"].set_index("layer")
    padded = json.loads(five.loc[FC2, "info"])
    assert padded["padded"] == {"in_features": 120, "out_features": 84, "padded_in": 120, "padded_out": 90}
    assert padded["out_shape"] == [5, 3, 3, 2, 1] and "padded" not in json.loads(five.loc[FC1, "info"])
    assert (five["params"] <= five["max_params"]).all() and five["recon_error"].between(0, 1).all()


@pytest.mark.parametrize(("extra", "message"), [
    (["--tt-d", "2,0"], "tt_d (the number of tensor modes): 0 is below 1"),
    (["--tt-d", "two"], "is not an integer"),
    (["--config", "BAD"], "do not multiply out to lenet5 layer 2 (400 -> 120 features)"),
])
def test_bad_shapes_are_one_line_usage_errors(tmp_path, fast_args, capsys, extra, message):
    bad = tmp_path / "bad.toml"
    bad.write_text('tensor_shapes = { "2" = { in = [20, 21], out = [10, 12] } }\n')
    extra = [str(bad) if arg == "BAD" else arg for arg in extra]
    code = main(["run", "--backends", "native", "--methods", "tt", "--targets", "linear", "--out",
                 str(tmp_path / "run"), *fast_args, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_list_shows_tensorized_methods(capsys):
    assert main(["list"]) == 0
    native = capsys.readouterr().out.split("  native ")[1].split("\n  ")[0:5]
    assert any(line.strip().startswith("tensorized: tt (Linear") for line in native)

