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
from optuna.storages._heartbeat import is_heartbeat_enabled

from rank_sweep import ladder, lora, plots, spectra, tracking
from rank_sweep.config import RunConfig
from rank_sweep.errors import ConfigError, RankSweepError, TrackingError
from rank_sweep.records import aggregate, records_from_study
from rank_sweep.search import (
    Objective,
    StopWhenDone,
    _records,
    build_spec,
    default_storage,
    fail_stale_trials,
    load_or_create_study,
    next_point,
    open_storage,
    stop_reason,
    study_name,
)
from rank_sweep.select import summary_table
from rank_sweep.trial import WorkerCache, check_output_dir, factors_path

PARENT_ATTR = "mlflow_parent_run_id"
PARENT_SETTLE_SECONDS = 1.0  # two workers creating the parent run together both see the study attr within this


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


def _usable_run(client, run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # the tracking store was reset: make a new parent
        return False


def parent_run(study: optuna.Study, client, experiment_id: str, cfg: RunConfig, spec: ladder.LadderSpec) -> str:
    """The study's MLflow parent run: created once, found again on resume through the study.

    Workers that start together may each create one: each writes its id to the study attr unless another
    worker already did, waits :data:`PARENT_SETTLE_SECONDS`, re-reads the attr, and deletes its own run if
    another id is stored (the last write wins, and every worker reads it after the writes), so exactly one
    parent survives."""
    stored = study.user_attrs.get(PARENT_ATTR)
    if _usable_run(client, stored):
        client.update_run(stored, status="RUNNING")
        return stored
    s = cfg.search
    params = {"study_name": study.study_name, "strategy": s.strategy, "ladder": spec.ranks,
              "target_sets": spec.target_sets, "extend_target_sets": spec.extend_sets, "seeds": spec.seeds,
              "patience": s.patience, "min_delta": s.min_delta, "noise_k": s.noise_k, "learn_margin": s.learn_margin,
              "extend_max_rank": s.extend_max_rank, "pruner": s.pruner, "task": cfg.task.name,
              "model": cfg.model.name, "alpha_policy": cfg.lora.alpha_policy, "epochs": cfg.trainer.epochs,
              "lr": cfg.trainer.lr, **{f"budget.{k}": v for k, v in asdict(s.budget).items()}}
    run_id = tracking.start_run(client, experiment_id, f"study {study.study_name}", params,
                                tags={"kind": "study", "study_name": study.study_name})
    latest = study.user_attrs.get(PARENT_ATTR)
    if latest == stored:  # no other worker has written since we looked
        study.set_user_attr(PARENT_ATTR, run_id)
        time.sleep(PARENT_SETTLE_SECONDS)
        latest = study.user_attrs.get(PARENT_ATTR)
    if latest != run_id:  # another worker's parent won: use it, drop ours (it has no children yet)
        client.delete_run(run_id)
        client.update_run(latest, status="RUNNING")
        return latest
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
        if state == "FAIL":
            decision = f"[{trial.user_attrs.get('fail_reason', 'failed')}]"
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


def _factors(client, output_dir: str, run_id: str, folder: str) -> str | None:
    """The A factors of a trial: in this worker's output folder, else (another worker's trial, on another
    machine) downloaded from its MLflow run's ``spectra/`` artifacts; None if neither has them."""
    path = factors_path(output_dir, run_id)
    if os.path.exists(path):
        return path
    if client is None:
        return None
    try:
        return client.download_artifacts(run_id, f"spectra/{os.path.basename(path)}", folder)
    except Exception:  # not logged, or the store has no artifacts here: the report skips this ladder
        return None


def subspace_report(info: dict, spec: ladder.LadderSpec, cfg: RunConfig, folder: str, client=None) -> list[str]:
    """The LoRA paper's section 7 for each ladder: phi between the A factors at the plateau (or lowest)
    rank and the highest rank trained, averaged over layers per role; one heatmap per ladder."""
    lines = []
    for targets, decision in info["ladders"].items():
        recs = sorted((r for r in info["records"] if r.usable and not r.not_learning and r.targets == targets
                       and r.seed == spec.seeds[0] and r.run_id), key=lambda r: r.r)
        if len(recs) < 2:
            continue
        high = recs[-1]
        # the plateau rank against the top; a ladder that gained to its top: a rank <= top/4 (the paper: 8 vs 64)
        low = next((r for r in recs if r.r == decision["plateau_rank"] and r is not high), None)
        low = low or max((r for r in recs if r.r <= high.r // 4), key=lambda r: r.r, default=recs[0])
        if low is high:
            continue
        paths = [_factors(client, cfg.output_dir, r.run_id, folder) for r in (low, high)]
        if not all(paths):
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
            head = (f"the top {k} direction(s) learned at r={low.r} reappear at r={high.r} (phi({k},{k}) = {phi:.2f})"
                    if k else f"no top direction learned at r={low.r} reappears at r={high.r} with phi >= 0.5")
            lines.append(f"subspace {targets} {role}: {head}; phi(1,1) = {grid[0, 0]:.2f}")
    return lines


def finish(study, client, run_id, spec, cfg, stop: str | None) -> str:
    text, info = summarize(study, spec, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sub = subspace_report(info, spec, cfg, tmp, client)
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


def _running(study: optuna.Study) -> list:
    return [r for r in _records(study) if r.state == "RUNNING"]


def housekeeping(study, client, experiment_id, parent_run_id, cfg) -> list:
    """Fail the trials of killed workers and close their MLflow runs (FAILED, with the reason)."""
    failed = fail_stale_trials(study, cfg.search.heartbeat_seconds)
    for t in failed:
        print(f"trial {t.number:3d}  {t.params.get('targets', '?'):<12} r={t.params.get('r', '?'):<3} "
              f"seed={t.params.get('seed', '-')}  fail  [{t.user_attrs.get('fail_reason')}]", flush=True)
    try:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        tracking.close_orphan_runs(client, experiment_id, parent_run_id, trials)
    except Exception as e:
        raise tracking.store_failed(cfg.tracking.resolved_uri(), "closing the runs of failed trials", e) from e
    return failed


def optimize(study, objective: Objective, stopper: StopWhenDone, spec: ladder.LadderSpec, cfg: RunConfig,
             tidy, sleep=time.sleep) -> str:
    """Run trials one at a time until a stop reason; return it.

    Before each trial the trials of killed workers are failed (``tidy``). When the plan has nothing to run
    but trials are RUNNING (another worker's, or a killed one whose heartbeat is not yet stale), wait and
    look again, rather than asking Optuna for trials that have no point to run. A worker that would wait
    for a running rung's decision starts the rung above it instead (``search.speculate``)."""
    grace = cfg.search.heartbeat_seconds
    poll = min(5.0, max(1.0, grace / 3))
    if is_heartbeat_enabled(study._storage):
        lost = f"a killed one whose heartbeat goes stale in <= {grace}s"
    else:
        lost = "a killed one: this storage has no heartbeat, so only a dead worker of this machine is noticed"
    waiting_for = None
    while True:
        tidy()
        stop = stop_reason(study, spec, cfg)
        if stop:
            return stop
        if cfg.search.strategy != "tpe" and next_point(_records(study), spec)[0] is None:
            running = sorted(r.number for r in _running(study))
            if not running:  # nothing to run and nothing running: every ladder has stopped
                return "done: every ladder stopped"
            if running != waiting_for:
                print(f"waiting for {len(running)} running trial(s) {running} (another worker, or {lost})", flush=True)
                waiting_for = running
            sleep(poll)
            continue
        waiting_for = None
        study.optimize(objective, n_trials=1, callbacks=[stopper], catch=(Exception,), gc_after_trial=True)
        if objective.fatal is not None:
            raise objective.fatal
        if stopper.reason:
            return stopper.reason


def run_study(cfg: RunConfig, cache: WorkerCache | None = None) -> optuna.Study:
    cache = cache or WorkerCache()
    t0 = time.perf_counter()
    # the cheap checks first: output folder, tracking store, study storage; then model, data, ranks, budget
    check_output_dir(cfg.output_dir)
    client, experiment_id = tracking.connect(cfg.tracking.resolved_uri(), cfg.tracking.experiment)
    storage_url = cfg.search.storage or default_storage(cfg)
    storage = open_storage(storage_url, cfg.search.heartbeat_seconds)
    spec = validate(cfg, cache)
    study = load_or_create_study(cfg, spec, storage_url, storage=storage)
    try:
        run_id = parent_run(study, client, experiment_id, cfg, spec)
    except Exception as e:
        raise tracking.store_failed(cfg.tracking.resolved_uri(), "creating the study's parent run", e) from e
    print(f"study {study_name(cfg)}: storage {tracking.redact(storage_url)}, mlflow "
          f"{tracking.redact(cfg.tracking.resolved_uri())} (parent run {run_id})\n"
          f"ladder {spec.ranks} x target sets {spec.target_sets} x seeds {spec.seeds}", flush=True)
    stopper = StopWhenDone(spec, cfg, _trial_line(spec, cfg.task.metric))
    objective = Objective(cfg, spec, cache, client, experiment_id, run_id)
    stop, status = None, "FINISHED"
    try:
        stop = optimize(study, objective, stopper, spec, cfg,
                        tidy=lambda: housekeeping(study, client, experiment_id, run_id, cfg))
    except TrackingError as e:
        _wrap_up(study, client, run_id, spec, cfg, stop, "FAILED", t0)
        kept = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        raise TrackingError(
            f"{e}; the study stopped: its {kept} finished trial(s) are kept in the study storage "
            f"{tracking.redact(storage_url)}; rerun the same command to resume once the store is back"
        ) from e
    except BaseException as e:
        _wrap_up(study, client, run_id, spec, cfg, stop, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED",
                 t0)
        raise
    error = _wrap_up(study, client, run_id, spec, cfg, stop, status, t0)
    if error is not None:
        raise error
    return study


def _wrap_up(study, client, run_id, spec, cfg, stop, status, t0) -> TrackingError | None:
    """Log the summary to the parent run and close it; print the summary even if the store is gone
    (and return that failure)."""
    error = None
    try:
        text = finish(study, client, run_id, spec, cfg, stop)
        client.set_terminated(run_id, status=status)
    except Exception as e:
        error = tracking.store_failed(cfg.tracking.resolved_uri(), "logging the study's summary", e)
        text = summarize(study, spec, cfg)[0] + f"\n\n(summary not logged to MLflow: {error})"
    print("\n" + text + f"\n\n{stop or 'interrupted'}; wall time {time.perf_counter() - t0:.0f}s; "
          f"mlflow ui --backend-store-uri {tracking.redact(cfg.tracking.resolved_uri())} --host 127.0.0.1",
          flush=True)
    return error
