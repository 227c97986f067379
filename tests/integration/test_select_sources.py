"""rank-sweep-select on a real study of the tiny model: reading the study from its Optuna storage and
from MLflow gives the same choice, front, report and preset, and the chosen trial's adapter (the study
ran with ``save_adapter=true``) is copied next to the preset, from the output folder or from MLflow.
The not-kept case on a ``save_adapter=false`` layout is in tests/unit/test_choose.py."""

from __future__ import annotations

import filecmp
import json
import os
import shutil

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from rank_sweep.cli import CONF_DIR
from rank_sweep.commands.select import adapter_dir, choose, read_study
from rank_sweep.config import build_config
from tests.conftest import toy_overrides

NAME = "tiny_bert-toy-ladder"


def make_cfg(tiny_model_dir, toy_data_dir, tmp, *extra):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        tree = compose("config", overrides=toy_overrides(tiny_model_dir, toy_data_dir, tmp) + [
            "search.ladder=[1,2]", "search.target_sets=[[Wq,Wv]]", "search.extend=false",
            f"search.storage=sqlite:///{tmp}/optuna.db", "save_adapter=true", *extra])
    return build_config(tree)


@pytest.fixture(scope="module")
def study(tiny_model_dir, toy_data_dir, tmp_path_factory):
    """A two-rung ladder (r=1, r=2 on Wq,Wv) that kept its adapters; MLflow artifacts stay in tmp."""
    from rank_sweep.study.run import run_study

    tmp = tmp_path_factory.mktemp("select_study")
    cfg = make_cfg(tiny_model_dir, toy_data_dir, tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the experiment's artifact root (./mlruns) is created under tmp
        run_study(cfg)
    return {"cfg": cfg, "tmp": tmp}


def _choose(cfg, source, out, capsys):
    choice = choose(cfg, {"source": source, "output_dir": str(out), "tolerance": 0.005}, {})
    printed = capsys.readouterr().out
    assert printed.strip() == choice.report.strip()
    return choice, printed


def _files(folder) -> list[str]:
    return sorted(p for p in os.listdir(folder))


def test_study_and_mlflow_sources_choose_the_same(study, capsys, tmp_path):
    cfg = study["cfg"]
    a, printed_a = _choose(cfg, "study", tmp_path / "a", capsys)
    b, printed_b = _choose(cfg, "mlflow", tmp_path / "b", capsys)
    assert printed_a.startswith(f"study {NAME}: 2 trials read from study storage sqlite:///")
    assert printed_b.startswith(f"study {NAME}: 2 trials read from MLflow sqlite:///")

    # the records themselves agree, trial by trial
    ra, rb = a.study.records, b.study.records
    assert [(r.number, r.targets, r.r, r.seed, r.state, r.run_id) for r in ra] == \
           [(r.number, r.targets, r.r, r.seed, r.state, r.run_id) for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert (x.score, x.lora_params, x.trainable_params, x.not_learning) == \
               (y.score, y.lora_params, y.trainable_params, y.not_learning)
        assert x.train_seconds == pytest.approx(y.train_seconds) and x.lr == pytest.approx(y.lr)
        assert x.intermediate == pytest.approx(y.intermediate)
    assert a.study.parent_run_id == b.study.parent_run_id and a.study.direction == b.study.direction

    # the same choice, reasons, runners-up and front; the same preset; the printed report differs only in
    # its first line (the store) and the output folder
    assert (a.selection.chosen, a.trial) == (b.selection.chosen, b.trial)
    assert a.selection.pareto == b.selection.pareto and len(a.selection.pareto) >= 1
    assert a.selection.runners_up == b.selection.runners_up and a.selection.reason == b.selection.reason
    body = [p.split("\n", 1)[1].replace(str(out), "OUT") for p, out in ((printed_a, tmp_path / "a"),
                                                                        (printed_b, tmp_path / "b"))]
    assert body[0] == body[1]
    assert open(a.preset).read() == open(b.preset).read()
    assert f"chosen: {a.selection.chosen.label} " in printed_a
    for choice in (a, b):
        assert [os.path.basename(p) for p in choice.plots] == ["rank_curves.png", "pareto.png", "learning_curves.png"]
        assert all(os.path.getsize(p) > 0 for p in choice.plots)

    # the adapter of the chosen trial, copied from <output_dir>/adapters/<run id>/adapter by both
    kept = adapter_dir(cfg.output_dir, a.trial.run_id)
    assert a.adapter == os.path.join(a.output_dir, "adapter") and b.adapter == os.path.join(b.output_dir, "adapter")
    for choice, printed in ((a, printed_a), (b, printed_b)):
        assert not filecmp.dircmp(kept, choice.adapter).diff_files and _files(kept) == _files(choice.adapter)
        assert f"adapter of trial {a.trial.number}: {choice.adapter} (copied from {kept})" in printed
    assert json.load(open(os.path.join(a.adapter, "adapter_config.json")))["r"] == a.trial.r


def test_adapter_comes_from_mlflow_when_the_output_folder_is_not_here(study, capsys, tmp_path,
                                                                      tiny_model_dir, toy_data_dir):
    # a user with only the MLflow store (and its artifacts): this machine's output_dir has no adapters
    cfg = make_cfg(tiny_model_dir, toy_data_dir, study["tmp"], f"output_dir={tmp_path}/elsewhere")
    choice, printed = _choose(cfg, "mlflow", tmp_path / "sel", capsys)
    kept = adapter_dir(study["cfg"].output_dir, choice.trial.run_id)
    assert choice.adapter and _files(choice.adapter) == _files(kept)
    assert not filecmp.dircmp(kept, choice.adapter).diff_files
    assert (f"adapter of trial {choice.trial.number}: {choice.adapter} "
            f"(from MLflow run {choice.trial.run_id}, artifact adapter/)") in printed


def test_an_adapter_saved_but_not_readable_here_says_how_to_get_it(study, capsys, tmp_path,
                                                                   tiny_model_dir, toy_data_dir):
    # the store was copied without its artifacts: the run logged an export, the files are elsewhere
    cfg = make_cfg(tiny_model_dir, toy_data_dir, study["tmp"], f"output_dir={tmp_path}/elsewhere")
    client = MlflowClient(cfg.tracking.resolved_uri())
    moved = []
    (tmp_path / "hidden").mkdir()
    for rec in read_study(cfg, "mlflow").records:
        folder = os.path.join(client.get_run(rec.run_id).info.artifact_uri.removeprefix("file://"), "adapter")
        moved.append((folder, tmp_path / "hidden" / rec.run_id))
        shutil.move(folder, moved[-1][1])
    try:
        choice, printed = _choose(cfg, "auto", tmp_path / "sel", capsys)  # auto: the storage has the study
    finally:
        for folder, hidden in moved:
            shutil.move(hidden, folder)
    out = tmp_path / "sel" / "select" / NAME
    assert printed.startswith(f"study {NAME}: 2 trials read from study storage ")
    assert choice.adapter is None and not (out / "adapter").exists()
    line = printed.strip().splitlines()[-1]
    assert line.startswith(f"adapter: trial {choice.trial.number} saved an adapter, but neither ")
    assert line.endswith(f"to get it: rank-sweep-trial --config-dir {out} experiment=selected_{NAME} "
                         f"save_adapter=true")
