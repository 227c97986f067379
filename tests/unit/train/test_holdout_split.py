"""rank_sweep.train.holdout: where the held-out split comes from, that it is disjoint from what decides, and the
same on every call; its config keys and their one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pytest

from rank_sweep.config import TaskConfig
from rank_sweep.errors import ConfigError
from rank_sweep.train import holdout
from rank_sweep.train.data import data_digest, load_splits
from tests.unit.train.test_data import task_from_yaml


def _needs_glue() -> None:
    if not os.environ.get("GLUE_DIR"):
        pytest.skip("GLUE_DIR is not set")


def test_a_subsampled_glue_task_holds_out_unused_training_rows_disjoint_from_the_subsample(tmp_path):
    _needs_glue()
    cache_dir = str(tmp_path)
    task = task_from_yaml("sst2", max_train_samples=500, holdout_size=300)
    a, b = load_splits(task, cache_dir=cache_dir), load_splits(task, cache_dir=cache_dir)
    info = a.holdout_info
    assert info.source == "train_unused" and info.file.endswith(os.path.join("SST-2", "train.tsv"))
    assert a["holdout"].num_rows == len(info.rows) == 300
    assert a["validation"].num_rows == 872  # the decision split keeps every dev example
    full = load_splits(task_from_yaml("sst2", holdout=False), cache_dir=cache_dir)["train"]
    perm = holdout.permutation(full.num_rows)
    # the training subsample is the head of the permutation (as before), the held-out rows its next 300
    assert a["train"]["sentence"] == full.select(perm[:500])["sentence"]
    assert list(info.rows) == perm[500:800].tolist()
    assert not set(info.rows) & set(perm[:500].tolist())
    assert a["holdout"]["sentence"] == full.select(list(info.rows))["sentence"]
    assert b.holdout_info == info and b.holdout_info.ids_sha256 == info.ids_sha256  # every trial, every worker


def test_a_full_glue_task_holds_out_dev_examples_by_hash_and_decides_on_the_rest(tmp_path):
    _needs_glue()
    cache_dir = str(tmp_path)
    task = task_from_yaml("mrpc")
    splits = load_splits(task, cache_dir=cache_dir)
    info = splits.holdout_info
    assert info.source == "dev_hash" and info.file.endswith("dev.tsv")
    n_val, n_held = splits["validation"].num_rows, splits["holdout"].num_rows
    assert n_val + n_held == 408 and 0.12 < n_held / 408 < 0.28
    whole = load_splits(task_from_yaml("mrpc", holdout=False), cache_dir=cache_dir)["validation"]
    pairs = list(zip(whole["sentence1"], whole["sentence2"], strict=True))
    held = set(zip(splits["holdout"]["sentence1"], splits["holdout"]["sentence2"], strict=True))
    kept = set(zip(splits["validation"]["sentence1"], splits["validation"]["sentence2"], strict=True))
    assert not held & kept
    assert {pairs[i] for i in info.rows} == held  # rows name dev.tsv's data rows
    assert splits["train"].num_rows == 3668


def test_the_dev_hash_ignores_row_order_and_sends_identical_texts_the_same_way():
    texts = [f"sentence number {i}" for i in range(400)] + ["same text"] * 5
    ds = datasets.Dataset.from_dict({"sentence": texts, "label": [0] * len(texts)})
    rows = holdout.dev_hash_rows(ds, ["sentence"], 0.25)
    shuffled = ds.select(np.random.default_rng(1).permutation(len(texts)))
    again = holdout.dev_hash_rows(shuffled, ["sentence"], 0.25)
    assert sorted(ds.select(rows)["sentence"]) == sorted(shuffled.select(again)["sentence"])
    same = [i for i, t in enumerate(texts) if t == "same text"]
    assert set(same) <= set(rows.tolist()) or not set(same) & set(rows.tolist())
    assert 0.15 < len(rows) / len(texts) < 0.35


def _files(tmp_path: Path, n_dev: int, test_rows: int | None = None) -> dict:
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(40)))
    (tmp_path / "dev.csv").write_text("text,label\n" + "".join(f"d{i},{i % 2}\n" for i in range(n_dev)))
    kw = {"train_file": "train.csv", "validation_file": "dev.csv", "data_dir": str(tmp_path)}
    if test_rows is not None:
        (tmp_path / "test.csv").write_text("text,label\n" + "".join(f"x{i},{i % 2}\n" for i in range(test_rows)))
        kw["test_file"] = "test.csv"
    return kw


def test_a_csv_task_takes_its_test_file_whole_and_the_fingerprint_reads_it(tmp_path):
    cache_dir = str(tmp_path / "hf")
    task = task_from_yaml("csv", **_files(tmp_path, 300, test_rows=7))
    splits = load_splits(task, cache_dir=cache_dir)
    assert splits.holdout_info.source == "test_file" and splits.holdout_info.rows == tuple(range(7))
    assert splits["holdout"]["text"] == [f"x{i}" for i in range(7)]
    assert splits["validation"].num_rows == 300  # the dev set stays whole
    assert "test_sha256" in data_digest(task)
    from rank_sweep.config import build_config
    from rank_sweep.train.trial import resolved_config

    cfg = build_config({"task": {k: v for k, v in vars(task).items() if k not in TaskConfig.LM_KEYS}})
    assert resolved_config(cfg)["task"]["test_file"] == str(tmp_path / "test.csv")  # a preset retrains elsewhere
    assert "test_sha256" not in data_digest(task_from_yaml("csv", **{**_files(tmp_path, 300), "holdout": False}))


def test_no_held_out_split_when_it_is_off_or_the_dev_set_is_too_small(tmp_path):
    cache_dir = str(tmp_path / "hf")
    off = load_splits(task_from_yaml("csv", holdout=False, **_files(tmp_path, 300)), cache_dir=cache_dir)
    assert "holdout" not in off and off.holdout_info is None and off["validation"].num_rows == 300
    tiny = load_splits(task_from_yaml("csv", **_files(tmp_path, 30)), cache_dir=cache_dir)
    assert "holdout" not in tiny and tiny["validation"].num_rows == 30


@pytest.mark.parametrize("key, value, says", [
    ("holdout", "yes", "task.holdout='yes' is not valid"),
    ("holdout_size", 0, "task.holdout_size=0 is not valid"),
    ("holdout_dev_fraction", 1.0, "task.holdout_dev_fraction=1.0 is not valid"),
    ("test_file", " ", "task.test_file=' ' is not valid"),
])
def test_bad_holdout_keys_are_one_line_config_errors(key, value, says):
    with pytest.raises(ConfigError, match=says):
        TaskConfig(name="sst2", source="glue", glue_name="SST-2", **{key: value})


def test_a_study_from_before_the_split_resumes_with_holdout_off():
    from rank_sweep.config import build_config
    from rank_sweep.study.run import build_spec
    from rank_sweep.study.storage import study_fingerprint

    on = build_config({"task": {"max_train_samples": 100}})
    off = build_config({"task": {"max_train_samples": 100, "holdout": False}})
    assert "task.holdout_size" in study_fingerprint(on, build_spec(on))
    assert not any("holdout" in k or "test_file" in k for k in study_fingerprint(off, build_spec(off)))
