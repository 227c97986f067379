"""rank_sweep.train.head: how a classifier reads the encoder (model.pooling), on tiny models built from configs
and on the folder layout of a sentence-transformers checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from rank_sweep.config import LoraConfig, ModelConfig
from rank_sweep.errors import ConfigError, RankSweepError
from rank_sweep.train import head, lora

SMALL = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64)


def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**SMALL, num_labels=2)).eval()


def st_folder(tmp_path, **modes) -> str:
    """A folder laid out as a sentence-transformers checkpoint, with the given pooling flags."""
    (tmp_path / "1_Pooling").mkdir(parents=True)
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return str(tmp_path)


def test_mean_pooling_is_the_masked_mean_and_ignores_padding():
    model = head.apply_pooling(bert(), "mean")
    ids = torch.tensor([[2, 7, 9, 11, 3, 0, 0, 0], [2, 5, 3, 0, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = model.bert(input_ids=ids, attention_mask=mask).pooler_output
        alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits  # the second row unpadded
    expected = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(pooled, expected, atol=1e-6)
    assert torch.allclose(logits[1], alone[0], atol=1e-5)  # padding does not move a mean-pooled example
    assert isinstance(model.bert.pooler, head.MeanPooler) and model.config.rank_sweep_pooling == "mean"


def test_a_copy_of_a_mean_pooled_model_pools_with_its_own_mask():
    import copy

    original = head.apply_pooling(bert(), "mean")
    model = copy.deepcopy(original)  # as fresh_model, the export's merged copy and its reload make them
    ids = torch.tensor([[2, 7, 9, 11, 3, 0, 0], [2, 5, 3, 0, 0, 0, 0]])
    with torch.no_grad():
        original(input_ids=ids[:1, :3], attention_mask=torch.ones(1, 3, dtype=torch.long))  # a stale mask there
        logits = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
        alone = model(input_ids=ids[1:, :3], attention_mask=torch.ones(1, 3, dtype=torch.long)).logits
    assert model.bert.pooler is not original.bert.pooler and model.bert.pooler.mask.shape == (1, 3)
    assert torch.allclose(logits[1], alone[0], atol=1e-5)


def test_cls_pooling_keeps_the_model_as_transformers_builds_it():
    plain, model = bert(), head.apply_pooling(bert(), "cls")
    ids = torch.tensor([[2, 7, 9, 3]])
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, model(input_ids=ids).logits)
    assert type(model.bert.pooler).__name__ == "BertPooler"


def test_the_checkpoint_says_how_it_was_pooled(tmp_path):
    assert head.checkpoint_pooling(st_folder(tmp_path / "a", pooling_mode_mean_tokens=True)) == "mean"
    assert head.checkpoint_pooling(st_folder(tmp_path / "b", pooling_mode_cls_token=True)) == "cls"
    assert head.checkpoint_pooling(str(tmp_path / "nothing")) is None  # no folder: a hub id, say
    assert head.checkpoint_pooling("org/name") is None


def test_the_offline_default_checkpoint_was_trained_with_mean_pooling():
    from tests.conftest import minilm_path

    assert head.checkpoint_pooling(minilm_path()) == "mean"


@pytest.mark.parametrize(("requested", "modes", "resolved"), [
    ("auto", {"pooling_mode_mean_tokens": True}, "mean"),
    ("auto", {"pooling_mode_cls_token": True}, "cls"),
    ("auto", None, "cls"),
    ("cls_frozen", {"pooling_mode_mean_tokens": True}, "cls_frozen"),
    ("mean", None, "mean"),
])
def test_auto_is_decided_by_the_checkpoint(tmp_path, requested, modes, resolved):
    path = st_folder(tmp_path, **modes) if modes is not None else str(tmp_path)
    assert head.resolve_pooling(requested, path, bert()) == resolved


def test_mean_is_refused_where_the_head_reads_the_hidden_states_itself(tmp_path):
    roberta = RobertaForSequenceClassification(RobertaConfig(**SMALL, num_labels=2))
    with pytest.raises(ConfigError) as e:
        head.resolve_pooling("mean", str(tmp_path), roberta)
    assert "model.pooling=mean" in str(e.value) and "model.pooling=cls" in str(e.value) and "\n" not in str(e.value)
    # auto on a sentence-transformers RoBERTa falls back to its own head rather than failing
    assert head.resolve_pooling("auto", st_folder(tmp_path, pooling_mode_mean_tokens=True), roberta) == "cls"


def test_a_bad_pooling_value_is_one_line_naming_the_options():
    with pytest.raises(ConfigError, match=r"model.pooling='avg' is not valid: use one of auto, cls, cls_frozen, mean"):
        ModelConfig(pooling="avg")


@pytest.mark.parametrize(("pooling", "extra"), [("cls", ["bert.pooler.dense"]), ("cls_frozen", []), ("mean", [])])
def test_trained_modules_and_exact_counts(pooling, extra):
    model = head.apply_pooling(bert(), pooling)
    heads = head.trained_names(model, lora.head_names(model), pooling)
    assert heads == ["classifier", *extra]
    total = lora.num_params(bert())
    wrapped = lora.wrap(model, LoraConfig(r=2, targets=["Wq"]), heads=heads)
    counts = lora.count_parameters(wrapped, total)
    classifier = 32 * 2 + 2
    pooler = 32 * 32 + 32 if extra else 0
    assert counts.lora_params == 2 * 2 * (32 + 32)  # 2 layers x r (d_in + d_out)
    assert counts.head_params == classifier + pooler
    assert counts.trainable_params == wrapped.get_nb_trainable_parameters()[0]  # PEFT's own count agrees
    merged = lora.merged_copy(wrapped)  # PEFT puts the trained pooler back on merging (it did not as a whole module)
    ids = torch.tensor([[2, 7, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, wrapped.eval()(input_ids=ids).logits, atol=1e-5)


def test_the_head_only_reference_trains_the_same_head():
    model = head.apply_pooling(bert(), "cls")
    heads = head.trained_names(model, lora.head_names(model), "cls")
    trained = {n for n, p in lora.head_alone(model, heads).named_parameters() if p.requires_grad}
    assert trained == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}


def test_deberta_pooler_is_top_level_and_trained_under_cls():
    cfg = DebertaV2Config(**SMALL, num_labels=2)
    model = DebertaV2ForSequenceClassification(cfg)
    assert head.pooler_name(model) == "pooler"
    assert head.trained_names(model, lora.head_names(model), "cls") == ["classifier", "pooler.dense"]
    meaned = head.apply_pooling(model, "mean")
    with torch.no_grad():
        out = meaned(input_ids=torch.tensor([[1, 5, 6, 2, 0]]), attention_mask=torch.tensor([[1, 1, 1, 1, 0]]))
    assert out.logits.shape == (1, 2)


def test_a_study_from_before_the_key_resumes_only_as_cls_frozen():
    from types import SimpleNamespace

    from rank_sweep.study.storage import _refuse

    study = SimpleNamespace(study_name="old")
    stored = {"model.name_or_path": "m", "lora.alpha_policy": "scaled"}  # written before model.pooling existed
    _refuse(study, "sqlite:///x.db", stored, {**stored, "model.pooling": "cls_frozen"})  # resumes
    with pytest.raises(RankSweepError, match=r"model.pooling='cls_frozen', now 'auto'"):
        _refuse(study, "sqlite:///x.db", stored, {**stored, "model.pooling": "auto"})
