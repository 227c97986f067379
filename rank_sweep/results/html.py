"""report.html: a finished study in one self-contained file, to open in a browser without MLflow.

The answer first (the choice, its interval, why), then the pictures (embedded as base64 PNG), the tables
and each ladder's verdicts, and last where the result came from. It is built from the texts and plots the
study and ``rank-sweep-select`` already produce (``summary.md``, ``format_selection``, the PNGs of
:mod:`rank_sweep.analysis.plots`): nothing is recomputed here, so the page says what the console said::

    write_report("outputs/select/quickstart/report.html", "study quickstart", answer=selection_text,
                 images=[("rank curves", "rank_curves.png")], sections=[("summary", summary_md)],
                 provenance={"git.sha": "..."})

Text is shown as it was printed: runs of markdown table lines (``| a | b |``) become HTML tables, every
other line stays preformatted. Only the standard library is used.
"""

from __future__ import annotations

import base64
import html
import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["render", "write_report", "text_html", "split_answer", "folder_images", "PLOTS"]

# the plots a study or select draws, in the order the page shows them (caption by file name)
PLOTS = {"rank_curves.png": "Rank curves: mean score by rank, with the interval of each mean",
         "pareto.png": "Pareto front: score against trainable parameters",
         "learning_curves.png": "Learning curves: validation score per epoch of every trial"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1b1f24; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
.answer { background: #eef6ee; border-left: 5px solid #2e7d32; padding: .6em 1em; }
.answer pre { font-size: .95em; }
pre { white-space: pre-wrap; font-size: .85em; margin: .3em 0; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: .9em; color: #57606a; }
.missing { color: #9a6700; }
"""


def _is_table_line(line: str) -> bool:
    s = line.strip()
    return s.startswith("|") and s.endswith("|") and len(s) > 1


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip()[1:-1].split("|")]


def _table(lines: list[str]) -> str:
    rows = [_cells(x) for x in lines if not set(x.strip()) <= set("|-: ")]  # drop the |---| separator
    if not rows:
        return ""
    head, body = rows[0], rows[1:]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead>", "<tbody>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(out + ["</tbody>", "</table>"])


def text_html(text: str) -> str:
    """Printed text as HTML: each run of markdown table lines a ``<table>``, the rest ``<pre>`` blocks."""
    out = []
    for table, group in itertools.groupby(text.splitlines(), key=_is_table_line):
        lines = list(group)
        if table:
            out.append(_table(lines))
        elif "\n".join(lines).strip():
            out.append("<pre>" + html.escape("\n".join(lines).strip("\n")) + "</pre>")
    return "\n".join(x for x in out if x)


def split_answer(selection_text: str) -> tuple[str, str]:
    """``format_selection``'s text cut where its first paragraph (the choice, its score and interval, why,
    how sure) ends: (the answer, the runners-up and the Pareto front)."""
    head, _, rest = selection_text.strip("\n").partition("\n\n")
    return head, rest


def _image(caption: str, path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        return f'<p class="missing">{html.escape(caption)}: not drawn ({html.escape(path.name)} is missing)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def folder_images(folder: str | Path) -> list[tuple[str, Path]]:
    """The plots in ``folder`` as (caption, path): :data:`PLOTS` in their order, then each ladder's subspace
    similarity heatmap (``subspace_<targets>.png``)."""
    folder = Path(folder)
    images = [(caption, folder / name) for name, caption in PLOTS.items() if (folder / name).is_file()]
    return images + [(f"Subspace similarity of the A factors, ladder {p.stem.removeprefix('subspace_')}", p)
                     for p in sorted(folder.glob("subspace_*.png"))]


def render(title: str, answer: str, images: Sequence[tuple[str, str | Path]] = (),
           sections: Sequence[tuple[str, str]] = (), provenance: Mapping[str, object] | None = None,
           answer_note: str = "") -> str:
    """The page: ``answer`` (text) first, then each image (caption, PNG path; a missing one is named), each
    section (heading, printed text), and the provenance as a two-column table."""
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>The answer</h2>", '<div class="answer">', text_html(answer)]
    if answer_note:
        parts.append(f"<p>{html.escape(answer_note)}</p>")
    parts.append("</div>")
    if images:
        parts.append("<h2>Pictures</h2>")
        parts += [_image(caption, path) for caption, path in images]
    for heading, text in sections:
        if text and text.strip():
            parts += [f"<h2>{html.escape(heading)}</h2>", text_html(text)]
    if provenance:
        rows = "\n".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                         for k, v in provenance.items())
        parts += ["<h2>Provenance</h2>", "<table><thead><tr><th>what</th><th>value</th></tr></thead><tbody>",
                  rows, "</tbody></table>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")


def write_report(path: str | Path, title: str, answer: str, images: Sequence[tuple[str, str | Path]] = (),
                 sections: Sequence[tuple[str, str]] = (), provenance: Mapping[str, object] | None = None,
                 answer_note: str = "") -> Path:
    """Write :func:`render`'s page to ``path`` (its folder created) and return the path."""
    path = Path(path)
    os.makedirs(path.parent, exist_ok=True)
    path.write_text(render(title, answer, images, sections, provenance, answer_note), encoding="utf-8")
    return path
