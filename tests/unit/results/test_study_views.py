"""Report views of the studies: rank selection at equal params, mixed methods, tensorized shapes, accuracy vs rank.

A small planted study run (no training): backends a and b with rank selections vbmf,
ratio@vbmf and budget@vbmf (equal total parameters), ratio and budget at ×2 for a; mixed
networks beside single-method ones; a TT sweep over d = 2, 3, 4; per-layer ranks given as
ints and lists. Accuracies are planted so each comparison has a known winner and spread.
"""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import harness_html
import pandas as pd
import pytest
from matplotlib.figure import Figure
from test_aggregate_findings import _cell, _control, planted_results

from harness.results import plots
from harness.results.findings import (
    MIXED,
    all_findings,
    categories,
    mixed_vs_single,
    rank_selection_at_equal_params,
    target_payoff,
)
from harness.results.store import KEY_COLUMNS, RunResults

STUDY_PLOTS = ("rank_selection_study", "accuracy_vs_rank", "tensorize_sweep")
NEW_FINDINGS = ("rank_selection_at_equal_params", "mixed_vs_single")
SEEDS = (0, 1, 2)


def _row(backend: str, method: str, target: str, ratio: float, seed: int, acc: float, *, spread: float = 0.1,
         selection: str = "ratio", tensorize: str = "", params: float = 500.0, speedup: float = 1.0,
         model_params: float = 9000.0) -> dict:
    """A cell whose seeds scatter ±``spread`` around ``acc`` (sample std = ``spread``)."""
    row = _cell("a", method, "conv", 2.0, seed)
    final = acc + spread * (seed - 1)
    row.update(backend=backend, method=method, target=target, ratio=ratio, rank_selection=selection,
               tensorize=tensorize, acc_final=final, acc_decomposed=final - 5, params=params,
               compression=1000 / params, model_params=model_params, speedup=speedup + 0.01 * (seed - 1))
    row["cell_id"] = "/".join(str(row[k]) for k in KEY_COLUMNS)
    return row


def _selection_rows() -> list[dict]:
    rows = []
    for seed in SEEDS:
        # a: budget@vbmf wins by 0.5 pp, far beyond the 0.1 std; b: vbmf ahead by 0.1 pp, within its 1.0 std.
        for selection, acc, params in (("vbmf", 97.0, 400), ("ratio@vbmf", 96.0, 400), ("budget@vbmf", 97.5, 390)):
            rows.append(_row("a", "cp", "conv", 1.0, seed, acc, selection=selection, params=params))
        for selection, acc in (("vbmf", 97.0), ("ratio@vbmf", 96.9)):
            rows.append(_row("b", "cp", "conv", 1.0, seed, acc, spread=1.0, selection=selection, params=400))
        # Ratio-based selectors at the same ratio spend the same total Σ dense/ratio.
        rows.append(_row("a", "cp", "conv", 2.0, seed, 95.0, selection="ratio"))
        rows.append(_row("a", "cp", "conv", 2.0, seed, 95.5, selection="budget"))
    return rows


def _mixed_rows() -> list[dict]:
    rows = []
    for seed in SEEDS:
        rows.append(_row("a", "mix-tucker2+svd", "all", 4.0, seed, 97.5, speedup=1.2, model_params=3000))
        rows.append(_row("a", "tucker2", "all", 4.0, seed, 96.0, speedup=1.0, model_params=3500))
        rows.append(_row("a", "cp", "all", 4.0, seed, 97.0, speedup=0.9, model_params=3600))
        rows.append(_row("a", "tucker2", "conv", 4.0, seed, 97.8, speedup=1.1, model_params=8000))
        rows.append(_row("a", "svd", "linear", 4.0, seed, 97.2, speedup=1.0, model_params=4000))
    return rows


def _sweep_rows() -> list[dict]:
    rows = []
    for seed in SEEDS:
        for d, acc, params in ((2, 97.0, 300), (3, 96.5, 200), (4, 95.0, 150)):
            for ratio in (4.0, 8.0):
                rows.append(_row("a", "tt", "linear", ratio, seed, acc - ratio / 4, tensorize=f"d{d}-pad",
                                 params=params * 4 / ratio))
        rows.append(_row("a", "svd", "linear", 8.0, seed, 97.0))  # not tensorized: runs once, not a sweep
        rows.append(_row("a", "tt", "linear", 4.0, seed, 90.0, tensorize="explicit"))
    return rows


def _layers(rows: list[dict]) -> pd.DataFrame:
    ranks = {"cp": 4, "tucker2": [3, 7], "tt": [1, 6, 5, 1], "svd": 2}
    out = []
    for row in rows:
        if row["backend"] == "dense":
            continue
        base = {"cell_id": row["cell_id"], "kind": "conv2d", "params_dense": 1000, "params": row["params"],
                "max_params": row["params"], "recon_error": 0.1, "decompose_s": 0.01, "stdout": None,
                **{k: row[k] for k in KEY_COLUMNS}}
        methods = row["method"].removeprefix("mix-").split("+")
        for layer, method in zip(("conv2", "fc1"), methods * 2 if len(methods) == 1 else methods):
            # ranks grow as the ratio falls, as a real sweep over ratios would give
            rank = ranks.get(method, 3)
            scale = int(8 / row["ratio"]) if row["ratio"] > 1 else 1
            rank = [r * scale for r in rank] if isinstance(rank, list) else rank * scale
            out.append(base | {"layer": layer, "info": json.dumps({"method": method, "rank": rank})})
    return pd.DataFrame(out)


def study_results(rows: list[dict] | None = None, control: bool = True) -> RunResults:
    rows = (_selection_rows() + _mixed_rows() + _sweep_rows()) if rows is None else rows
    rows = rows + ([_control(s) for s in SEEDS] if control else [])
    cells = pd.DataFrame(rows)
    epochs = pd.DataFrame([{"cell_id": r["cell_id"], "epoch": 1, "train_loss": 0.1, "test_loss": 0.2,
                            "test_acc": r["acc_final"], "epoch_s": 0.1, **{k: r[k] for k in KEY_COLUMNS}}
                           for r in rows])
    meta = {"command": "harness run --preset rank-selection", "seeds": list(SEEDS), "config": {}}
    return RunResults(Path("study"), meta, cells, epochs, _layers(rows))


@pytest.fixture(scope="module")
def study() -> RunResults:
    return study_results()


def _data_x(axis) -> set[float]:
    """x of the points drawn in data coordinates (not the dense baseline's horizontal lines)."""
    return {float(x) for line in axis.lines if line.get_transform() == axis.transData
            for x in line.get_xdata() if not math.isnan(float(x))}


def test_equal_params_finding_pairs_matched_cells_and_names_the_right_winner(study):
    finding = rank_selection_at_equal_params(study.cells)[0]
    numbers = finding.numbers
    # a and b at vbmf's total, a at Σ dense/×2 (ratio vs budget); unmatched cells pair with nothing else.
    assert numbers["groups"] == 3
    assert numbers["wins"] == {"budget@vbmf": 1, "vbmf": 1, "budget": 1}
    # label: model/dataset/backend/method/target/init/equal total (tensorize "" left out)
    winners = {label.split("/")[2] + "/" + label.split("/", 6)[-1]: w for label, w in numbers["winners"].items()}
    assert winners["a/vbmf's total"]["selection"] == "budget@vbmf"
    assert winners["a/vbmf's total"]["verdict"] == "beyond one std"
    assert winners["a/vbmf's total"]["lead"] == pytest.approx(0.5)
    assert winners["b/vbmf's total"]["selection"] == "vbmf"
    assert winners["b/vbmf's total"]["verdict"] == "within one std"  # 0.1 pp lead, 1.0 std
    assert winners["a/Σ dense/×2"]["selection"] == "budget"
    table = finding.table
    row = table[(table["backend"] == "a") & (table["equal total"] == "vbmf's total")].iloc[0]
    assert row["ratio@vbmf acc %"] == "96.00 ± 0.10 (n=3)" and row["vbmf params"] == "400"
    assert row["ratio acc %"] == "–"  # ratio at ×2 did not run at vbmf's total
    b = table[table["backend"] == "b"].iloc[0]
    assert b["budget@vbmf acc %"] == "–" and b["lead vs seed std"] == "within one std"
    assert "within one std in 1" in finding.text and "beyond" not in finding.text.split("Most accurate")[0]
    assert "differ by at most 2%" in finding.text  # 390 vs 400 params at vbmf's total
    assert all(isinstance(v, str) for v in table.to_numpy().ravel())


def test_equal_params_finding_is_absent_or_says_why_without_matched_pairs():
    assert rank_selection_at_equal_params(planted_results().cells) == []  # one selection: no study, no finding
    rows = [_row("a", "cp", "conv", 1.0, s, 97.0, selection=sel) for s in SEEDS for sel in ("vbmf", "energy:0.9")]
    finding = rank_selection_at_equal_params(pd.DataFrame(rows))[0]
    assert finding.numbers["groups"] == 0
    assert "vbmf" in finding.text and "energy:0.9" in finding.text and "chose their own total" in finding.text


def test_selections_that_built_the_same_network_count_as_one():
    # One decomposed layer: a matched total fixes its budget, so budget@vbmf is vbmf's network seed for seed.
    rows = [_row("a", "cp", "conv", 1.0, s, acc, selection=sel, params=params) for s in SEEDS
            for sel, acc, params in (("vbmf", 97.0, 400), ("budget@vbmf", 97.0, 400), ("ratio@vbmf", 96.0, 390))]
    finding = rank_selection_at_equal_params(pd.DataFrame(rows))[0]
    assert finding.numbers["wins"] == {"budget@vbmf = vbmf": 1} and finding.numbers["identical"] == 1
    assert "joined by '=' and count as one" in finding.text
    assert finding.table.iloc[0]["best"] == "budget@vbmf = vbmf"


def test_mixed_cells_are_their_own_category_and_are_compared_with_single_methods(study):
    cells = pd.DataFrame(_mixed_rows())
    assert set(categories(cells)) == {"all", "conv", "linear", MIXED}
    auto = cells.assign(method="auto", target="conv")
    assert set(categories(auto)) == {MIXED}
    payoff = target_payoff(cells)[0]
    assert set(payoff.numbers["delta"]) == {"all", "conv", "linear", MIXED}
    assert "mixed = a method chosen per layer" in payoff.text

    finding = mixed_vs_single(cells)[0]
    assert finding.numbers["comparisons"] == 1 and finding.numbers["more"] == 1
    assert finding.numbers["more_beyond"] == 1 and finding.numbers["faster"] == 1
    row = finding.table.iloc[0]
    assert row["best single method"] == "cp"  # 97.0 beats tucker2's 96.0 on target all
    assert row["mix acc %"] == "97.50 ± 0.10 (n=3)" and row["single acc %"] == "97.00 ± 0.10 (n=3)"
    assert row["conv only acc %"] == "97.80 ± 0.10 (n=3)" and row["linear only acc %"] == "97.20 ± 0.10 (n=3)"
    assert row["mix whole-model ×"] == "3.33"  # 10000 / 3000
    assert finding.numbers["model_compression"]["mix"] == pytest.approx(10 / 3)
    assert mixed_vs_single(planted_results().cells) == []  # no mixed networks: no finding

    figure = plots.target_comparison(cells)
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "mixed (a method per layer)" in labels and {"all", "conv", "linear"} <= set(labels)
    assert "vs mixed" in figure._suptitle.get_text()


def test_tensorize_sweep_draws_every_d_and_is_absent_with_one(study):
    figure = plots.tensorize_sweep(study.cells)
    assert isinstance(figure, Figure) and plots.nothing_to_show(figure) is None
    axes = [a for a in figure.axes if a.get_visible() and a.has_data()]
    assert len(axes) == 3  # accuracy, params, speedup for the one target
    for axis in axes:
        assert list(axis.get_xticks()) == [2, 3, 4]  # explicit shapes (no single d) are left out
    assert _data_x(axes[0]) == {2.0, 3.0, 4.0}
    one_d = study.cells[study.cells["tensorize"].isin(["", "d3-pad"])]
    assert plots.nothing_to_show(plots.tensorize_sweep(one_d)) is not None


def test_accuracy_vs_rank_takes_the_largest_entry_of_list_ranks(study):
    assert plots._rank_scalar([1, 6, 5, 1]) == 6 and plots._rank_scalar([[2, 3], [5]]) == 5
    assert plots._rank_scalar(4) == 4 and math.isnan(plots._rank_scalar("full"))
    assert math.isnan(plots._rank_scalar(True)) and math.isnan(plots._rank_scalar(None))
    results = study_results(_mixed_rows())
    first = results.layers.iloc[0].to_dict()
    odd = pd.DataFrame([first | {"layer": "odd", "info": "{not json"},
                        first | {"layer": "odd2", "info": json.dumps({"rank": "full"})}])
    figure = plots.accuracy_vs_rank(results.cells, pd.concat([results.layers, odd], ignore_index=True))
    assert plots.nothing_to_show(figure) is None
    titles = {a.get_title(): a for a in figure.axes if a.get_visible()}
    # unreadable infos (layers odd, odd2) are skipped; panels keep targets and mixed cells apart
    assert {t.split(" in ")[0] for t in titles} == {"layer conv2", "layer fc1"}
    conv2 = [axis for title, axis in titles.items() if title.startswith("layer conv2 in ")]
    assert any(title == "layer conv2 in mixed cells" for title in titles)
    # at ratio 4 (scale 2): tucker2 [3, 7] -> 14, cp 4 -> 8, svd 2 -> 4; the mix's conv layer is its tucker2
    assert set().union(*(_data_x(axis) for axis in conv2)) == {14.0, 8.0, 4.0}
    assert "largest entry" in conv2[0].get_xlabel()


def test_rank_selection_study_panels_only_where_selections_differ(study):
    figure = plots.rank_selection_study(study.cells)
    assert plots.nothing_to_show(figure) is None
    titles = [a.get_title() for a in figure.axes if a.get_visible()]
    assert titles == ["cp / conv: final accuracy", "cp / conv: measured speedup"]
    labels = {t.get_text() for t in figure.legends[0].get_texts()}
    assert {"vbmf", "ratio@vbmf", "budget@vbmf", "ratio", "budget"} <= labels


@pytest.mark.parametrize("kind", ["only control", "no cells", "one selection"])
def test_new_plots_return_a_figure_on_runs_without_the_study(kind):
    if kind == "only control":
        results = study_results([], control=True)
    elif kind == "no cells":
        results = study_results([], control=False)
        results.cells = pd.DataFrame(columns=["cell_id", "status", *KEY_COLUMNS])
        results.layers = pd.DataFrame()
    else:
        results = planted_results()
    for name in STUDY_PLOTS:
        figure = plots.PLOTS[name][0](results)
        assert isinstance(figure, Figure), name
        if kind != "one selection" or name != "accuracy_vs_rank":  # the planted run has ranks, no other study
            assert plots.nothing_to_show(figure), name
    keys = {f.key for f in all_findings(results)}
    assert not keys & set(NEW_FINDINGS) and not any(k.startswith("failed") for k in keys)


class _Figures(HTMLParser):
    """Figure ids of a page, and which of them sit inside the folded "nothing to show" box."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[str] = []
        self.folded: list[str] = []
        self._fold = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "details" and attributes.get("id") == "plots-nothing-to-show":
            self._fold = True
        elif tag == "figure":
            (self.folded if self._fold else self.figures).append(attributes.get("id") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "details":
            self._fold = False


def test_html_report_shows_study_views_and_folds_what_a_run_lacks(study, tmp_path):
    (tmp_path / "study").mkdir()
    harness_html.harness_report(results=study, run_dir=str(tmp_path / "study"))
    page = (tmp_path / "study" / "report.html").read_text(encoding="utf-8")
    parser = _Figures()
    parser.feed(page)
    assert {f"plot-{name}" for name in STUDY_PLOTS} <= set(parser.figures)
    for key in NEW_FINDINGS:
        assert f'id="finding-{key}"' in page
    assert "Rank selections at equal total parameters" in page and "budget@vbmf" in page

    # A run of none of the studies: the study plots are folded away with their reason, findings are not there.
    thin = planted_results(tmp_path, seeds=(0,), control=False, scratch=False, targets=("conv",))
    harness_html.harness_report(results=thin, run_dir=str(tmp_path))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    parser = _Figures()
    parser.feed(page)
    assert {"plot-rank_selection_study", "plot-tensorize_sweep"} <= set(parser.folded)
    assert "plot-accuracy_vs_compression" in parser.figures
    assert "Nothing to show: This run has only the rank selection &#x27;ratio&#x27;" in page
    assert "finding-rank_selection_at_equal_params" not in page and "finding-mixed_vs_single" not in page
