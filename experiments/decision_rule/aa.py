"""Real A/A test of the plateau rule: one configuration trained with several seeds; every pair of seeds is
compared as the ladder compares two rungs. The rule must not call a gain in at least 95% of the pairs.

    GLUE_DIR=../shared/glue .venv/bin/python experiments/decision_rule/aa.py --seeds 6   # ~5 min on 2 cores

MiniLM-L6, LoRA Wq,Wv r=4, SST-2 (2,000 training sentences, 1 epoch, lr 3e-3, 64 tokens), all 872 dev
sentences. Writes aa.json beside this file (every pair's interval) and prints the counts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rank_sweep.config import RunConfig  # noqa: E402
from rank_sweep.results.paired import (  # noqa: E402
    is_gain,
    paired_difference,
    widen,  # noqa: E402
)
from rank_sweep.results.predictions import load_predictions, predictions_path  # noqa: E402
from rank_sweep.train.loading import WorkerCache  # noqa: E402
from rank_sweep.train.trial import run_trial  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--min-delta", type=float, default=0.005)
    ap.add_argument("--confidence", type=float, default=0.95)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="aa-")
    cfg = RunConfig()
    cfg.task.max_train_samples, cfg.task.max_seq_length = 2000, 64
    cfg.trainer.epochs, cfg.trainer.lr, cfg.trainer.progress_bar = 1, 3e-3, False
    cfg.lora.r, cfg.lora.targets = 4, ["Wq", "Wv"]
    cfg.tracking.uri, cfg.output_dir = f"sqlite:///{tmp}/mlflow.db", f"{tmp}/outputs"
    cache, runs, t0 = WorkerCache(), [], time.perf_counter()
    for seed in range(args.seeds):
        cfg.seed = seed
        result = run_trial(cfg, cache=cache)
        runs.append((seed, result.score, result.score_ci, load_predictions(predictions_path(cfg.output_dir, result.run_id))))
        print(f"seed {seed}: accuracy {result.score:.4f} [{result.score_ci[0]:.4f}, {result.score_ci[1]:.4f}]", flush=True)
    scores = [s for _, s, _, _ in runs]
    mean = sum(scores) / len(scores)
    seed_std = (sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) ** 0.5
    pairs, gains_dev, gains_seed = [], 0, 0
    for (sa, _, _, pa), (sb, _, _, pb) in itertools.permutations(runs, 2):  # both orders: "b beats a" either way
        d = paired_difference("accuracy", pa.outputs, pb.outputs, pa.label, is_regression=False, num_labels=2,
                              confidence=args.confidence)
        w = widen(d, 2 * seed_std ** 2, args.confidence)  # one seed a side, seed noise measured as the ladder's
        g_dev, g_seed = is_gain(d, args.min_delta), is_gain(w, args.min_delta)
        gains_dev += g_dev
        gains_seed += g_seed
        pairs.append({"a": sa, "b": sb, "diff": d.estimate, "dev_ci": [d.low, d.high], "with_seed_noise": [w.low, w.high],
                      "gain_dev_only": g_dev, "gain_with_seed_noise": g_seed})
    n = len(pairs)
    out = {"seeds": args.seeds, "scores": scores, "seed_std": seed_std, "ordered_pairs": n,
           "gains_dev_only": gains_dev, "gains_with_seed_noise": gains_seed, "min_delta": args.min_delta,
           "confidence": args.confidence, "wall_seconds": time.perf_counter() - t0, "pairs": pairs}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "aa.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nseed std {seed_std:.4f}; ordered pairs {n}; gains called: paired dev-set interval alone "
          f"{gains_dev}/{n}, with the seed noise {gains_seed}/{n} (rule: lower bound > min_delta {args.min_delta})")


if __name__ == "__main__":
    main()
