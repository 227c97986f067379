"""report.html (issue #29): the page parses, puts the answer first, turns printed markdown tables into tables,
embeds every plot as a base64 PNG that decodes, escapes what it shows; and rank-sweep-select writes one from a
hand-built MLflow study (no training). tests/integration/test_report_html.py checks the study's own page."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rank_sweep.commands.select import choose
from rank_sweep.results import html
from tests.unit.results.test_command import make_cfg, store  # noqa: F401  (the fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link"}


class Page(HTMLParser):
    """What a browser would see: the headings, the tables (rows of cells), the images, the text."""

    def __init__(self, text: str):
        super().__init__()
        self.headings: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[bytes] = []
        self.text: list[str] = []
        self._tag: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self._tag.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag == "img":
            src = dict(attrs)["src"]
            assert src.startswith("data:image/png;base64,"), src[:40]
            self.images.append(base64.b64decode(src.split(",", 1)[1], validate=True))

    def handle_endtag(self, tag):
        assert self._tag and self._tag[-1] == tag, (self._tag, tag)  # every element closed, in order
        self._tag.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._tag and self._tag[-1] in ("h1", "h2"):
            self.headings.append(data)
        elif self._tag and self._tag[-1] in ("td", "th"):
            self.tables[-1][-1].append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def read_page(path) -> Page:
    return Page(Path(path).read_text(encoding="utf-8"))


def png(path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")
    return path


SELECTION = """chosen: Wq r=2 (maximize, budget: none, tolerance 0.005)
  score 0.857 [0.8300, 0.8800] (interval of the mean), seed std 0 over 1 seed(s), 2 LoRA params
why: the cheapest within 0.005 of the best <Wq r=4>

runners-up:
| config | mean | interval |
|---|---|---|
| Wq r=4 | 0.86 | [0.8400, 0.8800] |"""


def test_the_page_parses_answer_first_tables_as_tables_and_images_embedded(tmp_path):
    answer, rest = html.split_answer(SELECTION)
    assert answer.startswith("chosen: Wq r=2") and rest.startswith("runners-up:")
    path = html.write_report(tmp_path / "sub/report.html", "study q", answer,
                             [("rank curves", png(tmp_path / "rank_curves.png")), ("gone", tmp_path / "no.png")],
                             [("Runners-up", rest), ("empty", "  ")], {"git.sha": "abc123"})
    page = read_page(path)
    assert page.headings == ["study q", "The answer", "Pictures", "Runners-up", "Provenance"]
    assert page.all_text.index("chosen: Wq r=2") < page.all_text.index("rank curves")
    assert "<Wq r=4>" in page.all_text and "<Wq r=4>" not in path.read_text()  # shown, escaped
    assert len(page.images) == 1 and page.images[0].startswith(PNG_MAGIC)
    assert "gone: not drawn (no.png is missing)" in page.all_text
    runners, prov = page.tables
    assert runners == [["config", "mean", "interval"], ["Wq r=4", "0.86", "[0.8400, 0.8800]"]]
    assert prov == [["what", "value"], ["git.sha", "abc123"]]


def test_folder_images_orders_the_plots_and_adds_each_ladders_subspace_map(tmp_path):
    for name in ("pareto.png", "subspace_Wq_Wv.png", "rank_curves.png", "other.png"):
        png(tmp_path / name)
    captions = [c for c, _ in html.folder_images(tmp_path)]
    assert captions[0].startswith("Rank curves") and captions[1].startswith("Pareto front")
    assert captions[2] == "Subspace similarity of the A factors, ladder Wq_Wv" and len(captions) == 3


def test_select_writes_a_report_that_names_the_choice_and_embeds_its_plots(store, tmp_path, capsys):  # noqa: F811
    cfg = make_cfg(store, tmp_path)
    choice = choose(cfg, {"source": "mlflow", "study_name": "quickstart", "tolerance": 0.005}, {})
    out = tmp_path / "outputs/select/quickstart"
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out.splitlines()
    page = read_page(out / "report.html")
    assert page.headings[:3] == ["rank_sweep study quickstart: the choice", "The answer", "Pictures"]
    assert "chosen: Wq r=2 " in page.all_text and choice.selection.chosen.label == "Wq r=2"
    assert len(page.images) == 3 and all(i.startswith(PNG_MAGIC) for i in page.images)
    assert "summary.md of parent run" in page.all_text  # the hand-built study logged none: said, not hidden
    prov = dict(tuple(row) for row in page.tables[-1][1:])
    assert prov["study"] == "quickstart" and prov["parent run"] == choice.study.parent_run_id


def test_select_report_false_writes_no_page(store, tmp_path, capsys):  # noqa: F811
    cfg = make_cfg(store, tmp_path)
    choose(cfg, {"source": "mlflow", "study_name": "quickstart", "report": False}, {})
    assert "report: " not in capsys.readouterr().out
    assert not (tmp_path / "outputs/select/quickstart/report.html").exists()


@pytest.mark.parametrize("bad", ["yes", 1])
def test_a_report_flag_that_is_not_a_boolean_is_refused(store, tmp_path, bad):  # noqa: F811
    from rank_sweep.errors import ConfigError

    with pytest.raises(ConfigError, match=r"select.report=.* is not valid: give true or false"):
        choose(make_cfg(store, tmp_path), {"source": "mlflow", "study_name": "quickstart", "report": bad}, {})
