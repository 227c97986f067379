"""report.html of a real (tiny-model) study, issue #29: the study writes it at its end into the parent run and the
output folder; rank-sweep-select writes its own from the finished study, with the study's summary and verdicts."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from rank_sweep.commands.select import choose
from rank_sweep.study.run import run_study
from tests.integration.test_study_answers import _cfg
from tests.unit.results.test_html import PNG_MAGIC, read_page


def test_the_study_and_select_each_write_a_self_contained_report(tiny_model_dir, toy_data_dir, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, "search.min_delta=0.5")
    study = run_study(cfg)
    printed = capsys.readouterr().out
    copy = tmp_path / "outputs/reports" / study.study_name / "report.html"
    assert f"report: {copy} (and the parent run's report.html)" in printed
    parent = study.user_attrs["mlflow_parent_run_id"]
    client = MlflowClient(cfg.tracking.resolved_uri())
    assert "report.html" in {a.path for a in client.list_artifacts(parent)}
    logged = client.download_artifacts(parent, "report.html", str(tmp_path / "dl"))
    assert open(logged).read() == copy.read_text()

    page = read_page(copy)
    assert page.headings[:3] == [f"rank_sweep study {study.study_name}", "The answer", "Pictures"]
    text = page.all_text
    chosen = next(line for line in text.splitlines() if line.startswith("chosen: "))
    assert "ladder Wq,Wv: " in text and text.index(chosen) < text.index("ladder Wq,Wv: ")
    # rank curves, Pareto front, learning curves and the ladder's subspace similarity
    assert len(page.images) == 4 and all(i.startswith(PNG_MAGIC) for i in page.images)
    assert "Subspace similarity of the A factors, ladder Wq_Wv" in text
    # the summary table, with the memory columns since trials measure memory (the toy's 64 dev examples are too
    # few for a held-out split, so no held-out column)
    assert ["targets", "r", "lr", "mean", "interval", "std", "n", "LoRA params", "trainable params", "peak memory MB",
            "adapter MB", "note"] in page.tables[2]
    prov = dict(tuple(row) for row in page.tables[-1][1:])
    assert prov["parent run"] == parent and "version.optuna" in prov and "git.sha" in prov
    assert any(k.startswith("data.") and len(v) == 64 for k, v in prov.items()), prov  # the data files' sha256

    choice = choose(cfg, {"output_dir": str(tmp_path / "select"), "tolerance": 1.0}, {})
    capsys.readouterr()
    page = read_page(tmp_path / "select/select" / study.study_name / "report.html")
    assert f"chosen: {choice.selection.chosen.label} " in page.all_text
    assert "ladder Wq,Wv: " in page.all_text  # the study's summary.md, read from its parent run
    assert len(page.images) == 3
    assert "select/report.html" in {a.path for a in client.list_artifacts(parent, "select")}
