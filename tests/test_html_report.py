"""The HTML and tables report plugins on a planted run: a self-contained page, PNG plots, tables, Parquet."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import harness_html
import harness_tables
import pandas as pd
import pytest
from matplotlib.image import imread
from test_aggregate_findings import planted_results

from harness import plots

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
    for name in plots.PLOTS:
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
    parser.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert set(parser.images) == {f"plot-{name}" for name in plots.PLOTS}
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
