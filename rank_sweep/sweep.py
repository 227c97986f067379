"""Run (or resume) a whole study: validate, open the stores, optimize, summarize.

    rank-sweep experiment=quickstart
    rank-sweep task=mrpc search.seeds=3

Everything that can reject the input (model, data, every target set, every
rank, the budget, the stores) is checked before the first trial trains.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict

import numpy as np
import optuna
import torch

from rank_sweep import ladder, lora, plots, spectra, tracking
from rank_sweep.config import RunConfig
from rank_sweep.errors import ConfigError, RankSweepError
from rank_sweep.records import aggregate, records_from_study
from rank_sweep.search import (
    Objective,
    StopWhenDone,
    _records,
    build_spec,
    default_storage,
    load_or_create_study,
    stop_reason,
    study_name,
)
from rank_sweep.select import summary_table
from rank_sweep.trial import WorkerCache, factors_path


class CostModel:
    """(targets, r) -> (LoRA params, trainable params) from the closed form, before training."""

    def __init__(self, base, cfg: RunConfig, total_params: int):
        self.base, self.family, self.total = base, cfg.model.family, total_params
        self.head = sum(p.numel() for n in lora._head_names(base) for p in getattr(base, n).parameters())
        self._plans: dict[str, lora.TargetPlan] = {}

    def plan(self, targets: str) -> lora.TargetPlan:
        if targets not in self._plans:
            self._plans[targets] = lora.plan_targets(self.base, targets.split(","), self.family)
        return self._plans[targets]

    def __call__(self, targets: str, r: int) -> tuple[int, int]:
        if targets == ladder.FULL:
            return 0, self.total
        n = self.plan(targets).lora_params(r)
        return n, n + self.head


def validate(cfg: RunConfig, cache: WorkerCache) -> ladder.LadderSpec:
    tok, base, total = cache.tokenizer_and_model(cfg)
    cache.splits(cfg, tok)
    cost = CostModel(base, cfg, total)
    spec = build_spec(cfg, cost)
    sets = spec.target_sets + spec.extend_sets
    for targets in sets:
        lora.check_rank_fits(cost.plan(targets), spec.ranks[0])
    top = max(spec.ranks)
    for targets in sets:
        try:
            lora.check_rank_fits(cost.plan(targets), top)
        except ConfigError as e:
            raise ConfigError(f"search.max_rank/ladder: {e}") from None
    cheapest = min(((cost(t, spec.ranks[0]), t) for t in spec.target_sets), key=lambda x: x[0][1])
    (lp, tp), targets = cheapest
    if ladder.over_budget(spec, targets, spec.ranks[0]):
        raise ConfigError(
            f"the budget is below the cheapest trial: {targets} r={spec.ranks[0]} needs {lp:,} LoRA params and "
            f"{tp:,} trainable params (search.budget.max_lora_params={spec.max_lora_params}, "
            f"max_trainable_params={spec.max_trainable_params})"
        )
    return spec


def parent_run(study: optuna.Study, client, experiment_id: str, cfg: RunConfig, spec: ladder.LadderSpec) -> str:
    """The study's MLflow parent run: created once, found again on resume through the study."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # the tracking store was reset: make a new parent
            pass
    s = cfg.search
    params = {"study_name": study.study_name, "strategy": s.strategy, "ladder": spec.ranks,
              "target_sets": spec.target_sets, "extend_target_sets": spec.extend_sets, "seeds": spec.seeds,
              "patience": s.patience, "min_delta": s.min_delta, "noise_k": s.noise_k, "learn_margin": s.learn_margin,
              "extend_max_rank": s.extend_max_rank, "pruner": s.pruner, "task": cfg.task.name,
              "model": cfg.model.name, "alpha_policy": cfg.lora.alpha_policy, "epochs": cfg.trainer.epochs,
              "lr": cfg.trainer.lr, **{f"budget.{k}": v for k, v in asdict(s.budget).items()}}
    run_id = tracking.start_run(client, experiment_id, f"study {study.study_name}", params,
                                tags={"kind": "study", "study_name": study.study_name})
    study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id


def _trial_line(spec: ladder.LadderSpec, metric: str):
    def line(study, trial):
        state = trial.state.name
        p = trial.params
        if not p:
            return
        decision = ""
        if state == "COMPLETE":
            lads = {lad.targets: lad for lad in ladder.plan(_records(study), spec).ladders}
            lad = lads.get(p["targets"])
            rung = next((g for g in lad.rungs if g.r == p["r"]), None) if lad else None
            decision = f"[{rung.decision}: {rung.detail}]" if rung else ""
            if trial.user_attrs.get("not_learning"):
                decision = "[not learning] " + decision
        score = f"{metric}={trial.value:.4f}" if trial.value is not None else state.lower()
        lp = trial.user_attrs.get("lora_params")
        print(f"trial {trial.number:3d}  {p['targets']:<12} r={p['r']:<3} seed={p.get('seed', '-')}  {score}  "
              f"lora_params={lp if lp is None else f'{lp:,}'}  {decision}", flush=True)
    return line


def summarize(study: optuna.Study, spec: ladder.LadderSpec, cfg: RunConfig) -> tuple[str, dict]:
    records = records_from_study(study)
    summaries = aggregate(records)
    p = ladder.plan(_records(study), spec)
    lines = [f"study {study.study_name}: {len(records)} trials, metric {cfg.task.metric} ({cfg.task.direction})", ""]
    lines.append(summary_table(summaries) if summaries else "(no completed trial)")
    lines.append("")
    decisions = {}
    for lad in p.ladders:
        plateau = f"plateau rank r={lad.plateau_rank}" if lad.plateau_rank else "no plateau rank"
        lines.append(f"ladder {lad.targets}: {plateau}; stopped: {lad.reason}")
        for g in lad.rungs:
            lines.append(f"    r={g.r:<3} {g.decision:<12} {g.detail}")
        decisions[lad.targets] = {"plateau_rank": lad.plateau_rank, "reason": lad.reason,
                                  "rungs": [asdict(g) for g in lad.rungs]}
    for ext in p.extensions:
        lines.append(f"extension: {ext}")
    return "\n".join(lines), {"ladders": decisions, "extensions": p.extensions, "summaries": summaries,
                              "records": records}


def subspace_report(info: dict, spec: ladder.LadderSpec, cfg: RunConfig, folder: str) -> list[str]:
    """The LoRA paper's section 7 for each ladder: phi between the A factors at the plateau (or lowest)
    rank and the highest rank trained, averaged over layers per role; one heatmap per ladder."""
    lines = []
    for targets, decision in info["ladders"].items():
        recs = sorted((r for r in info["records"] if r.usable and not r.not_learning and r.targets == targets
                       and r.seed == spec.seeds[0] and r.run_id), key=lambda r: r.r)
        if len(recs) < 2:
            continue
        low = next((r for r in recs if r.r == decision["plateau_rank"]), recs[0])
        high = recs[-1]
        paths = [factors_path(cfg.output_dir, r.run_id) for r in (low, high)]
        if low is high or not all(os.path.exists(p) for p in paths):
            continue
        grids = spectra.ladder_similarity(*(torch.load(p) for p in paths))
        by_role: dict[str, list] = {}
        for name, grid in grids.items():
            by_role.setdefault(name.rsplit(".", 1)[-1], []).append(grid)
        mean = {f"{role} (mean of {len(g)} layers)": np.mean(g, axis=0) for role, g in by_role.items()}
        safe = targets.replace(",", "_")
        spectra.plot_similarity_heatmap(mean, low.r, high.r, os.path.join(folder, f"subspace_{safe}.png"),
                                        title=f"{targets}: phi(A r={low.r}, A r={high.r})")
        for role, grid in mean.items():
            k, phi = spectra.reading(grid)
            lines.append(f"subspace {targets} {role}: the top {k} direction(s) learned at r={low.r} reappear at "
                         f"r={high.r} (phi({k},{k}) = {phi:.2f}; phi(1,1) = {grid[0, 0]:.2f})")
    return lines


def finish(study, client, run_id, spec, cfg, stop: str | None) -> str:
    text, info = summarize(study, spec, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sub = subspace_report(info, spec, cfg, tmp)
        except (OSError, ValueError, RuntimeError) as e:  # evidence, not a reason to lose the summary
            sub = [f"subspace similarity skipped: {e}"]
        if sub:
            text += "\n\n" + "\n".join(sub)
        with open(os.path.join(tmp, "summary.md"), "w") as f:
            f.write(text + "\n")
        if info["summaries"]:
            with open(os.path.join(tmp, "summary.csv"), "w") as f:
                f.write(summary_table(info["summaries"], fmt="csv"))
            try:
                plots.plot_rank_curves(info["summaries"], os.path.join(tmp, "rank_curves.png"), cfg.task.metric)
                plots.plot_pareto(info["summaries"], os.path.join(tmp, "pareto.png"), cfg.task.metric)
                plots.plot_learning_curves(info["records"], os.path.join(tmp, "learning_curves.png"), cfg.task.metric)
            except RankSweepError:
                pass
        with open(os.path.join(tmp, "decisions.json"), "w") as f:
            json.dump({"ladders": info["ladders"], "extensions": info["extensions"], "stop": stop}, f, indent=2)
        client.log_artifacts(run_id, tmp)
    tags = {"decision": "; ".join(f"{k}: r={v['plateau_rank']}" for k, v in info["ladders"].items())[:4000],
            "stop_reason": stop or "interrupted"}
    tracking.log(client, run_id, metrics={"n_trials": len(info["records"])}, tags=tags)
    return text


def run_study(cfg: RunConfig, cache: WorkerCache | None = None) -> optuna.Study:
    cache = cache or WorkerCache()
    t0 = time.perf_counter()
    spec = validate(cfg, cache)
    client, experiment_id = tracking.connect(cfg.tracking.resolved_uri(), cfg.tracking.experiment)
    storage_url = cfg.search.storage or default_storage(cfg)
    study = load_or_create_study(cfg, spec, storage_url)
    run_id = parent_run(study, client, experiment_id, cfg, spec)
    print(f"study {study_name(cfg)}: storage {tracking.redact(storage_url)}, mlflow "
          f"{tracking.redact(cfg.tracking.resolved_uri())} (parent run {run_id})\n"
          f"ladder {spec.ranks} x target sets {spec.target_sets} x seeds {spec.seeds}", flush=True)
    stopper = StopWhenDone(spec, cfg, _trial_line(spec, cfg.task.metric))
    stop = stop_reason(study, spec, cfg)
    status = "FINISHED"
    try:
        if stop is None:
            study.optimize(Objective(cfg, spec, cache, client, experiment_id, run_id), callbacks=[stopper],
                           catch=(Exception,), gc_after_trial=True)
            stop = stopper.reason
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        text = finish(study, client, run_id, spec, cfg, stop)
        client.set_terminated(run_id, status=status)
        print("\n" + text + f"\n\n{stop or 'interrupted'}; wall time {time.perf_counter() - t0:.0f}s; "
              f"mlflow ui --backend-store-uri {tracking.redact(cfg.tracking.resolved_uri())} --host 127.0.0.1",
              flush=True)
    return study
