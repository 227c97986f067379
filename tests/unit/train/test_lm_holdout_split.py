"""The held-out split of a causal LM task (rank_sweep.train.lm_data + rank_sweep.train.holdout): chosen by the
classifier's rules from the task's rows (the unused training rows of a subsampled GLUE-as-text task, the same rows
its classifier task holds out; a dev hash of each prompt; task.test_file whole), carried through tokenization, and
recorded with its provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rank_sweep.errors import ConfigError
from rank_sweep.train import holdout
from rank_sweep.train.data import data_digest, load_splits
from rank_sweep.train.lm_data import hash_fields, load_lm_splits
from tests.unit.train.test_data import task_from_yaml


def _jsonl(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows))


def _lm_files(tmp_path: Path, n_dev: int, test_rows: int | None = None) -> dict:
    _jsonl(tmp_path / "train.jsonl", [(f"train {i}. Sentiment:", " positive") for i in range(40)])
    dev = [(f"review {i}. Sentiment:", " negative" if i % 2 else " positive") for i in range(n_dev)]
    _jsonl(tmp_path / "dev.jsonl", dev + [("the same review. Sentiment:", c) for c in (" positive", " negative")] * 3)
    kw = {"train_file": "train.jsonl", "validation_file": "dev.jsonl", "data_dir": str(tmp_path)}
    if test_rows is not None:
        _jsonl(tmp_path / "test.jsonl", [(f"test {i}. Sentiment:", " positive") for i in range(test_rows)])
        kw["test_file"] = "test.jsonl"
    return kw


def test_a_subsampled_glue_lm_task_holds_out_the_training_rows_its_classifier_task_holds_out(tmp_path):
    if not os.environ.get("GLUE_DIR"):
        pytest.skip("GLUE_DIR is not set")
    lm_task = task_from_yaml("sst2_lm", max_train_samples=500, holdout_size=300)
    lm = load_lm_splits(lm_task, cache_dir=str(tmp_path))
    cls = load_splits(task_from_yaml("sst2", max_train_samples=500, holdout_size=300), cache_dir=str(tmp_path))
    info = lm.holdout_info
    assert info.source == "train_unused" and info.file.endswith(os.path.join("SST-2", "train.tsv"))
    assert info == cls.holdout_info and info.ids_sha256 == cls.holdout_info.ids_sha256  # the same 300 rows
    assert lm["holdout"]["prompt"] == [lm_task.prompt_template.format(sentence=s.strip())
                                       for s in cls["holdout"]["sentence"]]
    assert lm["holdout"]["choice"] == cls["holdout"]["label"]
    assert lm["holdout"]["completion"] == [lm_task.choices[y] for y in cls["holdout"]["label"]]
    assert lm["train"]["prompt"] == [lm_task.prompt_template.format(sentence=s.strip()) for s in cls["train"]["sentence"]]
    assert lm["validation"].num_rows == 872  # the decision split keeps every dev example
    assert load_lm_splits(lm_task, cache_dir=str(tmp_path)).holdout_info == info  # every trial, every worker


def test_a_full_glue_lm_task_holds_out_the_dev_examples_its_classifier_task_holds_out(tmp_path):
    if not os.environ.get("GLUE_DIR"):
        pytest.skip("GLUE_DIR is not set")
    lm = load_lm_splits(task_from_yaml("mrpc_lm"), cache_dir=str(tmp_path))
    cls = load_splits(task_from_yaml("mrpc"), cache_dir=str(tmp_path))
    assert lm.holdout_info == cls.holdout_info and lm.holdout_info.source == "dev_hash"  # the dev hash of the pair
    assert lm["holdout"].num_rows == cls["holdout"].num_rows and lm["validation"].num_rows == 313
    assert lm["holdout"]["choice"] == cls["holdout"]["label"]
    assert all(ds.column_names == ["prompt", "completion", "choice"] for ds in lm.values())  # the fields hashed: gone


def test_a_full_lm_task_holds_out_dev_examples_by_a_hash_of_their_prompt(tmp_path):
    task = task_from_yaml("jsonl_lm", **_lm_files(tmp_path, 400))
    splits = load_lm_splits(task, cache_dir=str(tmp_path / "hf"))
    info = splits.holdout_info
    assert info.source == "dev_hash" and info.file == str(tmp_path / "dev.jsonl") and "sha256 of prompt" in info.rule
    held, kept = splits["holdout"], splits["validation"]
    assert held.num_rows + kept.num_rows == 406 and 0.12 < held.num_rows / 406 < 0.28
    assert not set(held["prompt"]) & set(kept["prompt"])
    same = held["prompt"].count("the same review. Sentiment:")
    assert same in (0, 6)  # one prompt, whatever its answer, falls on one side
    whole = load_lm_splits(task_from_yaml("jsonl_lm", holdout=False, **_lm_files(tmp_path, 400)),
                           cache_dir=str(tmp_path / "hf"))
    assert "holdout" not in whole and whole.holdout_info is None and whole["validation"].num_rows == 406
    assert [whole["validation"]["prompt"][i] for i in info.rows] == held["prompt"]  # rows name dev.jsonl's lines
    assert info.rows == tuple(holdout.dev_hash_rows(whole["validation"], ["prompt"], 0.2).tolist())


def test_a_small_lm_dev_set_stays_whole(tmp_path):
    splits = load_lm_splits(task_from_yaml("jsonl_lm", **_lm_files(tmp_path, 40)), cache_dir=str(tmp_path / "hf"))
    assert "holdout" not in splits and splits.holdout_info is None and splits["validation"].num_rows == 46


def test_a_jsonl_lm_task_takes_its_test_file_whole_and_records_it(tmp_path):
    from rank_sweep.config import build_config
    from rank_sweep.train.trial import resolved_config

    task = task_from_yaml("jsonl_lm", **_lm_files(tmp_path, 400, test_rows=9))
    splits = load_lm_splits(task, cache_dir=str(tmp_path / "hf"))
    info = splits.holdout_info
    assert info.source == "test_file" and info.rows == tuple(range(9)) and info.file == str(tmp_path / "test.jsonl")
    assert splits["holdout"]["prompt"] == [f"test {i}. Sentiment:" for i in range(9)]
    assert splits["validation"].num_rows == 406  # the dev set stays whole
    assert data_digest(task)["test_sha256"] == info.params()["holdout_file_sha256"] == holdout.file_sha256(info.file)
    cfg = build_config({"task": vars(task)})
    recorded = resolved_config(cfg)["task"]
    assert recorded["test_file"] == str(tmp_path / "test.jsonl") and recorded["holdout"] is True


def test_the_dev_hash_reads_each_rows_input():
    assert hash_fields(task_from_yaml("sst2_lm")) == ["sentence"]  # what the prompt is built from
    assert hash_fields(task_from_yaml("jsonl_lm", train_file="t", validation_file="v")) == ["prompt"]
    assert hash_fields(task_from_yaml("jsonl_lm", format="text", train_file="t", validation_file="v")) == ["completion"]  # a text task's text
    assert hash_fields(task_from_yaml("jsonl_lm", format="chat", train_file="t", validation_file="v")) == ["messages"]


@pytest.mark.parametrize("key, value, says", [
    ("holdout", "yes", "task.holdout='yes' is not valid"),
    ("holdout_size", -3, "task.holdout_size=-3 is not valid"),
    ("holdout_dev_fraction", 0, "task.holdout_dev_fraction=0 is not valid"),
])
def test_bad_holdout_keys_of_a_causal_task_are_one_line_config_errors(key, value, says):
    with pytest.raises(ConfigError, match=says):
        task_from_yaml("sst2_lm", **{key: value})


def test_the_tokenized_lm_splits_keep_the_held_out_split_and_serve_it_left_padded(tmp_path):
    from transformers import AutoTokenizer

    from rank_sweep.train.lm_data import CausalDataModule, tokenize_lm
    from tests.lm_helpers import GGUF_NAME, gguf_dir

    tok = AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=GGUF_NAME)
    task = task_from_yaml("jsonl_lm", max_seq_length=32, choices=[" negative", " positive"],
                          **_lm_files(tmp_path, 400, test_rows=9))
    rows = load_lm_splits(task, cache_dir=str(tmp_path / "hf"))
    tokenized = tokenize_lm(rows, tok, task)
    assert tokenized.holdout_info == rows.holdout_info and tokenized["holdout"].num_rows == 9
    assert tokenized["holdout"]["choice"] == [1] * 9
    dm = CausalDataModule(tokenized, tok, task, batch_size=4, eval_batch_size=4)
    batches = list(dm.holdout_dataloader())
    assert sum(len(b["input_ids"]) for b in batches) == 9 and set(batches[0]) >= {"input_ids", "labels"}
    assert (batches[0]["attention_mask"][:, -1] == 1).all()  # left-padded: every row ends at the last position
