"""Benchmark of ratios: every figure is two things measured in this run, on this machine.

    make bench-quick     # python experiments/benchmarks/bench.py --quick   (< 15 min on 2 cores)
    make bench           # python experiments/benchmarks/bench.py           (real numbers)

Writes bench.json and bench.md (a markdown table) in the working directory.
Real model (all-MiniLM-L6-v2) and real data (SST-2 from $GLUE_DIR), subsampled as
printed. Medians of several repeats, so a noisy machine moves numerator and
denominator alike. The ladder-vs-grid pair runs the grid as a real study and
replays the ladder's decisions on the grid's results (trials are seeded and
deterministic, so the ladder would have trained exactly those points).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rank_sweep import data as data_mod  # noqa: E402
from rank_sweep import ladder, lora  # noqa: E402
from rank_sweep.config import LoraConfig, RunConfig, SearchConfig, TaskConfig, TrainerConfig  # noqa: E402
from rank_sweep.records import records_from_study  # noqa: E402
from rank_sweep.search import build_spec  # noqa: E402
from rank_sweep.select import Budget, select  # noqa: E402
from rank_sweep.trial import WorkerCache, prepare, run_trial  # noqa: E402

TARGETS = {"overhead_ratio": ("<=", 1.03), "setup_seconds": ("<=", 1.0), "lora_vs_full_step_ratio": ("<=", 0.65),
           "merged_latency_ratio": ("<=", 1.02), "mfu": (">=", 0.5), "bf16_vs_fp32_step_ratio": ("<=", 0.65),
           "ladder_vs_grid_compute": ("<=", 0.35)}


def base_cfg(args, tmp: str, **trainer) -> RunConfig:
    task = TaskConfig(name="sst2", glue_name="SST-2", max_train_samples=args.train_samples,
                      max_eval_samples=args.eval_samples, max_seq_length=64)
    tr = TrainerConfig(epochs=args.epochs, lr=1e-3, progress_bar=False, **trainer)
    cfg = RunConfig(task=task, trainer=tr, lora=LoraConfig(r=8, targets=["Wq", "Wv"]), output_dir=tmp)
    cfg.tracking.uri = f"sqlite:///{tmp}/mlflow.db"
    cfg.tracking.log_config_artifact = True
    return cfg


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bare_loop(cfg: RunConfig, cache: WorkerCache) -> None:
    """The same optimizer steps as a trial, in plain PyTorch + PEFT: the overhead's denominator."""
    from transformers import get_linear_schedule_with_warmup

    from rank_sweep.metrics import compute_metrics

    torch.manual_seed(cfg.seed)
    tok, model, tokenized, _, _, _ = prepare(cfg, cache)
    dm = data_mod.GlueDataModule(tokenized, tok, batch_size=cfg.trainer.batch_size,
                                 eval_batch_size=cfg.trainer.eval_batch_size, seed=cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay)
    steps = cfg.trainer.epochs * dm.steps_per_epoch
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * steps), steps)
    bf16 = cfg.trainer.precision == "bf16-mixed"
    for _ in range(cfg.trainer.epochs):
        model.train()
        for batch in dm.train_dataloader():
            batch.pop("length", None)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        preds, labels = [], []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for batch in dm.val_dataloader():
                batch.pop("length", None)
                labels.append(batch.pop("labels"))
                preds.append(model(**batch).logits.float().argmax(-1))
        compute_metrics(cfg.task, torch.cat(preds).numpy(), torch.cat(labels).numpy())


def fixed_batch(tok, n=32, length=64):
    ids = torch.randint(1000, 20000, (n, length))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (n,))}


def step_time(model, batch, bf16: bool, repeats: int) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    return median_time(step, repeats)


def peak_rss_mb(mode: str) -> float:
    """Peak resident memory of one training step in a fresh process (LoRA or full)."""
    code = (
        "import resource, sys, torch; sys.path.insert(0, %r);"
        "from experiments.benchmarks.bench import _one_step; _one_step(%r);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    ) % (ROOT, mode)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _one_step(mode: str) -> None:
    cache = WorkerCache()
    cfg = RunConfig()
    cfg.lora.full_finetune = mode == "full"
    tok, model, *_ = prepare(cfg, cache)
    step_time(model, fixed_batch(tok), bf16=True, repeats=2)


def matmul_peak_flops(bf16: bool, n: int = 2048, repeats: int = 5) -> float:
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n**3 / median_time(lambda: a @ b, repeats)


def train_flops_per_token(model, seq: float, n_layers: int, d: int) -> float:
    """Forward 2N + backward 2N (activation grads through frozen weights) per token over the
    non-embedding weights, plus attention scores (QK^T, AV) forward and backward."""
    n = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name and p.ndim >= 2)
    return 4 * n + 4 * 2 * n_layers * seq * d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench.json")
    args = ap.parse_args()
    q = args.quick
    args.train_samples, args.eval_samples, args.epochs = (512, 256, 2) if q else (4000, 872, 3)
    repeats = 3 if q else 5
    if not os.environ.get("GLUE_DIR"):
        sys.exit("set GLUE_DIR to a GLUE folder (e.g. ../shared/glue)")
    res: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "torch": torch.__version__, "threads": torch.get_num_threads()},
                 "mode": "quick" if q else "full",
                 "subsample": {"task": "sst2", "train": args.train_samples, "eval": args.eval_samples,
                               "epochs": args.epochs, "max_seq_length": 64, "batch_size": 32}}
    tmp = tempfile.mkdtemp(prefix="rank_sweep_bench_")
    cache = WorkerCache()
    cfg = base_cfg(args, tmp, precision="bf16-mixed")

    # 1. overhead and set-up: trials after the first in one worker
    run_trial(cfg, cache=cache)  # warm: base model and tokenized data now cached
    setups, trial_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        r = run_trial(cfg, cache=cache)
        trial_times.append(time.perf_counter() - t)
        setups.append(r.setup_seconds)
    bare = median_time(lambda: bare_loop(cfg, cache), repeats)
    res["overhead_ratio"] = statistics.median(trial_times) / bare
    res["trial_seconds"], res["bare_loop_seconds"] = statistics.median(trial_times), bare
    res["setup_seconds"] = statistics.median(setups)
    print(f"overhead {res['overhead_ratio']:.3f}, setup {res['setup_seconds']:.2f}s", flush=True)

    # 2. LoRA vs full step, merged/unmerged latency, MFU, bf16 vs fp32 step
    tok, lora_model, *_ = prepare(cfg, cache)
    full_cfg = copy.deepcopy(cfg)
    full_cfg.lora.full_finetune = True
    _, full_model, *_ = prepare(full_cfg, cache)
    batch = fixed_batch(tok)
    t_lora = step_time(lora_model, batch, True, repeats * 2)
    t_full = step_time(full_model, batch, True, repeats * 2)
    t_lora32 = step_time(lora_model, batch, False, repeats * 2)
    res["lora_step_seconds"], res["full_step_seconds"] = t_lora, t_full
    res["lora_vs_full_step_ratio"] = t_lora / t_full
    res["bf16_vs_fp32_step_ratio"] = t_lora / t_lora32
    res["peak_rss_mb"] = {"lora": peak_rss_mb("lora"), "full": peak_rss_mb("full")}

    infer = {k: v for k, v in batch.items() if k != "labels"}
    base = cache.tokenizer_and_model(cfg)[1].eval()
    merged = lora.merged_copy(lora_model).eval()
    lora_model.eval()

    def latency(m):
        with torch.no_grad():
            m(**infer)
            return median_time(lambda: m(**infer), repeats * 4)

    t_base = latency(base)
    res["merged_latency_ratio"] = latency(merged) / t_base
    res["unmerged_latency_ratio"] = latency(lora_model) / t_base

    tokens_per_batch = float(batch["attention_mask"].sum())
    mc = base.config
    flops = train_flops_per_token(base, 64, mc.num_hidden_layers, mc.hidden_size) * tokens_per_batch
    peak = matmul_peak_flops(bf16=True)
    res["mfu"] = flops / t_lora / peak
    res["peak_matmul_tflops_bf16"] = peak / 1e12
    print(f"lora/full {res['lora_vs_full_step_ratio']:.3f}, merged {res['merged_latency_ratio']:.3f}, "
          f"mfu {res['mfu']:.3f}", flush=True)

    # 3. bf16 vs fp32 score difference: one trial each way
    s16 = run_trial(cfg, cache=cache).score
    s32 = run_trial(base_cfg(args, tmp, precision="32-true"), cache=cache).score
    res["bf16_vs_fp32_score_diff_points"] = 100 * (s16 - s32)

    # 4. ladder vs grid: the grid as a real study, the ladder replayed on its results
    from rank_sweep.sweep import run_study

    gcfg = base_cfg(args, tmp, precision="bf16-mixed")
    gcfg.search = SearchConfig(strategy="grid", max_rank=64, target_sets=[["Wq"], ["Wq", "Wv"]],
                               extend_target_sets=[["Wq", "Wk", "Wv", "Wo"]], study_name="bench-grid",
                               storage=f"sqlite:///{tmp}/optuna.db")
    study = run_study(gcfg, cache=cache)
    grid = [r for r in records_from_study(study) if r.usable]
    steps = {(t.params["targets"], t.params["r"]): t.user_attrs.get("train_steps", 0) for t in study.trials if t.params}
    lcfg = copy.deepcopy(gcfg)
    lcfg.search.strategy = "ladder"
    spec = build_spec(lcfg)
    visited: list = []
    while True:  # replay: feed the ladder the grid's result for each point it asks for
        p = ladder.plan(visited, spec)
        if not p.pending:
            break
        point = p.pending[0]
        visited.append(next(r for r in grid if (r.targets, r.r, r.seed) == (point.targets, point.r, point.seed)))
    res["ladder_vs_grid_compute"] = sum(steps[(r.targets, r.r)] for r in visited) / sum(steps.values())
    tol = lcfg.search.min_delta
    chosen = select(visited, Budget(), tolerance=tol).chosen
    best = max(r.score for r in grid)
    res["ladder_vs_grid_score_gap"] = best - chosen.mean
    res["ladder_trials"], res["grid_trials"] = len(visited), len(grid)
    res["ladder_chosen"] = chosen.label
    res["plateau_tolerance"] = tol

    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    rows = ["| key | value | target | met |", "|---|---|---|---|"]
    for key, value in res.items():
        if isinstance(value, (int, float)):
            op, goal = TARGETS.get(key, ("", None))
            met = "" if goal is None else ("yes" if (value <= goal if op == "<=" else value >= goal) else "NO")
            rows.append(f"| {key} | {value:.4g} | {op} {goal if goal is not None else 'report'} | {met} |")
    table = "\n".join(rows)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
