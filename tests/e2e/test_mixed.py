"""Mixed methods per layer and ``--methods auto``: parsing, planning, the runner's per-layer records, bad input."""

from __future__ import annotations

import json

import pytest

from harness.contract.backend import BackendInfo
from harness.cli.main import main
from harness.config.settings import ConfigError, build_config
from harness.run.names import validate_names
from harness.config.mixing import Mix, check_labels
from harness.run.runner import pick_best
from harness.run.models import lenet5
from harness.plan.planner import layer_methods, plan_cells
from harness.results.store import load_results

# LeNet-5's targeted layers with the edges kept dense: one conv ("0.3") and two Linear ("2", "4").
CONV, FC1, FC2 = "0.3", "2", "4"

BACKENDS = {
    "wide": BackendInfo("wide", "lib", "1", {"linear": ("svd", "tt", "cp"), "conv2d": ("tucker2", "cp")},
                        init_per_method={"linear/cp": "scratch"}),
    "narrow": BackendInfo("narrow", "lib", "1", {"linear": ("svd",), "conv2d": ("cp",)}),
    "scratchy": BackendInfo("scratchy", "lib", "1", {"linear": ("cp",), "conv2d": ("cp",)}, init="scratch"),
}


def _plan(**values):
    config = build_config({"ratios": "4", "dense_control": False, **values})
    validate_names(config, BACKENDS, {"lenet5": None}, {"mnist-embedded": None})
    plan = plan_cells(config, BACKENDS, {"lenet5@mnist-embedded": lenet5((1, 28, 28), 10)})
    return config, {c.cell_id: c for c in plan.cells}, [*plan.notes, *plan.warnings,
                                                         *(r.reason for r in plan.not_planned)]


def test_mix_parsing_labels_and_precedence():
    mix = Mix.parse(" linear = svd , conv=tucker2 ")
    assert mix.spec == "conv=tucker2,linear=svd" and mix.label == "mix-tucker2+svd"
    # Both kind slots are always written, so mapping one kind is not confused with mapping the other.
    assert Mix.parse("conv=svd").label == "mix-svd+dense" and Mix.parse("linear=svd").label == "mix-dense+svd"
    assert Mix.parse("conv=cp,linear=svd,fc*=tt").label == "mix-cp+svd+fc_=tt"
    precedence = Mix.parse("linear=svd,conv=cp,*=tt,fc1=cp")
    assert precedence.method_for("fc2", "linear") == "tt"  # a path pattern beats the kind
    assert precedence.method_for("fc1", "linear") == "cp"  # the more literal pattern beats "*"
    assert Mix.parse("linear=svd").method_for("x", "conv2d") is None  # unmapped: stays dense
    with pytest.raises(ValueError, match="same label"):
        check_labels([Mix.parse("linear=svd,fc*=tt"), Mix.parse("linear=svd,fc?=tt")])


def test_pick_best_prefers_within_budget_then_lowest_error_then_declared_order():
    assert pick_best([("a", 0.3, True), ("b", 0.1, True)]) == "b"
    assert pick_best([("a", 0.2, True), ("b", 0.2, True)]) == "a"
    assert pick_best([("a", 0.3, True), ("b", 0.1, False)]) == "a"
    assert pick_best([("a", float("nan"), True), ("b", 0.9, True)]) == "b"


def test_planning_a_mix_gives_one_cell_per_backend_that_declares_its_methods():
    config, cells, notes = _plan(backends="wide,narrow", mix="conv=tucker2,linear=svd;conv=cp,linear=svd,4=cp")
    assert config.methods == []  # a mix alone runs only its own cells
    # narrow lacks tucker2 for conv and cp for Linear: not planned (never an unsupported cell), and said why.
    assert sorted(cells) == ["wide/lenet5/mnist-embedded/mix-cp+svd+4=cp/all/x4/s0",
                             "wide/lenet5/mnist-embedded/mix-tucker2+svd/all/x4/s0"]
    wide = cells["wide/lenet5/mnist-embedded/mix-tucker2+svd/all/x4/s0"]
    assert wide.unsupported is None and wide.init == "decompose" and wide.mix == "conv=tucker2,linear=svd"
    # The pattern gives layer 4 a scratch-init method on "wide": its init is mixed.
    patterned = cells["wide/lenet5/mnist-embedded/mix-cp+svd+4=cp/all/x4/s0"]
    assert patterned.init == "mixed" and patterned.unsupported is None
    assigned = layer_methods(lenet5((1, 28, 28), 10), "all", "", patterned.mix)
    assert [(path, method) for path, _, method in assigned] == [(CONV, "cp"), (FC1, "svd"), (FC2, "cp")]
    assert notes == ["narrow declares no tucker2 for Conv2d layers", "narrow declares no cp for Linear layers"]


def test_planning_mixes_on_given_targets_auto_and_all():
    _, cells, notes = _plan(backends="wide", targets="linear", mix=f"linear=svd,{FC2}=tt;conv=tucker2")
    assert list(cells) == [f"wide/lenet5/mnist-embedded/mix-dense+svd+{FC2}=tt/linear/x4/s0"]
    assert "mix conv=tucker2 maps no linear layer of lenet5; skipped" in notes
    _, cells, notes = _plan(backends="wide", targets="linear", mix="linear=svd,fc9=tt")
    assert list(cells) == ["wide/lenet5/mnist-embedded/mix-dense+svd+fc9=tt/linear/x4/s0"]  # by its kind rules
    assert "mix linear=svd,fc9=tt: 'fc9' matches no targeted layer of lenet5 (paths as in model.named_modules())" \
        in notes  # a typo is named, as a warning
    config, cells, notes = _plan(backends="wide,scratchy", methods="all,auto", targets="linear")
    assert config.methods == ["cp", "svd", "tt", "tucker2", "auto"]  # all: the declared methods, auto only by name
    assert cells["wide/lenet5/mnist-embedded/auto/linear/x4/s0"].init == "decompose"
    assert "scratchy/lenet5/mnist-embedded/auto/linear/x4/s0" not in cells
    assert "scratchy has no decompose-init method for Linear layers for auto" in notes


def test_mix_in_toml_table_form(tmp_path):
    config = build_config({"mix": [{"conv": "tucker2", "linear": "svd"}, "linear=tt"], "methods": "svd"})
    assert config.mix == ["conv=tucker2,linear=svd", "linear=tt"] and config.methods == ["svd"]
    with pytest.raises(ConfigError, match="is not KEY=METHOD"):
        build_config({"mix": ["conv=tucker2,linear"]})


def _run(tmp_path, fast_args, *extra):
    out = tmp_path / "run"
    code = main(["-p", "fake_backend", "run", "--targets", "all", "--executor", "inprocess", "--out", str(out),
                 *fast_args, *extra])
    return code, load_results(out)


def _layer_info(results, method):
    rows = results.layers[results.layers["method"] == method]
    return {row.layer: (json.loads(row.info), row) for row in rows.itertuples()}


def test_mixed_cells_run_each_layer_with_its_method(tmp_path, fast_args):
    code, results = _run(tmp_path, fast_args, "--backends", "fake,plain",
                         "--mix", "conv=lowrank2,linear=lowrank,4=lowrank2", "--mix", "conv=lowrank,linear=nope")
    assert code == 0
    status = dict(zip(results.cells["cell_id"], zip(results.cells["status"], results.cells["error"].fillna(""))))
    prefix = "lenet5/mnist-embedded"
    assert status == {
        f"fake/{prefix}/mix-lowrank2+lowrank+4=lowrank2/all/x4/s0": ("ok", ""),
        f"plain/{prefix}/mix-lowrank2+lowrank+4=lowrank2/all/x4/s0": ("ok", ""),
        f"fake/{prefix}/mix-lowrank+nope/all/x4/s0": ("ok", ""),
    }  # plain declares no "nope": that mix is not planned for it
    # The layers "nope" refuses stay dense with the reason; the conv is decomposed and the cell goes on.
    refused = results.layers[results.layers["method"] == "mix-lowrank+nope"].set_index("layer")
    assert json.loads(refused.loc[CONV, "info"])["method"] == "lowrank"
    for layer in (FC1, FC2):
        assert json.loads(refused.loc[layer, "info"]) == {"method": None, "left_dense": "this layer is not for me"}
        assert refused.loc[layer, "params"] == refused.loc[layer, "params_dense"]
    cell = results.cells.set_index("cell_id").loc[f"fake/{prefix}/mix-lowrank+nope/all/x4/s0"]
    assert (cell["layers_targeted"], cell["layers_decomposed"]) == (3, 1)
    assert results.meta["not_planned"] == [{"backend": "plain", "model": "lenet5", "method": "mix-lowrank+nope",
                                            "target": "all", "kind": "linear", "lacks": "nope"}]
    for backend in ("fake", "plain"):
        rows = results.layers[(results.layers["backend"] == backend)
                              & (results.layers["method"] == "mix-lowrank2+lowrank+4=lowrank2")]
        used = {row.layer: json.loads(row.info)["method"] for row in rows.itertuples()}
        assert used == {CONV: "lowrank2", FC1: "lowrank", FC2: "lowrank2"}
        assert rows["recon_error"].between(0, 1).all()


def test_auto_keeps_the_lower_error_method_per_layer_and_records_all(tmp_path, fast_args):
    code, results = _run(tmp_path, fast_args, "--backends", "plain", "--methods", "auto,lowrank2",
                         "--mix", "conv=auto,linear=lowrank2")
    assert code == 0 and (results.cells["status"] == "ok").all() and len(results.cells) == 3
    auto, single = _layer_info(results, "auto"), _layer_info(results, "lowrank2")
    assert sorted(auto) == [CONV, FC1, FC2]
    for layer, (info, row) in auto.items():
        # plain declares lowrank2 first, so the choice is by error, not by order.
        assert info["method"] == "lowrank" and info["auto"]["chosen"] == "lowrank"
        assert info["auto"]["candidates"] == ["lowrank2", "lowrank"]
        errors = info["auto"]["errors"]
        assert errors["lowrank"] < errors["lowrank2"]
        assert row.recon_error == pytest.approx(errors["lowrank"], rel=1e-4)
        # The recorded lowrank2 error is what the single-method cell measured on the same layer and budget.
        assert single[layer][1].recon_error == pytest.approx(errors["lowrank2"], rel=1e-4)
    cell = results.cells.set_index("method").loc["auto"]
    assert cell["decompose_s"] == pytest.approx(sum(row.decompose_s for _, row in auto.values()))
    # auto inside a mix: only the layers mapped to it choose.
    mixed = _layer_info(results, "mix-auto+lowrank2")
    assert mixed[CONV][0]["auto"]["chosen"] == "lowrank" and mixed[CONV][0]["method"] == "lowrank"
    assert [mixed[layer][0]["method"] for layer in (FC1, FC2)] == ["lowrank2", "lowrank2"]
    assert "auto" not in mixed[FC1][0]


@pytest.mark.parametrize(("mix", "message"), [
    ("conv=lowrank,linear=svdx", "mix 'conv=lowrank,linear=svdx': unknown method 'svdx'"),
    ("conv=lowrank,linear", "entry 'linear' is not KEY=METHOD"),
    ("conv=lowrank;conv=lowrank,conv=boom", "'conv' is mapped twice"),
])
def test_bad_mix_is_a_one_line_usage_error(tmp_path, fast_args, capsys, mix, message):
    code = main(["-p", "fake_backend", "run", "--backends", "fake", "--mix", mix, "--out", str(tmp_path / "run"),
                 *fast_args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_auto_skips_unsupported_candidates_and_is_unsupported_when_all_are():
    from types import SimpleNamespace

    import torch
    from torch import nn

    from harness.contract.backend import DecomposeRequest, Unsupported
    from harness.run.runner import _auto

    def decompose_layer(layer, request):
        if request.method != "copy":
            raise Unsupported(f"no {request.method} here")
        twin = nn.Linear(layer.in_features, layer.out_features)
        twin.load_state_dict(layer.state_dict())
        return twin

    ctx = SimpleNamespace(device=torch.device("cpu"), host=SimpleNamespace(decompose=decompose_layer))
    layer = nn.Linear(6, 4)
    request = DecomposeRequest("b", "auto", "fc", "linear", ratio=2.0, dense_params=28)
    replacement, seconds, _, record = _auto(ctx, layer, request, ("nah", "copy"))
    assert record["chosen"] == "copy" and record["candidates"] == ["copy"]
    assert record["skipped"] == {"nah": "no nah here"} and record["errors"]["copy"] < 1e-6  # float32 probe
    assert seconds >= 0 and torch.equal(replacement.weight, layer.weight)
    with pytest.raises(Unsupported, match=r"auto: no method of b decomposes fc \(nah: no nah here\)"):
        _auto(ctx, layer, request, ("nah",))


def test_label_kinds_inverts_the_kind_slots_of_a_label():
    from harness.config.mixing import label_kinds

    assert label_kinds(Mix.parse("conv=tucker2,linear=svd").label) == ("tucker2", "svd")
    assert label_kinds(Mix.parse("linear=tt,fc1=svd").label) == (None, "tt")
    assert label_kinds(Mix.parse("conv=cp").label) == ("cp", None)
