"""Run (or resume) a whole study: validate, open the stores, optimize, summarize.

    rank-sweep experiment=quickstart
    rank-sweep task=mrpc search.seeds=3

Everything that can reject the input (model, data, every target set, every rank, the
budget, the stores) is checked before the first trial trains. The flow of one trial:
:func:`optimize` -> ``study.optimize`` -> :class:`~rank_sweep.study.sampler.LadderSampler`
claims a point -> :class:`~rank_sweep.study.objective.Objective` trains it
(:mod:`rank_sweep.train.trial`, logged by :mod:`rank_sweep.tracking`) -> :class:`StopWhenDone` reads the storage
and plans once (:class:`~rank_sweep.study.state.StudyState`), prints its line (:mod:`rank_sweep.study.report`)
and applies the one stop rule (:func:`~rank_sweep.study.state.stop_reason`); the next claim reuses that plan.
"""

from __future__ import annotations

import time

import optuna

from rank_sweep import interrupts, tracking
from rank_sweep.config import RunConfig, method_size, targets_key
from rank_sweep.errors import ConfigError, TrackingError, TrialsFailed
from rank_sweep.results.compare import PairedComparer
from rank_sweep.results.readers import decode_trial
from rank_sweep.study import allocation
from rank_sweep.study.objective import Objective
from rank_sweep.study.report import parent_run, trial_line, wrap_up
from rank_sweep.study.sampler import LadderSampler
from rank_sweep.study.spec import LadderSpec, over_budget
from rank_sweep.study.state import StudyState, stop_reason
from rank_sweep.study.storage import load_or_create_study, open_storage
from rank_sweep.study.workers import fail_stale_trials, has_heartbeat
from rank_sweep.train import lora, methods
from rank_sweep.train.groups import GROUPS
from rank_sweep.train.loading import WorkerCache, check_output_dir


class CostModel:
    """(LoRA targets, r) -> (LoRA params, trainable params) from the closed form, before training."""

    def __init__(self, base, cfg: RunConfig, total_params: int, heads: list[str] | None = None):
        self.base, self.family, self.total = base, cfg.model.family, total_params
        heads = lora.head_names(base) if heads is None else heads  # with a trained pooler: head + pooler
        self.head = sum(p.numel() for n in heads for p in base.get_submodule(n).parameters())
        self._plans: dict[str, lora.TargetPlan] = {}
        self.causal = lora.is_causal_lm(base)

    def key(self, targets: list[str]) -> str:
        """The logged form of a target set with its groups resolved to this model's roles (``[mlp]`` on BERT:
        ``Wup,Wdown``), so that one set of matrices has one name."""
        return ",".join(self.plan(targets_key(targets)).targets)

    def plan(self, targets: str) -> lora.TargetPlan:
        if targets not in self._plans:
            self._plans[targets] = lora.plan_targets(self.base, targets.split(","), self.family)
        return self._plans[targets]

    def __call__(self, targets: str, r: int) -> tuple[int, int]:
        n = self.plan(targets).lora_params(r)
        return n, n + self.head


def validate(cfg: RunConfig, cache: WorkerCache) -> LadderSpec:
    s = cfg.search
    tok, base, total = cache.tokenizer_and_model(cfg)
    cache.splits(cfg, tok)
    cost = CostModel(base, cfg, total, cache.trained_heads(cfg))
    spec = build_spec(cfg, cost, comparer(cfg))
    sets = spec.target_sets + spec.extend_sets
    for targets in sets:
        lora.check_rank_fits(cost.plan(targets), spec.ranks[0])
    alloc = s.allocation_sets if s.allocation_sets is not None else allocation.DEFAULT_SETS[cost.causal]
    for note in dict.fromkeys(n for t in (*s.target_sets, *s.extend_target_sets, *alloc)
                              for n in cost.plan(targets_key(t)).notes):
        print(f"target group {note}", flush=True)
    if len(set(spec.target_sets)) != len(spec.target_sets):
        raise ConfigError(f"search.target_sets={s.target_sets!r} is not valid: two of them are the same matrices on "
                          f"this model ({', '.join(spec.target_sets)}); give each set once")
    for targets, r in sorted(allocation.candidates(spec)):
        try:
            lora.check_rank_fits(cost.plan(targets), r)
        except ConfigError as e:
            raise ConfigError(f"search.allocation_budgets: {targets} at r={r}: {e}") from None
    top = max(spec.ranks)
    for targets in sets:
        try:
            lora.check_rank_fits(cost.plan(targets), top)
        except ConfigError as e:
            raise ConfigError(f"search.max_rank/ladder: {e}") from None
    for method in cfg.search.references():  # a reference method that cannot train on this model: say so now
        try:
            methods.check_method_fits(base, method, cfg.model.family, cfg.task.max_seq_length)
        except ConfigError as e:
            raise ConfigError(f"search.reference_methods: {e}") from None
    if spec.rank_limit is not None and spec.rank_limit < spec.ranks[0]:
        raise ConfigError(f"search.budget.max_rank={spec.rank_limit} is below the first rung r={spec.ranks[0]}: "
                          f"raise it or lower search.start_rank / search.ladder")
    cheapest = min(((cost(t, spec.ranks[0]), t) for t in spec.target_sets), key=lambda x: x[0][1])
    (lp, tp), targets = cheapest
    if over_budget(spec, targets, spec.ranks[0]):
        raise ConfigError(
            f"the budget is below the cheapest trial: {targets} r={spec.ranks[0]} needs {lp:,} LoRA params and "
            f"{tp:,} trainable params (search.budget.max_lora_params={spec.max_lora_params}, "
            f"max_trainable_params={spec.max_trainable_params})"
        )
    return spec


def comparer(cfg: RunConfig) -> PairedComparer:
    """The paired comparison the ladder decides with: on this task's metric, from the trials' predictions."""
    return PairedComparer(cfg.task.metric, cfg.task.is_regression, cfg.task.num_labels, cfg.task.direction,
                          cfg.output_dir, cfg.tracking.resolved_uri(), cfg.search.confidence)


def build_spec(cfg: RunConfig, cost=None, compare=None) -> LadderSpec:
    s = cfg.search
    key = getattr(cost, "key", targets_key)  # with the model at hand: groups resolved to its roles
    alloc = s.allocation_sets
    if alloc is None:  # by the model: an encoder's, a causal LM's (conf/search/ladder.yaml)
        alloc = allocation.DEFAULT_SETS[bool(getattr(cost, "causal", False))]
    if s.strategy not in ("ladder", "nested"):
        alloc = []
    return LadderSpec(
        target_sets=[key(t) for t in s.target_sets], ranks=s.ranks,
        seeds=[cfg.seed + i for i in range(s.seeds)], patience=s.patience, min_delta=s.min_delta,
        noise_k=s.noise_k, direction=cfg.task.direction, extend=s.extend,
        extend_sets=[key(t) for t in s.extend_target_sets], extend_max_rank=s.extend_max_rank,
        include_full=s.full_reference(),
        head_reference=not cfg.task.is_causal if s.head_reference is None else s.head_reference,
        references=[(m.name, method_size(m)) for m in s.references()], reference_lr=s.reference_lrs(),
        max_retries=s.max_retries, cost=cost,
        max_lora_params=s.budget.max_lora_params, max_trainable_params=s.budget.max_trainable_params,
        rank_limit=s.budget.max_rank, max_memory_mb=s.budget.max_memory_mb,
        grid=s.strategy == "grid", tuned=s.strategy == "tpe", nested=s.strategy == "nested", speculate=s.speculate,
        noise_seeds=[cfg.seed + s.seeds + i for i in range(s.noise_seeds)], compare=compare, confidence=s.confidence,
        lr_probe=[] if s.strategy != "ladder" else [float(m) for m in s.lr_probe], base_lr=cfg.trainer.lr,
        lr_bracket=[] if s.strategy != "ladder" or len(s.lr_bracket) < 2 else [float(m) for m in s.lr_bracket],
        lr_check={True: "lower", False: ""}.get(s.lr_check, s.lr_check), lr_shared=s.lr_shared,
        allocation_sets=list(dict.fromkeys(key(t) for t in alloc)), allocation_budgets=list(s.allocation_budgets),
        labels={key(t): targets_key(t) for t in (*s.target_sets, *s.extend_target_sets, *alloc)
                if any(x in GROUPS for x in t)},
    )


class StopWhenDone:
    """Callback after each trial: read the study once (``state``), print the trial's line from that plan, and stop
    the study when :func:`~rank_sweep.study.state.stop_reason` says so."""

    def __init__(self, spec: LadderSpec, cfg: RunConfig, printer, state: StudyState | None = None):
        self.spec, self.cfg, self.printer = spec, cfg, printer
        self.state = state
        self.reason: str | None = None

    def __call__(self, study, trial):
        state = (self.state or StudyState(study, self.spec)).refresh()  # one read and one plan per trial event
        self.printer(study, trial)
        reason = stop_reason(study, self.spec, self.cfg, state)
        if reason:
            self.reason = reason
            study.stop()


def housekeeping(study, client, experiment_id, parent_run_id, cfg) -> list:
    """Fail the trials of killed workers and close their MLflow runs (FAILED, with the reason)."""
    failed = fail_stale_trials(study, cfg.search.heartbeat_seconds)
    for t in failed:
        print(f"trial {t.number:3d}  {decode_trial(t) if t.params else '?'}  fail  [{t.user_attrs.get('fail_reason')}]",
              flush=True)
    try:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        tracking.close_orphan_runs(client, experiment_id, parent_run_id, trials)
    except Exception as e:
        raise tracking.store_failed(cfg.tracking.resolved_uri(), "closing the runs of failed trials", e) from e
    return failed


def optimize(study, objective: Objective, stopper: StopWhenDone, spec: LadderSpec, cfg: RunConfig,
             tidy, sleep=time.sleep, state: StudyState | None = None,
             heartbeat: bool = True) -> str:
    """Run trials one at a time until a stop reason; return it.

    Before each trial the trials of killed workers are failed (``tidy``). When the plan has nothing to run
    but trials are RUNNING (another worker's, or a killed one whose heartbeat is not yet stale), wait and
    look again, rather than asking Optuna for trials that have no point to run. A worker that would wait
    for a running rung's decision starts the rung above it instead (``search.speculate``). ``heartbeat``: whether
    the storage has one (:func:`~rank_sweep.study.workers.has_heartbeat`)."""
    grace = cfg.search.heartbeat_seconds
    poll = min(5.0, max(1.0, grace / 3))
    if heartbeat:
        lost = f"a killed one whose heartbeat goes stale in <= {grace}s"
    else:
        lost = "a killed one: this storage has no heartbeat, so only a dead worker of this machine is noticed"
    waiting_for = None
    state = state or stopper.state or StudyState(study, spec)
    while True:
        if tidy():
            state.invalidate()  # stale trials were failed: their points are to run again
        step = state.next_step(cfg)
        if step.action == "stop":
            return step.reason
        if step.action == "wait":
            running = step.running
            state.invalidate()  # look again after the pause
            if running != waiting_for:
                print(f"waiting for {len(running)} running trial(s) {running} (another worker, or {lost})", flush=True)
                waiting_for = running
            sleep(poll)
            continue
        waiting_for = None
        study.optimize(objective, n_trials=1, callbacks=[stopper], catch=(Exception,), gc_after_trial=True)
        interrupts.release()  # the trial is in both stores: a signal that waited for it stops the study here
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
    storage_url = cfg.storage_url()
    storage = open_storage(storage_url, cfg.search.heartbeat_seconds)
    spec = validate(cfg, cache)
    study = load_or_create_study(cfg, spec, storage_url, storage=storage)
    pooling = cache.pooling(cfg)  # model.pooling as resolved for this checkpoint (None: a causal LM, no head)
    try:
        run_id = parent_run(study, client, experiment_id, cfg, spec, pooling)
        fixed = tracking.reconcile_runs(client, experiment_id, run_id, {t.number: t for t in study.get_trials()})
    except Exception as e:
        raise tracking.store_failed(cfg.tracking.resolved_uri(), "creating the study's parent run", e) from e
    if fixed:
        print(f"reconciled: {len(fixed)} MLflow run(s) FINISHED whose Optuna trial is FAIL marked FAILED "
              f"({', '.join(fixed)})", flush=True)
    head = ""
    if pooling:
        study.set_user_attr("pooling", pooling)  # the summary's header names the head every trial had
        head = f"; head: pooling={pooling} (model.pooling={cfg.model.pooling})"
    print(f"study {cfg.study_name()}: storage {tracking.redact(storage_url)}, mlflow "
          f"{tracking.redact(cfg.tracking.resolved_uri())} (parent run {run_id})\n"
          f"ladder {spec.ranks} x target sets {spec.target_sets} x seeds {spec.seeds}{head}", flush=True)
    state = StudyState(study, spec)  # the storage read and the plan of each trial event, shared by all three:
    stopper = StopWhenDone(spec, cfg, trial_line(spec, cfg.task.metric, state), state)  # the trial's line, the stop rule
    if isinstance(study.sampler, LadderSampler):
        study.sampler.state = state  # and the next claim
    objective = Objective(cfg, spec, cache, client, experiment_id, run_id)
    stop, status = None, "FINISHED"
    try:
        stop = optimize(study, objective, stopper, spec, cfg,
                        tidy=lambda: housekeeping(study, client, experiment_id, run_id, cfg),
                        heartbeat=has_heartbeat(storage))
    except TrackingError as e:
        wrap_up(study, client, run_id, spec, cfg, stop, "FAILED", t0)
        kept = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        raise TrackingError(
            f"{e}; the study stopped: its {kept} finished trial(s) are kept in the study storage "
            f"{tracking.redact(storage_url)}; rerun the same command to resume once the store is back"
        ) from e
    except BaseException as e:
        wrap_up(study, client, run_id, spec, cfg, stop, "KILLED" if interrupts.was_interrupted(e) else "FAILED",
                 t0)
        raise
    with interrupts.committing():  # a signal during the summary lets it finish, then stops with 130 / 143
        error = wrap_up(study, client, run_id, spec, cfg, stop, status, t0)
    if error is not None:
        raise error
    if stop and stop.startswith("stopped: the last"):  # not a finished study: the command must not exit 0
        raise TrialsFailed(f"{stop}; the finished trials are kept: fix the cause and rerun the same command to "
                           f"resume")
    return study
