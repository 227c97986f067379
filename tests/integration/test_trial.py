"""One trial on a tiny BERT: it learns, records the contract names in MLflow,
and a bad input fails before any MLflow run exists."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from rank_sweep.errors import ConfigError
from rank_sweep.train.loading import WorkerCache
from rank_sweep.train.trial import run_trial

PARAMS = {"model", "task", "r", "targets", "alpha", "alpha_policy", "lr", "epochs", "batch_size", "seed",
          "max_seq_length"}
METRICS = {"score", "train/loss", "lora_params", "trainable_params", "total_params", "trainable_pct",
           "train_seconds", "baseline_score", "val/accuracy"}


def _runs(cfg):
    client = MlflowClient(cfg.tracking.resolved_uri())
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def test_trial_learns_and_records_contract(toy_cfg):
    toy_cfg.lora.r, toy_cfg.lora.targets = 4, ["Wq", "Wv"]
    result = run_trial(toy_cfg, cache=WorkerCache())
    assert result.score > result.baseline_score + 0.2, "the toy task is learnable in five epochs"
    assert not result.not_learning
    # closed form: 2 layers x (Wq + Wv) x r * (32 + 32)
    assert result.counts.lora_params == 2 * 2 * 4 * 64
    assert result.counts.trainable_params == result.counts.lora_params + result.counts.head_params
    client, runs = _runs(toy_cfg)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert PARAMS <= set(run.data.params)
    assert METRICS <= set(run.data.metrics)
    assert run.data.params["targets"] == "Wq,Wv" and run.data.params["r"] == "4"
    assert run.data.params["alpha_policy"] == "scaled" and float(run.data.params["alpha"]) == 8.0
    assert run.data.metrics["lora_params"] == result.counts.lora_params
    assert run.data.metrics["score"] == pytest.approx(result.score)
    assert "git.sha" in run.data.tags and "version.peft" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "val/accuracy")
    assert [m.step for m in history] == list(range(5)), "one validation point per epoch"
    assert any(a.path == "config.json" for a in client.list_artifacts(run.info.run_id))


def test_same_seed_same_score(toy_cfg):
    cache = WorkerCache()
    toy_cfg.tracking.log_config_artifact = False
    a = run_trial(toy_cfg, cache=cache)
    b = run_trial(toy_cfg, cache=cache)  # second trial reuses the cached base model: must start pristine
    assert a.score == b.score and a.history == b.history


@pytest.mark.parametrize("targets, r, message", [
    (["Wq"], 64, "lora.r=64 is too large"),
    (["Wx"], 2, "unknown role 'Wx'"),
    (["nonexistent"], 2, "matches no linear module"),
])
def test_bad_input_leaves_no_run(toy_cfg, targets, r, message):
    toy_cfg.lora.targets, toy_cfg.lora.r = targets, r
    with pytest.raises(ConfigError, match=message):
        run_trial(toy_cfg, cache=WorkerCache())
    assert _runs(toy_cfg)[1] == []


def test_save_adapter_exports_and_checks_merge_and_reload(toy_cfg):
    toy_cfg.save_adapter, toy_cfg.trainer.epochs = True, 1
    result = run_trial(toy_cfg, cache=WorkerCache())
    client, (run,) = _runs(toy_cfg)
    m = run.data.metrics
    assert m["export/merge_max_abs_diff"] < 1e-5 and m["export/reload_max_abs_diff"] < 1e-5
    assert m["export/reload_same_predictions"] == 1.0
    assert any(a.path == "adapter" for a in client.list_artifacts(run.info.run_id))
    assert result.run_id == run.info.run_id
    # spectra of every adapted matrix: 2 layers x (Wq, Wv)
    assert m["spectra/Wq/eff_rank90_max"] <= toy_cfg.lora.r and "spectra/Wv/top_share_mean" in m


def test_early_stopping_scores_and_restores_the_best_epoch(toy_cfg, monkeypatch):
    """issue #13.4: training stops `patience` epochs after the best one; the score was the last epoch's."""
    from rank_sweep.train import model as model_mod

    scripted = iter([0.60, 0.80, 0.70, 0.65, 0.90, 0.95])  # patience 2: stops after epoch 3, best is epoch 1
    weights_at: dict[int, dict] = {}
    real_end = model_mod.SequenceClassifier.on_validation_epoch_end

    def on_validation_epoch_end(self):
        real_end(self)
        value = next(scripted)
        self.last_metrics = {**self.last_metrics, "accuracy": value}
        self.history[-1]["accuracy"] = value
        self.log("val/accuracy", value, prog_bar=True)
        weights_at[self.current_epoch] = {n: p.detach().clone() for n, p in self.model.named_parameters()
                                          if p.requires_grad}

    monkeypatch.setattr(model_mod.SequenceClassifier, "on_validation_epoch_end", on_validation_epoch_end)
    toy_cfg.trainer.epochs, toy_cfg.trainer.early_stopping_patience = 6, 2
    result = run_trial(toy_cfg, cache=WorkerCache())
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert result.score == pytest.approx(0.80)
    client, [run] = _runs(toy_cfg)
    assert run.data.metrics["score_epoch"] == 1 and run.data.metrics["best_epoch"] == 1
    assert run.data.metrics["score"] == pytest.approx(0.80)
    # the model was put back to epoch 1: the A factors the trial saved are epoch 1's, not epoch 3's
    import torch

    from rank_sweep.train.trial import factors_path

    saved = torch.load(factors_path(toy_cfg.output_dir, run.info.run_id))
    name = next(iter(saved))
    key = next(k for k in weights_at[1] if name in k and "lora_A" in k)
    assert torch.equal(saved[name], weights_at[1][key]) and not torch.equal(saved[name], weights_at[3][key])


def test_without_early_stopping_the_last_epoch_is_scored_and_the_best_one_logged(toy_cfg, monkeypatch):
    from rank_sweep.train import model as model_mod

    scripted = iter([0.60, 0.80, 0.70])
    real_end = model_mod.SequenceClassifier.on_validation_epoch_end

    def on_validation_epoch_end(self):
        real_end(self)
        value = next(scripted)
        self.last_metrics = {**self.last_metrics, "accuracy": value}
        self.log("val/accuracy", value, prog_bar=True)

    monkeypatch.setattr(model_mod.SequenceClassifier, "on_validation_epoch_end", on_validation_epoch_end)
    toy_cfg.trainer.epochs = 3
    result = run_trial(toy_cfg, cache=WorkerCache())
    assert result.score == pytest.approx(0.70)
    _, [run] = _runs(toy_cfg)
    assert (run.data.metrics["score_epoch"], run.data.metrics["best_epoch"]) == (2, 1)


def test_a_trial_keeps_its_per_example_predictions(toy_cfg, tmp_path):
    """issue #14: predictions/val.npz beside the trial and as an MLflow artifact, in dev-set order."""
    import numpy as np

    from rank_sweep.results.predictions import ARTIFACT, load_predictions, predictions_path
    from rank_sweep.train.metrics import compute_metrics

    result = run_trial(toy_cfg, cache=WorkerCache())
    local = load_predictions(predictions_path(toy_cfg.output_dir, result.run_id))
    client, [run] = _runs(toy_cfg)
    remote = load_predictions(client.download_artifacts(run.info.run_id, ARTIFACT, str(tmp_path)))
    assert len(local) == 64 and np.array_equal(local.outputs, remote.outputs)
    assert local.outputs.shape == (64, 2) and list(local.index) == list(range(64))
    rescored = compute_metrics(toy_cfg.task, local.outputs, local.label)["accuracy"]
    assert rescored == pytest.approx(result.score)


@pytest.mark.parametrize(("pooling", "head"), [
    ("auto", 32 * 32 + 32 + 32 * 2 + 2),  # no sentence-transformers config: cls, BERT's pooler trained with the head
    ("cls_frozen", 32 * 2 + 2),  # the classifier alone: 32 -> 2, as every trial before model.pooling
    ("mean", 32 * 2 + 2),  # mean pooling has no parameters
])
def test_the_head_only_reference_trains_the_head_alone(toy_cfg, pooling, head):
    toy_cfg.lora.head_only, toy_cfg.model.pooling = True, pooling
    result = run_trial(toy_cfg, cache=WorkerCache())
    c = result.counts
    assert c.lora_params == 0 and c.trainable_params == c.head_params == head
    _, [run] = _runs(toy_cfg)
    assert (run.data.params["targets"], run.data.params["r"]) == ("head only", "0")
    assert run.data.params["pooling"] == ("cls" if pooling == "auto" else pooling)  # resolved, never auto


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_a_trained_pooler_or_a_mean_pooled_head_exports_and_reloads(toy_cfg, pooling):
    toy_cfg.model.pooling, toy_cfg.save_adapter, toy_cfg.trainer.epochs = pooling, True, 1
    run_trial(toy_cfg, cache=WorkerCache())
    _, [run] = _runs(toy_cfg)
    metrics = run.data.metrics
    assert run.data.params["pooling"] == pooling
    # the merged model and the adapter reloaded onto a fresh base give the trained model's logits
    assert metrics["export/merge_max_abs_diff"] < 1e-4 and metrics["export/reload_max_abs_diff"] < 1e-4
    assert metrics["head_params"] == 2 * 32 + 2 + (32 * 32 + 32 if pooling == "cls" else 0)
