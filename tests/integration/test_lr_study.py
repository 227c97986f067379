"""A study's learning rate end to end on the tiny model (issue #24): the bracket on each ladder's first rung, the
ladder at the lr it kept, the check across lr, the head-only reference on by default, and every row's lr in the
summary (console, summary.csv, decisions.json)."""

from __future__ import annotations

import csv
import io
import json

from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from rank_sweep.cli import CONF_DIR
from rank_sweep.config import build_config
from rank_sweep.results.readers import records_from_study
from rank_sweep.study.run import run_study
from tests.conftest import toy_overrides


def test_a_default_study_calibrates_its_lr_checks_its_verdict_and_shows_every_rows_lr(
        tiny_model_dir, toy_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        tree = compose("config", overrides=toy_overrides(tiny_model_dir, toy_data_dir, tmp_path) + [
            "search.ladder=[1,2]", "search.target_sets=[[Wq,Wv],[Wq]]", "search.extend=false",
            f"search.storage=sqlite:///{tmp_path}/optuna.db",
            # the defaults the toy studies pin off (conftest): this study runs them
            "search.lr_bracket=[0.3,1,3]", "search.head_reference=null"])
    cfg = build_config(tree)
    study = run_study(cfg)
    out = capsys.readouterr().out
    recs = records_from_study(study)
    base = cfg.trainer.lr
    first = sorted((r.lr for r in recs if r.r == 1 and r.targets == "Wq,Wv"), key=float)
    assert [r.targets for r in recs][0] == "head only"  # on by default for a classifier, and first
    assert first[0] == 0.3 * base and base in first and 3 * base in first  # the bracket on r=1
    assert "lr bracket on r=1: lr" in out and "-> climbs at lr" in out
    summary_lines = out[out.index("\nstudy "):]
    assert "| targets | r | lr | mean |" in summary_lines  # the markdown table shows each row's lr
    client = MlflowClient(cfg.tracking.resolved_uri())
    parent = study.user_attrs["mlflow_parent_run_id"]
    with open(client.download_artifacts(parent, "summary.csv", str(tmp_path / "a"))) as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    assert all(float(row["lr"]) > 0 for row in rows)
    with open(client.download_artifacts(parent, "decisions.json", str(tmp_path / "b"))) as f:
        lad = json.load(f)["ladders"]["Wq,Wv"]
    assert [m for m, *_ in lad["lr_bracket"]["tried"]][:3] == [0.3, 1.0, 3.0] and lad["lr_bracket"]["kept"] in (
        0.1, 0.3, 1.0, 3.0, 9.0)
    if lad["plateau_rank"] is not None:  # the verdict checked across lr, said in the summary
        assert lad["lr_verdict"] and "across lr: " in out
    # the second ladder climbs at the lr the first one's bracket chose (search.lr_shared): no bracket of its own
    kept = base * lad["lr_bracket"]["kept"]
    wq = json.load(open(client.download_artifacts(parent, "decisions.json", str(tmp_path / "c"))))["ladders"]["Wq"]
    assert wq["lr_from"] == "Wq,Wv" and "lr_bracket" not in wq
    n = cfg.search.seeds + cfg.search.noise_seeds  # its first rung, every seed, at that lr (then, here, probes)
    wq_first = [r for r in recs if r.targets == "Wq"][:n]
    assert all(abs(r.lr - kept) < 1e-9 * kept for r in wq_first) and len({r.seed for r in wq_first}) == n
    assert "the lr Wq,Wv's bracket chose (search.lr_shared" in out
