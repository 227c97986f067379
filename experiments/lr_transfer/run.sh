#!/bin/bash
# Which alpha policy makes one learning rate fair across ranks (issue 24)? On the quick start's data and settings
# (MiniLM-L6, SST-2, 2,000 sentences x 3 epochs, 64 tokens, head pooling auto -> mean), LoRA on Wq at r = 1, 8, 64
# (search=grid, one seed), at each learning rate of a half-decade grid, under each alpha policy:
#   scaled (alpha = 2r: scale 2 at every rank), fixed (alpha 16: scale 16/r), rslora (alpha 16: scale 16/sqrt(r)).
# One study per (policy, lr): lrt_<policy>_<lr> (rerun: finished studies are skipped, a cut one resumes). About 45
# trials, ~6 min a study here (2 busy cores). LOCK=<file>: each study under flock, so others' jobs can interleave.
#   OUT=/tmp/lrt bash experiments/lr_transfer/run.sh && .venv/bin/python experiments/lr_transfer/table.py
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/lrt}
LRS=${LRS:-"1e-3 3e-3 1e-2 3e-4 3e-2"}
POLICIES=${POLICIES:-"scaled fixed rslora"}
STORES="search.storage=sqlite:///$OUT/optuna.db tracking.uri=sqlite:///$OUT/mlflow.db output_dir=$OUT/out"
COMMON="search=grid search.target_sets=[[Wq]] search.ladder=[1,8,64] search.seeds=1 search.noise_seeds=0
        search.lr_probe=[] search.extend=false search.head_reference=false search.max_rank=64 trainer.progress_bar=false"
for lr in $LRS; do            # the middle learning rates first: a cut run still covers every policy there
  for policy in $POLICIES; do
    ${LOCK:+flock $LOCK} .venv/bin/rank-sweep experiment=quickstart $COMMON $STORES lora.alpha_policy=$policy trainer.lr=$lr \
      search.study_name=lrt_${policy}_${lr}
  done
done
