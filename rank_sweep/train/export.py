"""Export a trained adapter: PEFT's ``save_pretrained``, a merged model, and two checks.

    rank-sweep-trial experiment=... save_adapter=true     # writes <output_dir>/adapters/<run id>/

The checks are logged with the run: ``export/merge_max_abs_diff`` (merged vs
unmerged logits on a validation batch) and ``export/reload_max_abs_diff`` (the
saved adapter loaded onto a fresh copy of the base model vs the trained model),
plus ``export/reload_same_predictions`` (1.0 when every argmax agrees). A method whose adapter cannot be
merged into the weights (prefix and prompt tuning: ``merge=False``) is saved and reloaded, not merged.
"""

from __future__ import annotations

import copy
import os

import torch

from rank_sweep.train.lora import merged_copy


@torch.no_grad()
def _logits(model, batch: dict) -> torch.Tensor:
    model.eval()
    return model(**batch).logits.float()


def export_adapter(peft_model, fresh_base: torch.nn.Module, batch: dict, out_dir: str,
                   merge: bool = True) -> dict[str, float]:
    """Save adapter (and, with ``merge``, the merged model) under ``out_dir``; return the agreement checks."""
    from peft import PeftModel

    batch = {k: v for k, v in batch.items() if k not in ("labels", "length")}
    was_training = peft_model.training
    reference = _logits(peft_model, batch)
    adapter_dir, merged_dir = os.path.join(out_dir, "adapter"), os.path.join(out_dir, "merged")
    peft_model.save_pretrained(adapter_dir)
    checks = {}
    if merge:
        merged = merged_copy(peft_model)
        merged.save_pretrained(merged_dir)
        checks["export/merge_max_abs_diff"] = float((_logits(merged, batch) - reference).abs().max())
    reloaded = PeftModel.from_pretrained(copy.deepcopy(fresh_base), adapter_dir)
    again = _logits(reloaded, batch)
    peft_model.train(was_training)
    return {
        **checks,
        "export/reload_max_abs_diff": float((again - reference).abs().max()),
        "export/reload_same_predictions": float(bool((again.argmax(-1) == reference.argmax(-1)).all())),
    }
