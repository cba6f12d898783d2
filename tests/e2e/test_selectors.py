"""Rank selectors: the built-ins on planted weights, planning, the runner's budgets, the CLI and old stores."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

import harness
from harness.cli.main import main
from harness.config.settings import RunConfig
from harness.contract.selection import (
    LayerBudget,
    RankSelector,
    SelectionError,
    SelectionInput,
    SelectionLayer,
    layer_budgets,
    matched_budgets,
    normalize_spec,
    spec_label,
)
from harness.plan.cells import Cell
from harness.plan.planner import plan_cells
from harness.results.store import load_results
from harness.run.models import lenet5
from harness.run.names import validate_names
from harness.run.selectors import SELECTORS
from harness.tensor import spectra as rank_selection

BUILTIN = {selector.name: selector for selector in SELECTORS}
PLANTED_SPECTRUM = [10.0, 8.0, 6.0, 5.0, 4.0]


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q


def _layer(path: str, weight: torch.Tensor, kind: str) -> SelectionLayer:
    return SelectionLayer(path, kind, weight, weight.numel() + weight.shape[0], True)


@pytest.fixture(scope="module")
def planted() -> dict[str, SelectionLayer]:
    """A Linear of planted rank 5, a Linear with a flat spectrum and a conv of planted Tucker ranks (3, 2)."""
    gen = torch.Generator().manual_seed(0)
    low_rank = (_orthonormal(40, 5, gen) @ torch.diag(torch.tensor(PLANTED_SPECTRUM, dtype=torch.float64))
                @ _orthonormal(60, 5, gen).T + 1e-3 * torch.randn(40, 60, generator=gen, dtype=torch.float64))
    flat = torch.randn(40, 60, generator=gen, dtype=torch.float64)
    core = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64)
    conv = (torch.einsum("abkl,oa,ib->oikl", core, _orthonormal(16, 3, gen), _orthonormal(8, 2, gen))
            + 1e-3 * torch.randn(16, 8, 3, 3, generator=gen, dtype=torch.float64))
    return {"low_rank": _layer("low_rank", low_rank, "linear"), "flat": _layer("flat", flat, "linear"),
            "conv": _layer("conv", conv, "conv2d")}


# Reference-structure parameters of the planted ranks (structures' formulas, bias included).
LOW_RANK_PARAMS = 5 * (60 + 40) + 40  # svd, rank 5
CONV_PARAMS = 8 * 2 + 2 * 3 * 3 * 3 + 3 * 16 + 16  # tucker2 (R_out, R_in) = (3, 2), 3x3 kernel, 16 <- 8 channels


def _budgets(name: str, layers: list[SelectionLayer], argument: str | None = None,
             ratio: float | None = None) -> list[LayerBudget]:
    return layer_budgets(BUILTIN[name], SelectionInput(argument, ratio, "svd", layers))


def test_ratio_is_floor_of_dense_over_ratio(planted):
    layers = list(planted.values())
    budgets = _budgets("ratio", layers, ratio=3.0)
    assert [b.params for b in budgets] == [math.floor(layer.dense_params / 3.0) for layer in layers]


@pytest.mark.parametrize(("name", "argument"), [("vbmf", None), ("energy", "0.99")])
def test_spectral_selectors_recover_planted_ranks(planted, name, argument):
    budgets = _budgets(name, [planted["low_rank"], planted["conv"]], argument)
    assert [b.ranks for b in budgets] == [5, (3, 2)]
    assert [b.params for b in budgets] == [LOW_RANK_PARAMS, CONV_PARAMS]


def test_energy_budget_is_capped_at_dense(planted):
    # A flat spectrum needs most ranks for 99%, and SVD at those ranks costs more than the dense weight.
    (budget,) = _budgets("energy", [planted["flat"]], "0.99")
    assert budget.ranks > 30 and budget.params == planted["flat"].dense_params


def test_global_budget_is_kept_and_moves_parameters_off_fast_decaying_layers(planted):
    layers = list(planted.values())
    ratio = 4.0
    uniform = [math.floor(layer.dense_params / ratio) for layer in layers]
    budgets = _budgets("budget", layers, ratio=ratio)
    assert sum(b.params for b in budgets) <= sum(uniform)
    by_path = {layer.path: (b, u) for layer, b, u in zip(layers, budgets, uniform)}
    low, low_uniform = by_path["low_rank"]
    flat, flat_uniform = by_path["flat"]
    assert low.params < low_uniform and low.ranks == 5  # all its energy, for less than its share
    assert flat.params > flat_uniform
    assert by_path["conv"][0].params < by_path["conv"][1]


def test_global_budget_that_no_rank_meets_fails_in_one_line(planted):
    with pytest.raises(SelectionError, match=r"^rank selector 'budget' failed: ValueError: .*budget") as info:
        _budgets("budget", [planted["low_rank"]], ratio=1000.0)
    assert "\n" not in str(info.value)


def test_bad_answers_are_selection_errors(planted):
    layers = [planted["low_rank"]]

    def selector(answer):
        return RankSelector("odd", "", uses_ratio=False, takes_argument=False, budgets=lambda _: answer)

    for answer, message in (([], "gave 0 budgets for 1 layers"), ([0], "positive integers"),
                            ([12.5], "positive integers"), ([True], "positive integers")):
        with pytest.raises(SelectionError, match=message):
            layer_budgets(selector(answer), SelectionInput(None, None, "svd", layers))
    assert layer_budgets(selector([LayerBudget(7, (1, 2))]), SelectionInput(None, None, "svd", layers)) == [
        LayerBudget(7, (1, 2))]


def test_request_budget_overrides_ratio():
    request = harness.DecomposeRequest(backend="b", method="m", layer_path="l", kind="linear", ratio=4.0,
                                       dense_params=1000)
    assert request.max_params == 250
    assert harness.DecomposeRequest(**{**request.__dict__, "budget": 123}).max_params == 123


def test_specs_are_normalized_and_labelled():
    assert normalize_spec("energy", BUILTIN) == "energy:0.9"
    assert normalize_spec(" energy:0.5 ", BUILTIN) == "energy:0.5"
    assert normalize_spec("vbmf", BUILTIN) == "vbmf"
    known = "budget, energy, latency, latency-ratio, ratio, sensitivity, vbmf"
    for bad, message in (("nope", f"unknown rank selector 'nope' .known: {known}"),
                         ("energy:1.5", r"must be in \(0, 1\]"), ("energy:x", "not a number"),
                         ("energy:0", r"must be in \(0, 1\]"), ("vbmf:3", "takes no argument")):
        with pytest.raises(ValueError, match=message):
            normalize_spec(bad, BUILTIN)
    assert spec_label("energy:0.9") == "r-energy0.9"
    assert spec_label("odd:a/b*[c]") == "r-odda_b__c_"


def _total(budgets: list[LayerBudget]) -> int:
    return sum(b.params for b in budgets)


@pytest.mark.parametrize("name", ["ratio", "budget", "energy"])
def test_matched_selectors_spend_the_reference_total(planted, name):
    layers = list(planted.values())
    reference = _total(_budgets("vbmf", layers))
    budgets, total = matched_budgets(BUILTIN[name], BUILTIN["vbmf"], SelectionInput(None, None, "svd", layers), None)
    assert total == reference
    # Within the total, and short of it by less than one more rank step of the coarsest layer could buy.
    assert reference - 0.2 * reference < _total(budgets) <= reference
    if name == "ratio":  # the uniform rule at the ratio that gives vbmf's total
        ratio = sum(layer.dense_params for layer in layers) / reference
        assert [b.params for b in budgets] == [math.floor(layer.dense_params / ratio) for layer in layers]


def test_energy_at_a_total_finds_the_largest_common_share(planted):
    layers = list(planted.values())
    for share in ("0.5", "0.8", "0.95"):
        own = _budgets("energy", layers, argument=share)
        # Held to the total its own share gives, the search lands on ranks spending exactly that total...
        matched = layer_budgets(BUILTIN["energy"], SelectionInput(None, None, "svd", layers), _total(own))
        assert _total(matched) == _total(own)
        # ...and one parameter less forces a smaller share somewhere.
        fewer = layer_budgets(BUILTIN["energy"], SelectionInput(None, None, "svd", layers), _total(own) - 1)
        assert _total(fewer) < _total(own)
    # A total no rank-1 network meets cannot be matched: the check says so in one line.
    tiny = RankSelector("tiny", "one parameter per layer", uses_ratio=False, takes_argument=False,
                        budgets=lambda selection: [1] * len(selection.layers))
    with pytest.raises(SelectionError, match="spent .* over the 3 of 'tiny'"):
        matched_budgets(BUILTIN["energy"], tiny, SelectionInput(None, None, "svd", layers), None)


def test_matched_specs_are_checked_and_labelled():
    assert normalize_spec("ratio@vbmf", BUILTIN) == "ratio@vbmf"
    assert normalize_spec("energy@vbmf", BUILTIN) == "energy@vbmf"  # no default share: the match sets it
    assert normalize_spec("budget@energy", BUILTIN) == "budget@energy:0.9"
    for bad, message in (("vbmf@energy", "'vbmf' cannot be held to another selector's total"),
                         ("ratio@budget", "'budget' takes its total from --ratios"),
                         ("energy:0.8@vbmf", "takes no argument here"),
                         ("energy@energy:0.5", "matches a selector to itself"),
                         ("ratio@vbmf@energy", "match to one selector"),
                         ("ratio@nope", "unknown rank selector 'nope'")):
        with pytest.raises(ValueError, match=message):
            normalize_spec(bad, BUILTIN)
    assert spec_label("budget@energy:0.9") == "r-budget@energy0.9"


def test_plan_gives_ratio_free_selectors_one_cell_and_keeps_default_ids():
    config = RunConfig(backends=["native"], methods=["svd"], targets=["linear"], ratios=[2.0, 4.0], seeds=[0],
                       rank_selection=["ratio", "energy", "vbmf", "budget", "budget@vbmf"], dense_control=False)
    info = harness.BackendInfo(name="native", library="torch", library_version=None, methods={"linear": ("svd",)})
    validate_names(config, {"native": info}, {"lenet5": None}, {"mnist-embedded": None}, BUILTIN)
    cells = plan_cells(config, {"native": info}, {"lenet5@mnist-embedded": lenet5((1, 28, 28), 10)}, BUILTIN).cells
    prefix = "native/lenet5/mnist-embedded/svd/linear"
    assert [c.cell_id for c in cells] == [
        f"{prefix}/x2/s0", f"{prefix}/x4/s0", f"{prefix}/x1/s0/r-energy0.9", f"{prefix}/x1/s0/r-vbmf",
        f"{prefix}/x2/s0/r-budget", f"{prefix}/x4/s0/r-budget", f"{prefix}/x1/s0/r-budget@vbmf"]
    # A cell stored before selectors existed (no rank_selection key) keeps its id.
    old = {k: v for k, v in cells[0].to_dict().items() if k != "rank_selection"}
    assert Cell.from_dict(old).cell_id == f"{prefix}/x2/s0"


@pytest.fixture
def broken_selector(monkeypatch) -> str:
    """A plugin module, importable by name, whose selector always fails."""
    module = types.ModuleType("broken_selector_plugin")

    @harness.hookimpl
    def harness_register_rank_selectors(register):
        def fail(selection):
            raise RuntimeError("no spectrum today\nsecond line")
        register(RankSelector("broken", "always fails", uses_ratio=False, takes_argument=False, budgets=fail))

    module.harness_register_rank_selectors = harness_register_rank_selectors
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def test_run_sweeps_selectors_with_budgets_every_layer_keeps(tmp_path, fast_args, broken_selector):
    out = tmp_path / "run"
    code = main(["-p", "fake_backend", "-p", broken_selector, "run", "--backends", "fake", "--methods", "lowrank",
                 "--rank-selection", "ratio,energy:0.9,vbmf,budget,broken,budget@vbmf", "--targets", "linear",
                 "--executor", "inprocess", "--out", str(out), *fast_args])
    assert code == 1  # the broken selector's cell errored; the others ran
    results = load_results(out)
    cells = results.cells.set_index("cell_id")
    prefix = "fake/lenet5/mnist-embedded/lowrank/linear"
    assert sorted(cells.index) == sorted([f"{prefix}/x4/s0", f"{prefix}/x1/s0/r-energy0.9", f"{prefix}/x1/s0/r-vbmf",
                                          f"{prefix}/x4/s0/r-budget", f"{prefix}/x1/s0/r-broken",
                                          f"{prefix}/x1/s0/r-budget@vbmf"])
    broken = cells.loc[f"{prefix}/x1/s0/r-broken"]
    assert broken["status"] == "error" and "\n" not in broken["error"]
    assert broken["error"].startswith("SelectionError: rank selector 'broken' failed: RuntimeError: no spectrum")
    ok = cells[cells["status"] == "ok"]
    assert len(ok) == 5
    assert set(ok["rank_selection"]) == {"ratio", "energy:0.9", "vbmf", "budget", "budget@vbmf"}
    assert set(ok["rank_selector"]) == {"ratio", "energy", "vbmf", "budget"}
    # The matched cell spends what vbmf chose on the same weights, as the knapsack sees fit.
    matched, vbmf = cells.loc[f"{prefix}/x1/s0/r-budget@vbmf"], cells.loc[f"{prefix}/x1/s0/r-vbmf"]
    assert matched["matched_to"] == "vbmf" and matched["matched_total"] == vbmf["budget"]
    assert 0.8 * vbmf["budget"] < matched["budget"] <= vbmf["budget"]

    layers = results.layers[results.layers["cell_id"].isin(ok.index)].copy()
    layers["info"] = layers["info"].map(json.loads)
    assert (layers["params"] <= layers["max_params"]).all()
    assert (ok["params"] <= ok["budget"]).all() and ok["budget_ok"].all()
    assert (layers.groupby("cell_id")["max_params"].sum().reindex(ok.index) == ok["budget"]).all()
    model = lenet5((1, 28, 28), 10)
    shapes = {path: (model.get_submodule(path).in_features, model.get_submodule(path).out_features)
              for path in set(layers["layer"])}
    assert all(math.prod(shapes[p]) + shapes[p][1] == d for p, d in zip(layers["layer"], layers["params_dense"]))
    uniform = (layers["params_dense"] // 4)
    exact = 0
    for _, row in layers.iterrows():
        selection = row["rank_selection"]
        if selection == "ratio":
            assert row["max_params"] == row["params_dense"] // 4
            assert "selected_ranks" not in row["info"]
            continue
        in_features, out_features = shapes[row["layer"]]
        rank = row["info"]["selected_ranks"]
        reference = rank * (in_features + out_features) + out_features
        assert row["max_params"] == min(reference, row["params_dense"])
        if reference <= row["params_dense"]:
            # The fake backend is a truncated SVD, priced like the reference: it fits exactly the selected rank.
            assert row["info"]["rank"] == rank
            exact += 1
    assert exact >= 4  # vbmf and budget pick far below dense on a briefly trained lenet5
    budget_rows = layers["rank_selection"] == "budget"  # the knapsack at ratio 4 keeps the uniform rule's total
    assert layers.loc[budget_rows, "max_params"].sum() <= uniform[budget_rows].sum()


def test_unknown_or_bad_selection_is_one_line_usage_error(tmp_path, fast_args, capsys):
    known = "budget, energy, latency, latency-ratio, ratio, sensitivity, vbmf"
    for spec, message in (("nope", f"unknown rank selector 'nope' (known: {known})"),
                          ("energy:1.5", "rank selection 'energy:1.5': energy share 1.5 must be in (0, 1]")):
        code = main(["run", "--backends", "native", "--rank-selection", spec, "--out", str(tmp_path / spec),
                     *fast_args])
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1 and message in err


def test_list_shows_rank_selectors(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    section = out.split("rank selectors")[1].split("models:")[0]
    for line in ("ratio ", "energy:ARG", "vbmf ", "budget "):
        assert line in section
    assert "ignores --ratios" in section and "uses --ratios" in section
    assert "SEL@REF" in section and "equal total parameters" in section



# ----------------------------------------------------------------------------- measured sensitivity


def test_truncation_reconstructs_the_reference_structure(planted):
    low_rank, conv = planted["low_rank"].weight, planted["conv"].weight
    at = rank_selection.truncation(low_rank, "linear", "svd")
    assert torch.linalg.matrix_rank(at(3)) == 3
    # The planted rank 5 holds all but the 1e-3 noise; the full rank gives the weight back.
    assert (at(5) - low_rank).norm() / low_rank.norm() < 0.01
    assert torch.allclose(at(40), low_rank, atol=1e-10)
    tucker = rank_selection.truncation(conv, "conv2d", "tucker2")
    assert (tucker((3, 2)) - conv).norm() / conv.norm() < 0.01  # the planted Tucker ranks
    assert (tucker((1, 1)) - conv).norm() > (tucker((3, 1)) - conv).norm() > (tucker((3, 2)) - conv).norm()
    assert torch.allclose(tucker((16, 8)), conv, atol=1e-10)


def test_sensitivity_spends_the_budget_where_the_loss_says(planted):
    layers = [planted["low_rank"], planted["flat"]]
    weights = [layer.weight for layer in layers]
    # A loss that cares a hundred times more about the flat layer: the uniform split (and the energy knapsack,
    # which sees the low-rank layer's fast spectrum) gives it far too little.
    scale = [1.0, 100.0]
    calls = []

    def loss_with(index: int, weight: torch.Tensor) -> float:
        calls.append(index)
        return scale[index] * float((weight - weights[index]).pow(2).sum())

    selection = SelectionInput(None, 4.0, "svd", layers, loss_with=loss_with)
    chosen = layer_budgets(BUILTIN["sensitivity"], selection)
    uniform = _budgets("ratio", layers, ratio=4.0)
    assert _total(chosen) <= _total(uniform)
    assert chosen[1].params > uniform[1].params  # the flat layer gets more than its uniform share

    def loss(budgets):
        return sum(loss_with(i, rank_selection.truncation(w, "linear", "svd")(budgets[i].ranks or 1))
                   for i, w in enumerate(weights))

    uniform_ranks = [LayerBudget(b.params, max(r for r in range(1, 41) if r * 101 <= b.params)) for b in uniform]
    assert loss(chosen) < loss(uniform_ranks)
    assert 2 < len(calls) <= 2 * (40 + 1)  # probes per layer are capped by the candidate ranks


def test_sensitivity_without_data_is_a_one_line_error(planted):
    with pytest.raises(SelectionError, match="^rank selector 'sensitivity' failed: ValueError: sensitivity "
                                             "measures the training loss, and no training batch was given$"):
        _budgets("sensitivity", list(planted.values()), ratio=4.0)


def test_probe_ranks_are_capped_and_keep_both_ends():
    from harness.run.selectors import MAX_PROBES, _candidate_ranks, _probe_ranks

    wide = _layer("wide", torch.randn(300, 400, dtype=torch.float64), "linear")
    ranks = _probe_ranks(wide, wide.dense_params)
    top = _candidate_ranks(wide, wide.dense_params)[-1]  # the largest rank cheaper than dense: 171
    assert ranks[0] == 1 and ranks[-1] == top == 171 and len(ranks) <= MAX_PROBES + 1
    conv = _layer("conv", torch.randn(64, 32, 3, 3, dtype=torch.float64), "conv2d")
    candidates = _candidate_ranks(conv, conv.dense_params)
    pairs = _probe_ranks(conv, conv.dense_params)
    assert len(candidates) > 4 * MAX_PROBES and set(pairs) <= set(candidates)
    assert (1, 1) in pairs and max(pairs) == max(candidates) and len(pairs) <= 2 * MAX_PROBES


def test_loss_probe_swaps_one_weight_and_puts_it_back():
    from harness.run.data import DataSplits
    from harness.run.selection import _loss_probe
    from harness.run.training import evaluate

    torch.manual_seed(0)
    model = lenet5((1, 28, 28), 10)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    before = [module.weight.detach().clone() for _, module in layers]
    loss_with = _loss_probe(model, layers, DataSplits(x, y, x[:0], y[:0], num_classes=10))
    dense = evaluate(model, x, y)[0]
    assert loss_with(0, before[0]) == pytest.approx(dense)
    assert loss_with(1, torch.zeros_like(before[1])) != pytest.approx(dense)
    assert all(torch.equal(module.weight, weight) for (_, module), weight in zip(layers, before))


def test_run_with_sensitivity_and_its_match(tmp_path, fast_args):
    out = tmp_path / "run"
    code = main(["-p", "fake_backend", "run", "--backends", "fake", "--methods", "lowrank", "--targets", "linear",
                 "--rank-selection", "ratio,sensitivity,sensitivity@vbmf", "--executor", "inprocess",
                 "--out", str(out), *fast_args])
    assert code == 0
    cells = load_results(out).cells.set_index("rank_selection")
    assert (cells["status"] == "ok").all()
    assert cells.loc["sensitivity", "budget"] <= cells.loc["ratio", "budget"]
    assert cells.loc["sensitivity@vbmf", "budget"] <= cells.loc["sensitivity@vbmf", "matched_total"]
    assert cells.loc["sensitivity", "selection_s"] > cells.loc["ratio", "selection_s"]  # it measured something
