"""The HTML and tables report plugins on a planted run: a self-contained page, PNG plots, tables, Parquet."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import harness_html
import harness_tables
import pandas as pd

import harness
import pytest
from matplotlib.image import imread
from test_aggregate_findings import planted_results

from harness.results import plots
from harness.results.findings import all_findings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TABLE_IDS = ("metadata-table", "dense-baselines", "dense-control", "summary", "budget-deviations", "not-ok")


class PageParser(HTMLParser):
    """Collects images, table ids, links, findings' text and metadata cells of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, str] = {}  # figure id -> img src
        self.tables: set[str] = set()
        self.links: list[str] = []
        self.findings: dict[str, str] = {}
        self._figure: str | None = None
        self._finding: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "figure":
            self._figure = attributes.get("id")
        elif tag == "img" and self._figure:
            self.images[self._figure] = attributes.get("src") or ""
        elif tag == "table" and attributes.get("id"):
            self.tables.add(attributes["id"])
        elif tag == "article" and "finding" in (attributes.get("class") or ""):
            self._finding = attributes.get("id")
            self.findings[self._finding] = ""
        for name in ("src", "href"):
            value = attributes.get(name)
            if value is not None and not value.startswith(("data:image/png;base64,", "#")):
                self.links.append(f"{tag} {name}={value}")
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.links.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        elif tag == "article":
            self._finding = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._finding:
            self.findings[self._finding] += data


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("html")
    results = planted_results(tmp_path)
    written = harness_html.harness_report(results=results, run_dir=str(tmp_path))
    parser = PageParser()
    parser.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    return tmp_path, written, parser


def test_every_plot_is_an_embedded_png_and_a_file(page):
    run_dir, written, parser = page
    assert str(run_dir / "report.html") in written
    results = planted_results(run_dir)
    empty = {name for name, (draw, _) in plots.PLOTS.items() if plots.nothing_to_show(draw(results))}
    assert empty and empty != set(plots.PLOTS)  # the planted run has both kinds
    for name in empty:  # said in words, with no placeholder image or file
        assert f"plot-{name}" not in parser.images and not (run_dir / "plots" / f"{name}.png").exists()
    for name in set(plots.PLOTS) - empty:
        src = parser.images[f"plot-{name}"]
        assert src.startswith("data:image/png;base64,"), name
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(PNG_MAGIC)
        image = imread(io.BytesIO(png), format="png")
        assert image.shape[1] <= 1100 and image.shape[0] > 100  # fits the page width
        assert (run_dir / "plots" / f"{name}.png").read_bytes() == png
        assert str(run_dir / "plots" / f"{name}.png") in written


def test_page_has_tables_findings_metadata_and_nothing_external(page):
    run_dir, _, parser = page
    assert set(TABLE_IDS) <= parser.tables
    assert len(parser.findings) >= 4
    with_numbers = [text for text in parser.findings.values() if re.search(r"\d+\.\d+", text)]
    assert len(with_numbers) >= 4
    assert "b 8 wins" in parser.findings["finding-best_accuracy"]
    text = "".join(parser.text)
    for expected in ("3.11.7", "2.9.0", "liba 1.2", "abc123", "Test CPU", "FlopCounterMode", "2026-01-01"):
        assert expected in text, expected
    assert parser.links == []  # no scripts, stylesheets, frames or external sources
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)


def test_strings_from_the_data_are_escaped(page):
    run_dir, _, _ = page
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in html
    assert "&lt;script&gt;alert('x')&lt;/script&gt; boom" in html
    assert "run &amp; echo" in html


def test_a_failing_plot_becomes_a_note(tmp_path, monkeypatch):
    def broken(results):
        raise RuntimeError("no <axes> today")

    monkeypatch.setitem(plots.PLOTS, "broken", (broken, "A broken plot"))
    harness_html.harness_report(results=planted_results(tmp_path), run_dir=str(tmp_path))
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "This plot could not be drawn: RuntimeError: no &lt;axes&gt; today" in html
    assert 'id="plot-accuracy_vs_compression"><img' in html


def test_thin_run_still_renders_every_plot(tmp_path):
    thin = planted_results(tmp_path, seeds=(0,), control=False, scratch=False, targets=("conv",))
    harness_html.harness_report(results=thin, run_dir=str(tmp_path))
    parser = PageParser()
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    parser.feed(text)
    # Every plot is there: as an image, or (a study the run did not hold) as its reason in words.
    for name in plots.PLOTS:
        assert f"plot-{name}" in parser.images or f'id="plot-{name}"><p class="muted">Nothing to show' in text
    nothing = planted_results(tmp_path / "none")
    nothing.cells["status"] = "unsupported"
    (tmp_path / "none").mkdir()
    harness_html.harness_report(results=nothing, run_dir=str(tmp_path / "none"))
    assert "No ok decomposed cells" in (tmp_path / "none" / "report.html").read_text(encoding="utf-8")
    for name, (draw, _) in plots.PLOTS.items():
        assert plots.to_png(draw(nothing)).startswith(PNG_MAGIC), name


def test_backend_colours_are_stable_and_control_is_black():
    colours = plots.backend_colours(["c", "dense", "a", "b"])
    assert colours["dense"] == "#000000"
    assert colours == plots.backend_colours(["b", "a", "c"]) | {"dense": "#000000"}
    assert len({colours[b] for b in "abc"}) == 3


def test_tables_report_shows_spread_control_and_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    results = planted_results(tmp_path)
    results.cells["budget_ok"] = pd.Series([True, None, "n/a"] * (len(results.cells) // 3 + 1),
                                           dtype=object)[: len(results.cells)].to_numpy()
    written = harness_tables.harness_report(results=results, run_dir=str(tmp_path))
    for name in ("cells", "epochs", "layers"):
        assert str(tmp_path / f"{name}.parquet") in written
        back = pd.read_parquet(tmp_path / f"{name}.parquet")
        assert len(back) == len(getattr(results, name))
    cells = pd.read_parquet(tmp_path / "cells.parquet")
    assert set(cells["budget_ok"].dropna()) == {"True", "n/a"}  # mixed types were written as text
    assert cells["acc_final"].sum() == pytest.approx(results.cells["acc_final"].sum())
    report = (tmp_path / "report.md").read_text()
    decomposed = report.split("## Decomposed networks")[1].split("##")[0]
    assert "97.10 ± 0.10" in decomposed and "| dense " not in decomposed
    control = report.split("## Dense control")[1].split("##")[0]
    assert "98.22 ± 0.02" in control
    lines: list[str] = []
    harness_tables.harness_terminal_summary(results=results, write=lines.append)
    assert any("dense control" in line for line in lines) and any("±" in line for line in lines)


def _with_gaps(results):
    """The planted run plus unsupported cells of one (backend, method, target, reason) at three ratios × seeds."""
    gap = results.cells[results.cells["status"] == "unsupported"].iloc[0]
    extra = [gap.to_dict() | {"ratio": r, "seed": s, "cell_id": f"gap/x{r:g}/s{s}"}
             for r in (2.0, 4.0, 8.0) for s in (0, 1, 2) if (r, s) != (8.0, 0)]
    other = gap.to_dict() | {"backend": "b", "error": "b offers no tt for Conv2d", "cell_id": "gap/b"}
    results.cells = pd.concat([results.cells, pd.DataFrame(extra + [other])], ignore_index=True)
    return results


def test_unsupported_cells_are_grouped_and_failures_listed_one_by_one(tmp_path):
    results = _with_gaps(planted_results(tmp_path))
    groups = harness.unsupported_table(results.cells)
    assert len(groups) == 2 and groups["cells"].sum() == 10
    a = groups[groups["backend"] == "a"].iloc[0]
    assert a["cells"] == 9 and a["ratios"] == "×2, ×4, ×8" and a["seeds"] == "0, 1, 2"
    assert a["reason"] == "tt & conv: not offered"
    assert harness.unsupported_summary(groups) == (
        "10 unsupported cells in 2 groups (declared gaps of the backends)")
    failed = harness.failed_table(results.cells)
    assert failed["status"].tolist() == ["error"]

    harness_html.harness_report(results=results, run_dir=str(tmp_path))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    section = page.split("<h3>Cells not ok</h3>")[1].split("</section>")[0]
    listed, collapsed = section.split("<details", 1)
    assert "&lt;script&gt;alert('x')&lt;/script&gt; boom" in listed  # the error stays listed, not collapsed
    assert "not offered" not in listed
    assert collapsed.startswith(' id="not-ok-unsupported"><summary>10 unsupported cells in 2 groups '
                                "(declared gaps of the backends)</summary>")
    assert " open" not in collapsed.split(">", 1)[0]  # collapsed by default
    assert collapsed.count("<tr>") == 3  # header + one row per group

    harness_tables.harness_report(results=results, run_dir=str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    not_ok = report.split("## Cells not ok")[1]
    assert "10 unsupported cells in 2 groups (declared gaps of the backends):" in not_ok
    assert not_ok.index("boom") < not_ok.index("10 unsupported cells")
    assert not_ok.count("not offered") == 1


def test_budget_deviations_one_row_per_configuration_with_seeds_and_fill(page):
    run_dir, _, _ = page
    deviations = harness.budget_deviations(planted_results().cells)
    # c fills 1/1.25 = 80 % of the budget: cp, tt × conv, linear × ×2, ×4, three seeds each
    assert len(deviations) == 8 and set(deviations["backend"]) == {"c"}
    assert set(deviations["seeds"]) == {3} and set(deviations["fill"]) == {"80%"}
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    budget = html.split('<table id="budget-deviations">')[1].split("</table>")[0]
    assert budget.count("<tr>") == 9 and "80%" in budget


def test_constant_columns_move_to_a_caption_and_numbers_do_not_wrap(page):
    run_dir, _, _ = page
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    summary = html.split("<h3>Decomposed networks</h3>")[1].split("</table>")[0]
    assert '<p class="caption">Same in every row: model m; dataset d; rank_selection ratio; seeds 3.</p>' in summary
    header = summary.split("</thead>")[0]
    assert "<th>model</th>" not in header and "<th>init</th>" in header  # init varies (decompose, scratch)
    assert '<td class="num">97.10 ± 0.10</td>' in summary
    assert "td.num { white-space: nowrap;" in html
    assert '<div class="scroll"><table id="summary">' in html


def test_finding_tables_use_one_format_per_kind_of_number(page):
    _, _, parser = page
    text = parser.findings
    assert "-2.23" in text["finding-target_payoff"] and "0.98×" in text["finding-target_payoff"]
    assert "72%" in text["finding-speedup_vs_flops"] and "1.44×" in text["finding-speedup_vs_flops"]
    assert "0.03" in text["finding-decomposition_time"]
    for finding in all_findings(planted_results()):  # formatted text or counts, no raw floats like 0.7594
        if finding.table is not None:
            for value in finding.table.to_numpy().ravel():
                assert isinstance(value, str | int) or float(value).is_integer(), (finding.key, value)


def test_long_finding_tables_fold_away_and_short_ones_stay_open():
    import pandas as pd
    from harness_html import FOLD_ROWS, _finding_html

    from harness.results.findings import Finding

    long = Finding("k", "T", "text", {}, pd.DataFrame({"a": range(FOLD_ROWS + 1)}))
    short = Finding("k", "T", "text", {}, pd.DataFrame({"a": range(FOLD_ROWS)}))
    assert f"<details><summary>the table behind it ({FOLD_ROWS + 1} rows)</summary>" in _finding_html(long)
    assert "<details>" not in _finding_html(short) and "<table" in _finding_html(short)


def test_rebuilding_the_page_from_the_same_results_gives_the_same_bytes(page, tmp_path):
    run_dir, _, _ = page
    first = (run_dir / "report.html").read_bytes()
    again = planted_results(tmp_path)
    harness_html.harness_report(results=again, run_dir=str(tmp_path))
    # Only the run directory's own path (and name, in the title) may differ between the two pages.
    def anonymous(page: bytes, where) -> bytes:
        return page.replace(str(where).encode(), b"RUN").replace(where.name.encode(), b"RUN")

    assert anonymous((tmp_path / "report.html").read_bytes(), tmp_path) == anonymous(first, run_dir)


def test_per_layer_budgets_and_ranks_are_shown_folded(page):
    from harness import layer_ranks_table

    run_dir, _, _ = page
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert '<details id="layer-ranks">' in html and '<table id="layer-ranks-table">' in html
    table = layer_ranks_table(planted_results(run_dir))
    # One row per configuration and layer, seeds pooled; the planted rank 3 and budget 500 come through.
    assert set(table["rank"]) == {"3"} and set(table["budget"]) == {500}
    assert table["seeds"].max() == 3


def test_epoch_panels_share_an_honest_y_range_and_keep_identical_curves_apart(tmp_path):
    results = planted_results(tmp_path)
    figure = plots.epoch_curves(results.comparable, results.epochs)
    axes = [axis for axis in figure.axes if axis.get_visible() and axis.lines]
    assert len(axes) > 1
    (low, high), = {axis.get_ylim() for axis in axes}  # one range for every panel
    assert high - low >= plots.EPOCH_MIN_SPAN
    for axis in axes:
        curves = [line for line in axis.lines if line.get_marker() not in (None, "None", "")]
        drawn = {(line.get_marker(), line.get_linestyle(), tuple(line.get_xdata())) for line in curves}
        assert len(drawn) == len(curves)  # no two curves on the same marker, line and x positions


def test_the_terminal_summary_is_a_screen_not_the_whole_table(tmp_path):
    results = planted_results(tmp_path)
    full = harness.summary_table(results.cells)
    assert len(full) > harness.TERMINAL_ROWS
    lines: list[str] = []
    harness_tables.harness_terminal_summary(results=results, write=lines.append)
    text = "\n".join(lines)
    assert f"top {harness.TERMINAL_ROWS} of {len(full)} configurations by acc final %" in text
    table = text.split("configurations by")[1].split("dense control")[0]
    rows = [line for line in table.splitlines() if " ± " in line]
    assert len(rows) == harness.TERMINAL_ROWS
    assert "97.10 ± 0.10" in table  # the most accurate configuration is among them


def test_the_page_opens_with_the_answer_and_folds_the_metadata_at_the_end(page):
    run_dir, _, parser = page
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    order = [text.index(f'<section id="{name}"') for name in ("answer", "findings", "plots", "tables", "metadata")]
    assert order == sorted(order)
    answer = text[order[0]:order[1]]
    # b is the planted most accurate backend; c the fastest (and within a point of dense only where it is)
    assert "most accurate at ≥ ×2 compression" in answer and "most accurate at ≥ ×4 compression" in answer
    assert "<td>b</td>" in answer and "fastest within 1 point of dense accuracy" in answer
    assert 'id="answer-plot"><img' in answer
    assert '<details id="run-details">' in text[order[4]:]
