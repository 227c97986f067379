"""What a study tells: its MLflow parent run, a console line per trial, the summary with each
ladder's decisions, the subspace similarity of each ladder, and the artifacts of the parent run.

    text, info = summarize(study, spec, cfg)     # the table and the verdicts, also for a finished study
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

from rank_sweep import tracking
from rank_sweep.analysis import plots, spectra
from rank_sweep.config import RunConfig
from rank_sweep.errors import RankSweepError, TrackingError
from rank_sweep.results import holdout
from rank_sweep.results.compare import PairedComparer
from rank_sweep.results.readers import decode_trial, records_from_study
from rank_sweep.results.records import aggregate
from rank_sweep.results.tables import summary_table
from rank_sweep.study import allocation, page
from rank_sweep.study.history import screened_records
from rank_sweep.study.plan import plan
from rank_sweep.study.rungs import calibration_lines
from rank_sweep.study.sampler import trial_records
from rank_sweep.study.spec import LadderSpec
from rank_sweep.study.workers import WORKER_ATTR, this_worker, worker_is_gone
from rank_sweep.train.trial import factors_path

PARENT_ATTR = "mlflow_parent_run_id"

PARENT_SETTLE_SECONDS = 1.0  # two workers creating the parent run together both see the study attr within this


def _usable_run(client, run_id: str | None, uri: str) -> bool:
    """Whether the stored parent run can be used again. Only a run the store does not have (it was reset) or
    has deleted is replaced; any other error (a store that does not answer for a moment) stops the study
    with one line, rather than opening a second parent run beside the first."""
    if not run_id:
        return False
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception as e:
        if getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":  # MLflow's code, from any store
            return False
        raise tracking.store_failed(uri, f"reading the study's parent run {run_id}", e) from e


def parent_run(study: optuna.Study, client, experiment_id: str, cfg: RunConfig, spec: LadderSpec,
               pooling: str | None = None) -> str:
    """The study's MLflow parent run: created once, found again on resume through the study.

    Workers that start together may each create one: each writes its id to the study attr unless another
    worker already did, waits :data:`PARENT_SETTLE_SECONDS`, re-reads the attr, and deletes its own run if
    another id is stored (the last write wins, and every worker reads it after the writes), so exactly one
    parent survives."""
    stored = study.user_attrs.get(PARENT_ATTR)
    if _usable_run(client, stored, cfg.tracking.resolved_uri()):
        client.update_run(stored, status="RUNNING")
        return stored
    s = cfg.search
    params = {"study_name": study.study_name, "strategy": s.strategy, "ladder": spec.ranks,
              "target_sets": spec.target_sets, "extend_target_sets": spec.extend_sets, "seeds": spec.seeds,
              "patience": s.patience, "min_delta": s.min_delta, "noise_k": s.noise_k, "learn_margin": s.learn_margin,
              "extend_max_rank": s.extend_max_rank, "pruner": s.pruner, "task": cfg.task.name,
              "model": cfg.model.label, "direction": cfg.task.direction, "metric": cfg.task.metric,
              "alpha_policy": cfg.lora.alpha_policy, "epochs": cfg.trainer.epochs, "pooling": pooling,
              "lr": cfg.trainer.lr, "confidence": s.confidence, "noise_seeds": spec.noise_seeds,
              "head_reference": spec.head_reference, "lr_probe": spec.lr_probe,
              "lr_bracket": spec.lr_bracket, "lr_check": spec.lr_check or False, "lr_shared": spec.lr_shared,
              "reference_methods": [m for m, _ in spec.references] + (["full"] if spec.include_full else []),
              **({"reference_lr": {f"{m}" + (f" {r}" if r else ""): lr for (m, r), lr in spec.reference_lr.items()}}
                 if spec.reference_lr else {}),
              **({"nested_scale": s.nested_scale, "nested_frozen": s.nested_frozen} if spec.nested else {}),
              **{f"budget.{k}": v for k, v in asdict(s.budget).items()}}
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


def trial_line(spec: LadderSpec, metric: str, study_state=None):
    """The console line of a finished trial, with its rung's verdict from the plan that ``study_state`` (the
    study's :class:`~rank_sweep.study.state.StudyState`, refreshed for this trial event) holds; else planned here."""
    def line(study, trial):
        if not trial.params:
            return
        point = decode_trial(trial)
        state, decision = trial.state.name, ""
        if state == "COMPLETE" and spec.tuned:  # TPE: no ladder, so no rung verdict; show what it drew
            decision = "[" + ", ".join(f"{k}={v:.3g}" for k, v in point.values) + "]"
        elif state == "COMPLETE":
            planned = study_state.plan if study_state is not None else plan(trial_records(study), spec)
            lad = next((lad for lad in planned.ladders if lad.targets == point.row), None)
            rung = next((g for g in lad.rungs if g.r == point.r and g.lr == point.lr), None) if lad else None
            row = next((x for x in planned.allocation if (x.targets, x.r, x.lr) == (point.row, point.r, point.lr)),
                       None)
            decision = (f"[{rung.decision}: {rung.detail}]" if rung else "" if row is None else
                        f"[allocation at {row.budget:,} LoRA params: {row.lora_params:,} ({row.mismatch:+.1%})]")
            if point.kind == "screen":
                decision = f"[nested screen: ranks {', '.join(trial.user_attrs.get('nested', {}))} scored by truncation]"
            if trial.user_attrs.get("not_learning"):
                decision = "[not learning] " + decision
        score = f"{metric}={trial.value:.4f}" if trial.value is not None else state.lower()
        low, high = trial.user_attrs.get("score_ci_low"), trial.user_attrs.get("score_ci_high")
        if trial.value is not None and low is not None and high is not None:
            score += f" [{low:.4f}, {high:.4f}]"
        if state == "FAIL":
            decision = f"[{trial.user_attrs.get('fail_reason', 'failed')}]"
        lp = trial.user_attrs.get("lora_params")
        lr = f" lr={point.lr:g}" if point.lr is not None and not spec.tuned else ""  # the trial's own lr
        print(f"trial {trial.number:3d}  {point.row:<12} r={point.r:<3} seed={trial.params.get('seed', '-')}{lr}  "
              f"{score}  lora_params={lp if lp is None else f'{lp:,}'}  {decision}", flush=True)
    return line


def summarize(study: optuna.Study, spec: LadderSpec, cfg: RunConfig) -> tuple[str, dict]:
    records = records_from_study(study)
    screened = [x for rec in records if rec.nested for x in screened_records(rec)]  # search=nested's rows
    summaries = aggregate(records + screened, cfg.search.confidence, cfg.task.direction)
    # report-only: the held-out column is read from predictions/holdout.npz, which no decision below reads
    held = (holdout.held_out(summaries, records, holdout.holdout_reader(spec.compare))
            if isinstance(spec.compare, PairedComparer) else {})
    pooling = study.user_attrs.get("pooling")
    head = f", head pooling={pooling}" if pooling else ""
    lines = [f"study {study.study_name}: {len(records)} trials, metric {cfg.task.metric} ({cfg.task.direction}){head}",
             ""]
    lines.append(summary_table(summaries, held=held) if summaries else "(no completed trial)")
    if held:
        lines.append(f"{holdout.source_line(held, summaries, records, spec.compare)}; no decision reads them (the "
                     f"verdicts below use the decision split only)")
    lines.append("")
    if spec.tuned:  # TPE draws points, it does not climb ladders: report its best configurations, no verdicts
        sign = 1.0 if cfg.task.direction == "maximize" else -1.0
        best = sorted((s for s in summaries if s.mean is not None), key=lambda s: -sign * s.mean)[:5]
        lines.append("best trials (TPE: no ladder, so no plateau verdict):")
        lines += [f"    {s.label}: {s.mean:.4f} (trials {', '.join(map(str, s.numbers))})" for s in best]
        return "\n".join(lines), {"ladders": {}, "extensions": [], "summaries": summaries, "records": records,
                                   "best": [s.label for s in best], "verdicts": {}, "held": held}
    p = plan(trial_records(study), spec)
    decisions = {}
    for lad in p.ladders:
        plateau = f"plateau rank r={lad.plateau_rank}" if lad.plateau_rank else "no plateau rank"
        plateau += " (depends on the learning rate)" if lad.lr_dependent else ""
        lines.append(f"ladder {lad.targets}: {plateau}; stopped: {lad.reason}")
        if lad.calibration is not None and lad.calibration.tried:
            lines += ["    " + x for x in calibration_lines(lad.calibration, spec.ranks[0])]
        if lad.lr_from is not None:
            lines.append(f"    lr: climbs at lr {spec.base_lr if lad.lr is None else lad.lr:g}, the lr {lad.lr_from}'s "
                         f"bracket chose (search.lr_shared: no bracket of its own)")
        if lad.lr_verdict:
            lines.append(f"    across lr: {lad.lr_verdict}")
        if lad.probes:
            climbs = f"climbs at lr {lad.lr:g}" if lad.lr is not None else f"stays at lr {spec.base_lr:g}: no probe learned"
            lines.append(f"    lr probe ({climbs}): " + "; ".join(lad.probes))
        if lad.plateau_rank and any(g.diff_ci_low is not None for g in lad.rungs):
            lines.append(f"    confidence: r={lad.plateau_rank} is the lowest rank not shown worse than the ladder's "
                         f"best by more than min_delta {spec.min_delta:g} ({spec.confidence:.0%} paired intervals "
                         f"on the same dev examples)")
        for g in lad.rungs:
            lines.append(f"    r={g.r:<3} {g.decision:<12} {g.detail}")
        decisions[lad.targets] = {"plateau_rank": lad.plateau_rank, "reason": lad.reason,
                                  "lr": spec.base_lr if lad.lr is None else lad.lr, "lr_probes": lad.probes,
                                  **({"lr_bracket": asdict(lad.calibration)} if lad.calibration else {}),
                                  **({"lr_from": lad.lr_from} if lad.lr_from else {}),
                                  **({"lr_verdict": lad.lr_verdict, "lr_dependent": lad.lr_dependent}
                                     if lad.calibration or lad.lr_from else {}),
                                  "rungs": [asdict(g) for g in lad.rungs]}
        if lad.screen is not None:  # search=nested: what the screen decided, before the confirmations
            found = f"plateau rank r={lad.screen.plateau_rank}" if lad.screen.plateau_rank else "no plateau rank"
            lines.append(f"    screened (one nested-rank training at r={spec.ranks[-1]}): {found}; {lad.screen.reason}")
            lines += [f"      screened r={g.r:<3} {g.decision:<12} {g.detail}" for g in lad.screen.rungs]
            decisions[lad.targets]["screen"] = {"plateau_rank": lad.screen.plateau_rank, "reason": lad.screen.reason,
                                                "rungs": [asdict(g) for g in lad.screen.rungs]}
    for ext in p.extensions:
        lines.append(f"extension: {ext}")
    for row, found in p.references.items():
        lines.append(f"reference {row}: lr bracket {found}")
    table, rows = allocation.report(p.allocation, records, spec)  # one budget over other target sets
    lines += [""] + table if table else []
    verdicts = {(lad.targets, g.r, g.lr): g for lad in p.ladders for g in lad.rungs}
    return "\n".join(lines).rstrip("\n"), {"ladders": decisions, "extensions": p.extensions, "summaries": summaries,
                                           "records": records, "verdicts": verdicts, "held": held, "allocation": rows}


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


def subspace_report(info: dict, spec: LadderSpec, cfg: RunConfig, folder: str, client=None) -> list[str]:
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
        plots.plot_similarity_heatmap(mean, low.r, high.r, os.path.join(folder, f"subspace_{safe}.png"),
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
                f.write(summary_table(info["summaries"], fmt="csv", decisions=info["verdicts"], held=info["held"]))
            skipped = draw_plots(info, cfg, tmp)
            if skipped:
                text += "\n\n" + "\n".join(skipped)
                with open(os.path.join(tmp, "summary.md"), "w") as f:
                    f.write(text + "\n")
        with open(os.path.join(tmp, "decisions.json"), "w") as f:
            json.dump({"ladders": info["ladders"], "extensions": info["extensions"], "stop": stop,
                       **({"allocation": info["allocation"]} if info.get("allocation") else {})}, f, indent=2)
        if info["summaries"]:
            try:  # the page is a view of the above: a failure is named, the summary is still logged
                text += f"\n\nreport: {page.study_page(study, info, text, cfg, run_id, tmp)} (and the parent run's report.html)"
            except (RankSweepError, ValueError, OSError) as e:
                text += f"\n\nreport.html skipped: {type(e).__name__}: {str(e).strip()[:200]}"
        client.log_artifacts(run_id, tmp)
    tags = {"decision": "; ".join(f"{k}: r={v['plateau_rank']}" for k, v in info["ladders"].items())[:4000],
            "stop_reason": stop or "interrupted"}
    tracking.log(client, run_id, metrics={"n_trials": len(info["records"])}, tags=tags)
    return text


def draw_plots(info: dict, cfg: RunConfig, folder: str) -> list[str]:
    """The study's plots, each on its own: one that fails is named in one line, the others are still drawn."""
    d = cfg.task.direction
    jobs = {"rank_curves.png": lambda path: plots.plot_rank_curves(info["summaries"], path, cfg.task.metric,
                                                                   info.get("held")),
            "pareto.png": lambda path: plots.plot_pareto(info["summaries"], path, cfg.task.metric, direction=d),
            "learning_curves.png": lambda path: plots.plot_learning_curves(info["records"], path, cfg.task.metric)}
    if any(x.peak_memory_mb is not None for x in info["summaries"]):  # the same trade-off against measured memory
        jobs["pareto_memory.png"] = lambda path: plots.plot_pareto(info["summaries"], path, cfg.task.metric,
                                                                  direction=d, x="peak_memory_mb")
    skipped = []
    for name, draw in jobs.items():
        try:
            draw(os.path.join(folder, name))
        except (RankSweepError, ValueError, OSError, RuntimeError) as e:  # evidence, not a reason to lose the rest
            skipped.append(f"plot {name} skipped: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    return skipped


def others_running(study) -> list[int]:
    """Trials of other workers still running (this process's own are finished by the time it wraps up)."""
    me = this_worker()
    return [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if t.system_attrs.get(WORKER_ATTR) != me and not worker_is_gone(t.system_attrs.get(WORKER_ATTR))]


def wrap_up(study, client, run_id, spec, cfg, stop, status, t0) -> TrackingError | None:
    """Log the summary to the parent run and close it; print the summary even if the store is gone
    (and return that failure). While other workers still train the study's trials, the parent run stays
    RUNNING: the worker that finishes the study closes it (each worker's wrap-up logs the summary so far)."""
    error = None
    try:
        text = finish(study, client, run_id, spec, cfg, stop)
        running = others_running(study)
        if running and status == "FINISHED":
            text += (f"\n\nparent run {run_id} left RUNNING: {len(running)} trial(s) {running} of other workers "
                     f"still train; the last worker to finish closes it")
        else:
            client.set_terminated(run_id, status=status)
    except Exception as e:
        error = tracking.store_failed(cfg.tracking.resolved_uri(), "logging the study's summary", e)
        text = summarize(study, spec, cfg)[0] + f"\n\n(summary not logged to MLflow: {error})"
    print("\n" + text + f"\n\n{stop or 'interrupted'}; wall time {time.perf_counter() - t0:.0f}s; "
          f"mlflow ui --backend-store-uri {tracking.redact(cfg.tracking.resolved_uri())} --host 127.0.0.1",
          flush=True)
    return error
