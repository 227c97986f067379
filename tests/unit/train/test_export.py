"""Export on a tiny BERT: merged == unmerged and a reloaded adapter == the trained one (fp32)."""

from __future__ import annotations

import copy

import torch
from transformers import BertConfig, BertForSequenceClassification

from rank_sweep.config import LoraConfig
from rank_sweep.train.export import export_adapter
from rank_sweep.train.lora import wrap


def _trained_tiny(seed=0):
    torch.manual_seed(seed)
    base = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64))
    fresh = copy.deepcopy(base)
    model = wrap(base, LoraConfig(r=4, targets=["Wq", "Wv"], dropout=0.0))
    with torch.no_grad():  # stand-in for training: non-zero B, a changed head
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    return model, fresh


def test_merged_and_reloaded_agree(tmp_path):
    model, fresh = _trained_tiny()
    batch = {"input_ids": torch.randint(1, 100, (8, 12)), "attention_mask": torch.ones(8, 12, dtype=torch.long),
             "labels": torch.zeros(8, dtype=torch.long)}
    m = export_adapter(model, fresh, batch, str(tmp_path))
    assert m["export/merge_max_abs_diff"] < 1e-5
    assert m["export/reload_max_abs_diff"] < 1e-5
    assert m["export/reload_same_predictions"] == 1.0
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert any((tmp_path / "merged").glob("*.safetensors"))
    # the adapter actually changes the output: the checks compare something non-trivial
    with torch.no_grad():
        fresh.eval()
        model.eval()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        assert (fresh(**inputs).logits - model(**inputs).logits).abs().max() > 1e-3
