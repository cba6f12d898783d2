"""The host holds backends to what they promise, and the conformance kit catches what it would not.

A backend over its budget gets its cell ``over_budget``, the run exits 1, and no summary,
finding, plot or terminal table ranks it; a backend far under its budget, or over it, fails
the kit. Planning gives a backend cells only for methods it declares, so ``unsupported`` is
left to layer features and library limits. ``bad_backends`` (tests/plugins) provides the
culprits: ``greedy`` (full rank whatever the budget) and ``stingy`` (always rank 1).
"""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
import torch
from torch import nn

from harness import DecomposeRequest, Unsupported
from harness.cli.main import main
from harness.config.settings import build_config
from harness.contract.backend import OverBudget, check_budget, count_params
from harness.plan.cells import not_planned_summary
from harness.plan.planner import plan_cells
from harness.results.store import load_results
from harness.run.host import load_host
from harness.run.names import validate_names

matplotlib.use("Agg")

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def over_budget_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("greedy") / "run"
    code = main(["-p", "bad_backends", "run", "--backends", "native,greedy", "--methods", "svd", "--targets", "linear",
                 "--models", "lenet5", "--ratios", "4", "--epochs", "1", "--baseline-epochs", "1",
                 "--no-dense-control", "--latency-passes", "1", "--executor", "inprocess", "--cache-dir", str(cache_dir),
                 "--out", str(out)])
    return code, out


def test_an_over_budget_cell_is_not_ok_and_the_run_exits_1(over_budget_run, capsys):
    code, out = over_budget_run
    assert code == 1
    cells = pd.read_csv(out / "cells.csv").set_index("backend")
    assert cells.loc["native", "status"] == "ok"
    assert cells.loc["greedy", "status"] == "over_budget"
    message = cells.loc["greedy", "error"]
    assert message.startswith("greedy/svd replaced 2 with ") and "over its budget of " in message
    params, budget = (int(n) for n in __import__("re").findall(r"with (\d+) parameters, over its budget of (\d+)",
                                                                  message)[0])
    assert params > budget
    layers = pd.read_csv(out / "layers.csv")
    assert layers.loc[layers["backend"] == "greedy", "params"].max() == params  # the offending layer is on record


def test_no_report_ranks_an_over_budget_cell(over_budget_run, capsys):
    from harness_html import render

    from harness import summary_table
    from harness.results import plots
    from harness.results.findings import all_findings

    _, out = over_budget_run
    results = load_results(out)
    assert set(results.comparable["backend"]) == {"native"}
    # report.md: the summary table has native only; greedy appears among the cells not ok, with its reason.
    report = (out / "report.md").read_text()
    summary, not_ok = report.split("## Decomposed networks")[1].split("## Cells not ok")
    assert "native" in summary and "greedy" not in summary
    assert "greedy" in not_ok and "over_budget" in not_ok and "over its budget" in not_ok
    # report.html: findings and the summary table never name greedy; the not-ok table does.
    page, _ = render(results, out / "plots-check")
    findings = page.split('id="findings"')[1].split('id="plots"')[0]
    assert "native" in findings and "greedy" not in findings
    tables = page.split('id="tables"')[1]
    assert "greedy" not in tables.split('id="summary"')[1].split("</table>")[0]
    assert "greedy" in tables.split("<h3>Cells not ok</h3>")[1]
    assert all("greedy" not in f.text for f in all_findings(results))
    assert "greedy" not in summary_table(results.cells).to_string()
    # The plots (Pareto fronts and speedups included) draw comparable cells only.
    for figure in (plots.accuracy_vs_compression(results.cells), plots.speedup_vs_compression(results.cells),
                   plots.epoch_curves(results.cells, results.epochs), plots.decomposition_time(results.cells)):
        texts = [t.get_text() for t in figure.findobj(matplotlib.text.Text)]
        assert not any("greedy" in t for t in texts)
    # The terminal summary, as `harness report` prints it.
    capsys.readouterr()
    assert main(["-p", "bad_backends", "report", str(out)]) == 1
    printed = capsys.readouterr().out
    table = printed.split("cells:")[0]
    assert "native" in table and "greedy" not in table
    assert "cells: 1 ok, 1 over_budget" in printed


def test_check_budget_and_pick_rank():
    layer = nn.Linear(10, 6)
    request = DecomposeRequest("b", "svd", "fc", "linear", ratio=2.0, dense_params=count_params(layer))
    assert request.max_params == 33
    assert check_budget(nn.Linear(2, 10), request) == 30
    with pytest.raises(OverBudget, match=r"b/svd replaced fc with 66 parameters, over its budget of 33 \(dense 66\)"):
        check_budget(layer, request)

    def params(rank: int) -> int:
        return rank * 16 + 6

    assert request.pick_rank(params, full=6) == 1  # 22 fits, 38 does not
    assert DecomposeRequest("b", "svd", "fc", "linear", ratio=1.5, dense_params=66).pick_rank(params, 6) == 2
    assert DecomposeRequest("b", "svd", "fc", "linear", rank="full").pick_rank(params, full=6) == 6
    assert DecomposeRequest("b", "svd", "fc", "linear", rank=9).pick_rank(params, full=6) == 6
    assert DecomposeRequest("b", "cp", "fc", "linear", rank=9).pick_rank(params, full=None) == 9
    # No full rank (CP): the budget search still finds the largest fitting rank.
    assert DecomposeRequest("b", "cp", "fc", "linear", ratio=1.0, dense_params=1000).pick_rank(params, None) == 62
    with pytest.raises(Unsupported, match="no finite full rank"):
        DecomposeRequest("b", "cp", "fc", "linear", rank="full").pick_rank(params, full=None)
    with pytest.raises(Unsupported, match="over the budget of 10"):
        DecomposeRequest("b", "svd", "fc", "linear", ratio=6.6, dense_params=66).pick_rank(params, 6)
    first, second = DecomposeRequest("b", "m", "x", "linear", seed=5), DecomposeRequest("b", "m", "y", "linear", seed=5)
    assert torch.equal(torch.rand(3, generator=first.generator()), torch.rand(3, generator=second.generator()))


def test_the_host_refuses_undeclared_methods_and_declared_gaps_before_the_backend_runs():
    host = load_host(extra_modules=["bad_backends"])
    linear = nn.Linear(8, 8)
    with pytest.raises(Unsupported, match="greedy declares no tt for linear layers"):
        host.decompose(linear, DecomposeRequest("greedy", "tt", "fc", "linear", ratio=2.0, dense_params=72))
    grouped = nn.Conv2d(4, 4, 3, groups=2)
    with pytest.raises(Unsupported, match="native cannot handle conv groups"):
        host.decompose(grouped, DecomposeRequest("native", "tucker2", "c", "conv2d", ratio=2.0, dense_params=76))


def _kit_file(pytester, backend: str) -> None:
    pytester.makepyfile(**{f"test_kit_{backend}": (
        "from harness.testing import BackendConformance\n\n\n"
        f"class TestKit(BackendConformance):\n    backend = {backend!r}\n    plugin_module = 'bad_backends'\n")})


def test_the_kit_fails_an_over_budget_backend(pytester):
    _kit_file(pytester, "greedy")
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-k", "budget")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 6, result.stdout.str()[-2000:]
    result.stdout.fnmatch_lines(["*params over the budget*", "*FAILED*test_budget_is_respected*linear-svd-2.0*"])


def test_the_kit_fails_a_backend_that_leaves_its_budget_unused(pytester):
    _kit_file(pytester, "stingy")
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-k", "budget")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 6 and outcomes.get("passed", 0) == 6, result.stdout.str()[-2000:]
    result.stdout.fnmatch_lines(["*rank 1 uses * budgeted parameters*", "*FAILED*test_budget_is_filled*"])


def test_the_kit_says_which_shapes_and_numbers_failed(pytester):
    _kit_file(pytester, "sloppy")
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-k", "bias_is_kept or conv_output_shape")
    assert result.parseoutcomes().get("failed", 0) >= 2, result.stdout.str()[-2000:]
    result.stdout.fnmatch_lines_random([
        "*svd on Conv2d (*) (stride2_pad1) gives output (*) for input (*), where the layer gives (*)*",
        "*svd on Linear (*) (bias=True): the response to a zero input differs from the layer's by up to *"])


def test_the_default_plan_has_no_undeclared_method_cells():
    """On the default `harness run --backends all`, every cell is runnable: a backend is planned only with the
    methods it declares, and what is left out is said in one line."""
    host = load_host()
    config = build_config({"backends": "all"})
    validate_names(config, host.backends, host.models, host.datasets, host.rank_selectors)
    from harness.run.models import lenet5

    plan = plan_cells(config, host.backends, {"lenet5@mnist-embedded": lenet5((1, 28, 28), 10)},
                      host.rank_selectors)
    assert plan.cells and not [c for c in plan.cells if c.unsupported]
    for cell in plan.cells:
        if cell.is_control:
            continue
        info = host.backends[cell.backend]
        kinds = {"conv": ["conv2d"], "linear": ["linear"], "all": ["conv2d", "linear"]}[cell.target]
        assert all(cell.method in info.methods_for(kind) for kind in kinds), cell.cell_id
    line = not_planned_summary(plan.not_planned)
    assert line.startswith(f"{len(plan.not_planned)} combinations not planned, the backend does not declare")
    assert "native: " in line and "svd" not in line.split("native: ")[1].split(" | ")[0]

