"""One trial: wire a config into a Lightning run, fit, record, return the result.

    rank-sweep-trial task=sst2 lora.r=4 lora.targets=[Wq,Wv]
    rank-sweep-trial task=sst2 method=ia3        # a reference method instead of LoRA (conf/method/)

Order matters for "nothing half-done": everything that can reject the input
(model path, data files, labels, target roles, rank) is checked *before* the
MLflow run is created, so a bad input leaves no RUNNING run behind. Inside one
worker, :class:`WorkerCache` keeps the pristine base model and the tokenized
data, so later trials skip loading and tokenizing.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import lightning.pytorch as pl
import torch

from rank_sweep import interrupts, tracking
from rank_sweep.analysis import spectra
from rank_sweep.config import RunConfig, run_point
from rank_sweep.errors import ConfigError
from rank_sweep.results.paired import is_gain, paired_difference, score_interval
from rank_sweep.results.predictions import ARTIFACT, predictions_path, save_predictions
from rank_sweep.train import causal, holdout, lora, methods
from rank_sweep.train.batches import GlueDataModule
from rank_sweep.train.callbacks import BestEpoch, EpochLogger
from rank_sweep.train.data import data_files
from rank_sweep.train.export import export_adapter
from rank_sweep.train.loading import DEFAULT_CACHE, WorkerCache, check_output_dir, fresh_model, resolve_precision
from rank_sweep.train.memory import PeakMemory, adapter_mb, state_memory
from rank_sweep.train.metrics import baseline_outputs, baseline_score
from rank_sweep.train.model import FineTuning, SequenceClassifier, constant_outputs


@dataclass
class TrialResult:
    score: float
    metric: str
    metrics: dict[str, float]
    counts: lora.ParamCounts
    train_seconds: float
    setup_seconds: float
    baseline_score: float
    not_learning: bool
    constant_predictions: bool
    history: list[dict] = field(default_factory=list)
    run_id: str | None = None
    train_steps: int = 0
    score_epoch: int = 0  # the epoch scored: the best one with early stopping, else the last
    score_ci: tuple[float, float] | None = None  # (low, high) over dev examples, at search.confidence
    memory: dict[str, float] = field(default_factory=dict)  # peak_memory_mb, adapter_mb, ... (train.memory)
    holdout: dict[str, float] = field(default_factory=dict)  # holdout_score, holdout_ci_low/high: report-only


def prepare(cfg: RunConfig, cache: WorkerCache | None = None):
    """Load, validate and build everything a trial needs; raises before any run is recorded."""
    cache = cache or DEFAULT_CACHE
    reference = cfg.method.name != "lora"
    if reference and (cfg.lora.full_finetune or cfg.lora.head_only):
        flag = "full_finetune" if cfg.lora.full_finetune else "head_only"
        raise ConfigError(f"method={cfg.method.name} cannot be combined with lora.{flag}=true: a trial trains "
                          f"one adapter, or none (set method=lora for the {flag} reference)")
    tok, base, total = cache.tokenizer_and_model(cfg)
    (tokenized, (train_labels, val_labels)) = cache.splits(cfg, tok)
    model = fresh_model(base, cfg.seed, cache.pooling(cfg))
    heads = cache.trained_heads(cfg)  # the classification layer, and the pooler under model.pooling=cls
    plan = None
    if reference:  # a reference method (IA3, prompt tuning, ...): no LoRA plan, no spectra
        methods.check_method_fits(model, cfg.method, cfg.model.family, max_seq_length=cfg.task.max_seq_length)
        steps = methods.total_steps(cfg.trainer, tokenized["train"].num_rows)
        model = methods.wrap_method(model, cfg.method, cfg.model.family, steps, heads=heads)
    elif cfg.lora.full_finetune:
        model = lora.freeze_for_full_finetune(model)
    elif cfg.lora.head_only:
        model = lora.head_alone(model, heads)
    else:
        plan = lora.plan_targets(model, cfg.lora.targets, cfg.model.family)
        lora.check_rank_fits(plan, cfg.lora.r)
        model = lora.wrap(model, cfg.lora, cfg.model.family, plan, heads=heads)
    counts = lora.count_parameters(model, total)
    baseline = baseline_score(cfg.task, train_labels, val_labels)
    return tok, model, tokenized, counts, baseline, plan


def trial_params(cfg: RunConfig, pooling: str | None = None) -> dict:
    """The MLflow params every trial carries (a contract: later parts rely on these names). ``pooling`` is
    ``model.pooling`` as resolved for the checkpoint (:func:`rank_sweep.train.head.resolve_pooling`)."""
    point = run_point(cfg)  # stored as its row ("Wq,Wv", "full", "head only", a method) and rank or size
    return {
        "model": cfg.model.label, "model_path": cfg.model.name_or_path, "task": cfg.task.name,
        "method": cfg.method.name, "r": point.r, "targets": point.row,
        "alpha": None if point.method != "lora" else cfg.lora.lora_alpha,
        "alpha_policy": cfg.lora.alpha_policy,
        "lr": cfg.trainer.lr,
        "epochs": cfg.trainer.epochs,
        "batch_size": cfg.trainer.batch_size,
        "seed": cfg.seed,
        "max_seq_length": cfg.task.max_seq_length,
        "max_train_samples": cfg.task.max_train_samples,
        "lora_dropout": cfg.lora.dropout,
        "lora_init": cfg.lora.init,
        "weight_decay": cfg.trainer.weight_decay,
        "warmup_ratio": cfg.trainer.warmup_ratio,
        "precision": resolve_precision(cfg),
        "quantization": cfg.model.quantization,
        "metric": cfg.task.metric,
        "pooling": None if cfg.task.is_causal else (pooling or cfg.model.pooling),
    }


def run_trial(cfg: RunConfig, *, cache: WorkerCache | None = None, client=None, experiment_id: str | None = None,
              parent_run_id: str | None = None, callbacks: list | None = None, run_name: str | None = None,
              learn_margin: float | None = None, tags: dict | None = None,
              on_run: Callable[[str], None] | None = None) -> TrialResult:
    """Train one configuration and record it as an MLflow run (a child run when ``parent_run_id`` is set).

    ``on_run(run_id)`` is called as soon as the run exists (the study stores the id on its trial then, so a
    killed worker's run can be found and closed). A tracking store that stops answering raises
    :class:`TrackingError`, not the training's error: the trial is not to blame."""
    t0 = time.perf_counter()
    check_output_dir(cfg.output_dir)
    if client is None:  # the cheap checks first: an unreachable store fails before the model is loaded
        client, experiment_id = tracking.connect(cfg.tracking.resolved_uri(), cfg.tracking.experiment)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    tok, model, tokenized, counts, baseline, plan = prepare(cfg, cache)
    params = trial_params(cfg, (cache or DEFAULT_CACHE).pooling(cfg))
    name = run_name or f"{params['targets']} r={params['r']} seed={cfg.seed}"
    uri = cfg.tracking.resolved_uri()
    try:
        run_id = tracking.start_run(client, experiment_id, name, params, tags={"kind": "trial", **(tags or {})},
                                    parent_run_id=parent_run_id)
    except Exception as e:
        raise tracking.store_failed(uri, f"creating the run of {name}", e) from e
    try:
        if on_run is not None:
            on_run(run_id)
        if cfg.tracking.log_config_artifact:
            client.log_dict(run_id, resolved_config(cfg), "config.json")
        tracking.log(client, run_id, metrics={**counts.as_metrics(), "rank": params["r"], "baseline_score": baseline})
        fit = _fit(cfg, model, tok, tokenized, EpochLogger(client, run_id),
                   [*methods.method_callbacks(model, cfg.method), *(callbacks or [])], t0)
        train_labels = (cache or DEFAULT_CACHE).splits(cfg, tok)[1][0]
        interrupts.hold()  # trained: a signal now waits until the outcome is in both stores (rank_sweep.interrupts)
        score, not_learning, score_ci = _record(cfg, fit, model, plan, baseline, learn_margin, client, run_id,
                                                cache, train_labels)
        # every input of a decision (score, interval, learning flag, dev outputs) is recorded: only now is the
        # held-out split scored, one pass, for reports (rank_sweep.train.holdout), a causal LM task's too
        held = holdout.score_holdout(cfg, fit.module, fit.datamodule, client, run_id)
        if held:
            tracking.log(client, run_id, metrics=held)
    except BaseException as e:
        pruned = type(e).__name__ == "TrialPruned"
        try:
            tracking.end_run(client, run_id, "KILLED" if pruned else "FAILED", f"{type(e).__name__}: {e}")
        except Exception as store_error:  # the store itself is gone: that is the error to report
            if isinstance(e, Exception):
                raise tracking.store_failed(uri, f"recording {name}", store_error) from e
        raise
    try:
        tracking.end_run(client, run_id, "FINISHED")
    except Exception as e:
        raise tracking.store_failed(uri, f"closing the run of {name}", e) from e
    return TrialResult(score, cfg.task.metric, fit.metrics, counts, fit.train_seconds, fit.setup_seconds, baseline,
                       not_learning, fit.module.constant_predictions, fit.module.history, run_id, fit.steps,
                       fit.score_epoch, score_ci, fit.memory, held)


@dataclass
class _Fit:
    """What one Lightning fit left: the module (its history), the data, the scored epoch, the times."""

    module: FineTuning  # a SequenceClassifier, or a causal.CausalLM
    datamodule: GlueDataModule
    metrics: dict[str, float]  # of the scored epoch
    train_seconds: float
    setup_seconds: float
    steps: int
    score_epoch: int  # the epoch whose validation is the trial's score: the best with early stopping, else the last
    best_epoch: int
    memory: dict[str, float] = field(default_factory=dict)  # measured and computed (rank_sweep.train.memory)


def _fit(cfg: RunConfig, model, tok, tokenized, logger: EpochLogger, callbacks: list | None, t0: float) -> _Fit:
    if cfg.task.is_causal:  # a causal LM: completions, left-padded batches (rank_sweep.train.causal)
        datamodule, module = causal.fit_parts(cfg, model, tok, tokenized)
    else:
        datamodule = GlueDataModule(
            tokenized, tok, batch_size=cfg.trainer.batch_size, eval_batch_size=cfg.trainer.eval_batch_size,
            group_by_length=cfg.trainer.group_by_length, seed=cfg.seed,
        )
        module = SequenceClassifier(model, cfg.task, cfg.trainer)
    best = BestEpoch(cfg.task.metric, cfg.task.direction)
    all_callbacks = [logger, best, *(callbacks or [])]
    if cfg.trainer.early_stopping_patience:
        from lightning.pytorch.callbacks import EarlyStopping

        mode = "max" if cfg.task.direction == "maximize" else "min"
        all_callbacks.append(EarlyStopping(f"val/{cfg.task.metric}", mode=mode,
                                           patience=cfg.trainer.early_stopping_patience))
    trainer = pl.Trainer(
        max_epochs=cfg.trainer.epochs, max_steps=cfg.trainer.max_steps, accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices, strategy=cfg.trainer.strategy, precision=resolve_precision(cfg), logger=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
        enable_progress_bar=cfg.trainer.progress_bar, callbacks=all_callbacks,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
    )
    setup_seconds = time.perf_counter() - t0
    t_fit = time.perf_counter()
    with PeakMemory(cfg.trainer.accelerator) as peak:
        trainer.fit(module, datamodule=datamodule)
    train_seconds = time.perf_counter() - t_fit
    memory = {**peak.metrics(), **state_memory(model, trainer.optimizers[0] if trainer.optimizers else None)}
    if trainer.interrupted:
        raise KeyboardInterrupt
    if not module.last_metrics:  # max_steps ended training before the first epoch's validation
        trainer.validate(module, datamodule=datamodule, verbose=False)
    last_epoch = module.history[-1]["epoch"] if module.history else trainer.current_epoch
    score_epoch = last_epoch
    if cfg.trainer.early_stopping_patience and best.epoch is not None:
        best.restore(module)  # the weights, metrics and outputs of the best epoch: what the trial reports
        score_epoch = best.epoch
        module.constant_predictions = module.is_constant(module.last_outputs)
    return _Fit(module, datamodule, dict(module.last_metrics), train_seconds, setup_seconds, trainer.global_step,
                score_epoch, last_epoch if best.epoch is None else best.epoch, memory)


def _record(cfg: RunConfig, fit: _Fit, model, plan, baseline: float, learn_margin: float | None, client,
            run_id: str, cache: WorkerCache | None, train_labels=None):
    """Log the trial's outcome (score and its interval, learning flag, spectra, the exported adapter); return
    score and flag."""
    score = fit.metrics[cfg.task.metric]
    margin = 0.02 if learn_margin is None else learn_margin
    final = {"score": score, "train_seconds": fit.train_seconds, "setup_seconds": fit.setup_seconds,
             "train_steps": fit.steps, "score_epoch": fit.score_epoch,
             "best_epoch": fit.best_epoch, **{f"final/{k}": v for k, v in fit.metrics.items()}}
    fit.memory["adapter_mb"] = adapter_mb(model)
    final.update(fit.memory)
    beats = score > baseline + margin if cfg.task.direction == "maximize" else score < baseline - margin
    if fit.module.last_outputs is not None and train_labels is not None:
        ci, vs_baseline, beats = learning_test(cfg.task, fit.module.last_outputs, fit.module.last_labels,
                                               train_labels, cfg.search.confidence, margin,
                                               fit.module.constant_predictions)
        final.update({"score_ci_low": ci.low, "score_ci_high": ci.high, "baseline_diff": vs_baseline.estimate,
                      "baseline_diff_ci_low": vs_baseline.low, "baseline_diff_ci_high": vs_baseline.high})
    not_learning = fit.module.constant_predictions or not beats
    final["not_learning"] = float(not_learning)
    if fit.module.last_outputs is not None:  # the scored epoch's per-example outputs, for paired comparisons
        path = save_predictions(predictions_path(cfg.output_dir, run_id), fit.module.last_outputs,
                                fit.module.last_labels)
        client.log_artifact(run_id, path, os.path.dirname(ARTIFACT))
    if plan is not None:  # LoRA's own analyses: the spectra of B A (a reference method has no such factors)
        final.update(record_spectra(model, plan, client, run_id, cfg.output_dir))
    final.update(methods.record_method(model, cfg.method, client, run_id))  # e.g. AdaLoRA's rank pattern
    if cfg.save_adapter and (plan is not None or cfg.method.name != "lora"):  # an adapter to export
        out = os.path.join(cfg.output_dir, "adapters", run_id)
        cache = cache or DEFAULT_CACHE
        fresh = fresh_model(cache.tokenizer_and_model(cfg)[1], cfg.seed, cache.pooling(cfg))
        # a quantized base is not merged: merging into 4/8-bit weights re-quantizes them (the merged model would
        # not be the one trained); the adapter is saved and reloaded onto a fresh quantized base
        final.update(export_adapter(model, fresh, next(iter(fit.datamodule.val_dataloader())), out,
                                    merge=methods.can_merge(cfg.method) and not cfg.model.quantized))
        client.log_artifacts(run_id, os.path.join(out, "adapter"), "adapter")
    if cfg.task.is_causal:  # zero-shot metrics, per-example losses, the merged model's generation check
        final.update(causal.record(cfg, fit, model, train_labels, client, run_id))
    tracking.log(client, run_id, metrics=final, tags={"score_metric": cfg.task.metric,
                                                      "not_learning": str(not_learning).lower()})
    ci = (final["score_ci_low"], final["score_ci_high"]) if "score_ci_low" in final else None
    return score, not_learning, ci


def learning_test(task, outputs, labels, train_labels, confidence: float, margin: float,
                  constant: bool | None = None):
    """The one learning test of a trial and of each rank of a nested screen: (the score's interval over dev
    examples, the paired interval of score - the trivial predictor's, learning). Learning = outputs that are not
    constant and beat the trivial predictor by more than ``margin`` on the same dev examples, with confidence:
    a head that flips a few examples by chance is not learning."""
    kw = {"is_regression": task.is_regression, "num_labels": task.num_labels, "confidence": confidence}
    ci = score_interval(task.metric, outputs, labels, **kw)
    vs = paired_difference(task.metric, baseline_outputs(task, train_labels, len(labels)), outputs, labels, **kw)
    if constant is None:  # (a module knows its own outputs' form: a causal LM's are losses, never "constant")
        constant = constant_outputs(outputs, task.is_regression)
    return ci, vs, not constant and is_gain(vs, margin, task.direction)


def factors_path(output_dir: str, run_id: str) -> str:
    return os.path.join(output_dir, "factors", f"{run_id}.pt")


def record_spectra(model, plan: lora.TargetPlan, client, run_id: str, output_dir: str) -> dict[str, float]:
    """Singular spectra of every learned update (metrics + per-layer CSV) and the A factors
    (kept for the ladder's subspace similarity); a few ms for small models."""
    rows = spectra.adapter_spectra(model, role_of=lambda n: plan.role_of.get(n, n.rsplit(".", 1)[-1]))
    path = factors_path(output_dir, run_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(spectra.lora_A_factors(model), path)
    with tempfile.TemporaryDirectory() as tmp:
        spectra.write_spectra_csv(rows, os.path.join(tmp, "spectra.csv"))
        client.log_artifact(run_id, os.path.join(tmp, "spectra.csv"), "spectra")
    client.log_artifact(run_id, path, "spectra")
    return spectra.summarize_spectra(rows)


# trainer keys added after studies were stored, with the value every trial had before them
TRAINER_KEYS_ADDED = {"accumulate_grad_batches": 1, "gradient_checkpointing": False}


def resolved_config(cfg: RunConfig) -> dict:
    """The config as the trial ran it, reproducible elsewhere: the data location absolute (GLUE folder, or the
    csv/jsonl files), the precision resolved on this machine, credentials redacted. Logged as ``config.json``
    and stored on the Optuna trial (user attr ``config``); ``rank-sweep-select`` writes its preset from it."""
    d = asdict(cfg)
    task = d["task"]
    if not cfg.task.is_causal:  # keys a classifier never reads: its record stays as before they existed
        for key in cfg.task.LM_KEYS:
            task.pop(key, None)
    for key, before in cfg.task.LM_KEYS_ADDED.items():  # at their old value: a stored study's fingerprint matches
        if key in task and task[key] == before:
            task.pop(key)
    for key, before in TRAINER_KEYS_ADDED.items():  # recorded when set: a stored study's fingerprint still matches
        if d["trainer"].get(key) == before:
            d["trainer"].pop(key)
    if d["model"].get("quantization") == "none":  # added later, as the trainer keys above
        d["model"].pop("quantization")
    if cfg.task.source == "glue" and cfg.task.resolved_data_dir():
        task["data_dir"] = os.path.abspath(os.path.expanduser(cfg.task.resolved_data_dir()))
    elif cfg.task.source in ("csv", "jsonl"):
        files = data_files(cfg.task)
        task["data_dir"], task["train_file"], task["validation_file"] = None, files["train"], files["validation"]
    if cfg.task.test_file:  # the held-out file, absolute as the others
        task["test_file"] = holdout.test_path(cfg.task)
    d["trainer"]["precision"] = resolve_precision(cfg)
    d["tracking"]["uri"] = tracking.redact(cfg.tracking.resolved_uri())
    d["search"]["storage"] = tracking.redact(d["search"]["storage"])
    return d

