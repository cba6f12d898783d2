"""Built-in report plugin: one self-contained HTML page with the run's findings, plots and tables.

Writes ``report.html`` (inline CSS, plots embedded as base64 PNG, no scripts and no
external resources, so it can be mailed or archived as one file) and each plot as
``plots/<name>.png`` into the run directory, rebuilt from the store. The page holds the
run's metadata (command, versions, hardware, seeds, FLOP convention), the computed
findings of :mod:`harness.results.findings`, the plots of :mod:`harness.results.plots` (those with nothing to show for
the run, such as a study it did not hold, folded into one collapsed note) and the tables
of :mod:`harness.results.tables` (dense baselines, dense control, mean ± std over seeds per
configuration, budget deviations per configuration, cells not ok: failed cells one by
one, unsupported cells grouped in a collapsed ``<details>``). A key column holding one
value in every row is left out and its value given in a caption above the table; number cells
do not wrap, and wide tables scroll sideways. Every string from the data is escaped; a
plot that fails is replaced by a note, never taking the page down.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import re
import shlex
from pathlib import Path

import pandas as pd

import harness
from harness import (BUDGET_FILL, PLOTS, budget_deviations, constant_columns, control_table, dense_baselines,
                     failed_table, layer_ranks_table, same_in_every_row, summary_table, unsupported_summary,
                     unsupported_table, Finding, RunResults, all_findings, best_networks, faster_than_dense_sentence,
                     not_planned_summary, nothing_to_show, to_png)

SUMMARY = {
    "acc_decomposed": "acc after decomp %",
    "acc_final": "acc final %",
    "delta": "Δ vs dense pp",
    "compression": "compression ×",
    "speedup": "speedup ×",
    "decompose_s": "decomp s",
    "last_k_std": "last-k std pp",
}
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1140px; margin: 1em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
td.num { white-space: nowrap; font-variant-numeric: tabular-nums; }
p.caption { font-size: 0.85em; color: #555; margin: 0.3em 0 0; }
details { margin: 0.5em 0 1em; } details > summary { cursor: pointer; color: #444; }
.finding { border-left: 4px solid #4878a8; padding: 0.2em 0.8em; margin: 0.8em 0; background: #f7f9fc; }
.finding h3 { margin: 0.3em 0; font-size: 1.05em; } .scroll { overflow-x: auto; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; } .note { color: #a33; } .muted { color: #666; }
"""


NUMBER = re.compile(r"^[×+\-−]?\d|^–$")  # "97.10 ± 0.21 (n=3)", "×4", "-0.10", "83%", "0.88×", "–"


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):d}"
    return f"{value:.4g}"


def _cell(value: object) -> str:
    """One ``<td>``: numbers (and "mean ± std" text) in a cell that does not wrap."""
    missing = value is None or (isinstance(value, float) and value != value)  # noqa: PLR0124 - NaN test
    if missing:
        return '<td class="num">–</td>'
    if isinstance(value, bool):
        return f"<td>{value}</td>"
    if isinstance(value, numbers.Real):
        return f'<td class="num">{_number(float(value))}</td>'
    text = str(value)
    attribute = ' class="num"' if NUMBER.match(text) else ""
    return f"<td{attribute}>{html.escape(text, quote=False)}</td>"


def _table(frame: pd.DataFrame | None, table_id: str, drop_constant: bool = False,
           empty: str = "None in this run.") -> str:
    """A table in a sideways-scrolling box; with ``drop_constant`` one-valued key columns move to a caption above."""
    if frame is None or frame.empty:
        return f'<p class="muted" id="{table_id}">{html.escape(empty)}</p>'
    caption = ""
    if drop_constant:
        frame, constant = constant_columns(frame)
        caption = same_in_every_row(constant)
    head = "".join(f"<th>{html.escape(str(c), quote=False)}</th>" for c in frame.columns)
    rows = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>"
                      for row in frame.itertuples(index=False, name=None))
    caption = f'<p class="caption">{html.escape(caption, quote=False)}</p>' if caption else ""
    return (f'{caption}<div class="scroll"><table id="{html.escape(table_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{rows}\n</tbody></table></div>")


def with_export_commands(answer: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The answer rows with the ``harness export`` command that writes each network (when the run kept it), in a
    format the cell is known to export to, and the one that writes its INT8 graph where the run quantized it, in
    place of its cell id."""
    if answer.empty:
        return answer
    def command(cell: str, kept: bool, fmt: str | None, tried: bool, int8: bool) -> str:
        if not kept:
            return "not kept: run with --save-models to export it"
        if not isinstance(fmt, str) and tried:
            return "no export format is known to work for this network (see its ort_error in cells.csv)"
        line = f"harness export {shlex.quote(str(run_dir))} {shlex.quote(str(cell))} --format {fmt or 'pt'}"
        if not isinstance(fmt, str):
            return f"{line} (not checked: this run tried no export)"
        return f"{line}; INT8: {line} --quantize int8" if int8 and fmt == "onnx" else line

    int8_kept = answer["int8_kept"] if "int8_kept" in answer.columns else [False] * len(answer)
    commands = [command(*row) for row in zip(answer["cell_id"], answer["kept"], answer["export_format"],
                                             answer["export_tried"], int8_kept)]
    return answer.drop(columns=["cell_id", "kept", "export_format", "export_tried", "int8_kept"],
                       errors="ignore").assign(**{"take it home": commands})


def _has_accuracy(cells: pd.DataFrame) -> bool:
    return "acc_final" in cells.columns and pd.to_numeric(cells["acc_final"], errors="coerce").notna().any()


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def metadata_table(results: RunResults) -> pd.DataFrame:
    """The run's provenance as (item, value) rows."""
    meta = results.meta
    rows = [("run directory", str(results.run_dir)), ("command", meta.get("command")),
            ("started at", meta.get("started_at")), ("harness", meta.get("harness_version")),
            ("git commit", meta.get("git_commit") or "unknown"), ("python", meta.get("python")),
            ("torch", meta.get("torch")), ("platform", meta.get("platform"))]
    rows += [(f"backend {name}", f"{lib.get('library')} {lib.get('version')}")
             for name, lib in sorted(meta.get("libraries", {}).items())]
    rows += [("device", f"{meta.get('device', '?')} ({meta.get('device_name', '?')})"),
             ("threads per worker", meta.get("threads")), ("CPU count", meta.get("cpu_count")),
             ("seeds", meta.get("seeds")), ("FLOP convention", meta.get("flop_convention"))]
    counts = results.cells["status"].value_counts().to_dict() if not results.cells.empty else {}
    rows.append(("cells", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
    not_planned = not_planned_summary(meta.get("not_planned") or [])
    if not_planned:
        rows.append(("not planned", not_planned))
    return pd.DataFrame([(k, "?" if v is None else str(v)) for k, v in rows], columns=["item", "value"])


# A finding's table longer than this folds away, so the findings read as a list of answers first.
FOLD_ROWS = 12


def _finding_html(finding: Finding) -> str:
    table = _table(finding.table, f"finding-table-{finding.key}") if finding.table is not None else ""
    if table and len(finding.table) > FOLD_ROWS:
        table = f"<details><summary>the table behind it ({len(finding.table)} rows)</summary>{table}</details>"
    return (f'<article class="finding" id="finding-{html.escape(finding.key)}">'
            f"<h3>{html.escape(finding.title)}</h3><p>{html.escape(finding.text)}</p>{table}</article>")


def _plots_html(results: RunResults, folder: Path) -> tuple[str, list[str]]:
    """Each plot rendered once: written to ``folder`` and embedded; a failing plot becomes a note.

    A plot with nothing to show for this run (a study it did not hold, no ok cells) is folded into one
    collapsed ``<details>`` after the others, its reason in text, so it neither clutters the page nor vanishes.
    """
    parts, empty, written = [], [], []
    folder.mkdir(exist_ok=True)
    for name, (draw, caption) in PLOTS.items():
        try:
            figure = draw(results)
            png = b"" if nothing_to_show(figure) else to_png(figure)
        except Exception as exc:  # noqa: BLE001 - one broken plot must not take the report down
            parts.append(f'<figure id="plot-{name}"><p class="note">This plot could not be drawn: '
                         f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</p>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            continue
        path = folder / f"{name}.png"
        note = nothing_to_show(figure)
        if note:  # no placeholder image: the reason in words is all there is to see
            path.unlink(missing_ok=True)  # nor a stale one from an earlier report of this run
            empty.append(f'<figure id="plot-{name}"><p class="muted">Nothing to show: {html.escape(note)}</p>'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            continue
        path.write_bytes(png)
        written.append(str(path))
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure id="plot-{name}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if empty:
        parts.append(f'<details id="plots-nothing-to-show"><summary>{len(empty)} plot(s) with nothing to show '
                     "for this run</summary>" + "\n".join(empty) + "</details>")
    return "\n".join(parts), written


def _not_ok_html(cells: pd.DataFrame) -> str:
    """Failed cells one by one, then the unsupported ones grouped inside a collapsed ``<details>``."""
    failed = failed_table(cells) if not cells.empty else None
    gaps = unsupported_table(cells) if not cells.empty else None
    parts = [('<h3>Cells not ok</h3><p class="muted">Cells that failed, timed out, diverged or broke their '
              "parameter budget (over_budget: never compared or ranked), one by one, with the reason; below them the "
              "cells a backend does not support, grouped.</p>"),
             _table(failed, "not-ok", drop_constant=True,
                    empty="No cell failed, timed out, diverged or broke its budget.")]
    if gaps is not None and not gaps.empty:
        parts.append(f'<details id="not-ok-unsupported"><summary>{html.escape(unsupported_summary(gaps))}'
                     "</summary>" + _table(gaps, "not-ok-unsupported-table", drop_constant=True) + "</details>")
    return "\n".join(parts)


def _first_plot(figures: str, name: str = "accuracy_vs_compression") -> str:
    """The plot ``name`` again, beside the answer (the plots section keeps its own copy)."""
    start = figures.find(f'<figure id="plot-{name}"><img')
    if start < 0:
        return ""
    end = figures.find("</figure>", start) + len("</figure>")
    return figures[start:end].replace(f'id="plot-{name}"', 'id="answer-plot"', 1)


def render(results: RunResults, plots_dir: Path) -> tuple[str, list[str]]:
    """The whole page, and the plot files written on the way."""
    cells = results.cells
    baselines = dense_baselines(cells)
    figures, written = _plots_html(results, plots_dir)
    findings = "\n".join(_finding_html(f) for f in all_findings(results))
    tables = [
        ("dense-baselines", "Dense baselines", "Test accuracy of the trained dense network per seed.", baselines),
        ("dense-control", "Dense control",
         "The dense network fine-tuned for the same epochs with the same optimiser (mean ± std over seeds).",
         control_table(cells) if not cells.empty else None),
        ("summary", "Decomposed networks",
         "Mean ± sample std over seeds of the ok cells; the last column is the number of seeds.",
         summary_table(cells, SUMMARY) if not cells.empty else None),
        ("budget-deviations", "Budget deviations",
         (f"Configurations whose decomposed layers use less than {BUDGET_FILL:.0%} of the budget (a replacement over "
          "its budget makes its cell over_budget, listed under Cells not ok); seeds = how many seeds deviate, "
          "fill = params / budget."),
         budget_deviations(cells) if not cells.empty else None),
    ]
    table_html = "\n".join(f'<h3>{html.escape(title)}</h3><p class="muted">{html.escape(note)}</p>'
                           + _table(frame, table_id, drop_constant=True) for table_id, title, note, frame in tables)
    ranks = layer_ranks_table(results)
    if not ranks.empty:
        table_html += ("\n<h3>Per-layer plan: budgets, methods and ranks</h3><p class=\"muted\">For each "
                       "configuration and targeted layer: the parameter budget the rank selector gave it, the "
                       "parameters the backend used, the method and rank it chose (a / b when seeds differ), the "
                       "selector's own reference ranks, and why a layer was left dense."
                       f'</p><details id="layer-ranks"><summary>{len(ranks)} layers</summary>'
                       + _table(ranks, "layer-ranks-table", drop_constant=True) + "</details>")
    table_html += "\n" + _not_ok_html(cells)
    definitions = ("compression = dense params / params of the decomposed layers (bias included); speedup = dense "
                   "latency / decomposed latency of the whole network, both timed after all training, serially, in "
                   "alternating rounds (median); Δ vs dense = "
                   "final accuracy − dense baseline accuracy in percentage points; a ± b = mean ± sample std over "
                   "seeds, n = number of seeds.")
    answer = with_export_commands(best_networks(results.comparable), results.run_dir)
    if "after INT8" in answer.columns:  # --quantize int8
        definitions += (" After INT8 = the network quantized to INT8, in ONNX Runtime: its test accuracy (mean ± std "
                        "over seeds; none in a data-free run) · its speedup against the dense baseline quantized "
                        "alike.")
    answer_html = (_table(answer, "best-networks-table") if not answer.empty
                   else '<p class="muted">No ok decomposed network: nothing to recommend.</p>')
    slower = faster_than_dense_sentence(results.comparable)
    if slower:
        answer_html = f'<p class="verdict">{html.escape(slower)}</p>' + answer_html
    body = "\n".join([
        ("<header><h1>Tensor-decomposition comparison</h1>"
         f'<p class="muted">{html.escape(str(results.meta.get("command", "")))}</p></header>'),
        # The answer first: what to use at each compression, then the evidence; the metadata last, folded.
        _section("answer", "Best compressed networks", answer_html
                 + f'<p class="muted">{html.escape(definitions)} Means over seeds; speedups above their FLOP bound '
                   "are not trusted (see Measurement problems).</p>"
                 + _first_plot(figures, "accuracy_vs_compression" if _has_accuracy(results.comparable)
                               else "accuracy_vs_latency")),
        _section("findings", "Findings", findings or '<p class="muted">No findings.</p>'),
        _section("plots", "Plots", figures),
        _section("tables", "Tables", table_html),
        _section("metadata", "Run", '<details id="run-details"><summary>command, versions, device, seeds, '
                 "FLOP convention</summary>" + _table(metadata_table(results), "metadata-table") + "</details>"),
    ])
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>Compression report: {html.escape(results.run_dir.name)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
    return page, written


@harness.hookimpl
def harness_report(results: RunResults, run_dir: str) -> list[str]:
    out = Path(run_dir)
    page, written = render(results, out / "plots")
    (out / "report.html").write_text(page, encoding="utf-8")
    return [*written, str(out / "report.html")]
