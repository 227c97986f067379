#!/bin/bash
# Which alpha policy makes one learning rate fair across ranks (issue 24)? On the quick start's data and settings
# (MiniLM-L6, SST-2, 2,000 sentences x 3 epochs, 64 tokens, head pooling auto -> mean), LoRA on Wq at r = 1, 8, 64
# (search=grid, one seed), at each learning rate of a half-decade grid, under each alpha policy:
#   scaled (alpha = 2r: scale 2 at every rank), fixed (alpha 16: scale 16/r), rslora (alpha 16: scale 16/sqrt(r)).
# Three cells are the same adapter under two policies (same rank, same scale alpha/r), so each trains once:
#   fixed r=8 = scaled r=8 (scale 2), rslora r=64 = scaled r=64 (scale 2), rslora r=1 = fixed r=1 (scale 16);
# table.py fills the twin in and says so. One study per (policy, lr): lrt_<policy>_<lr> (rerun: finished studies are
# skipped, a cut one resumes). 6 trials per lr, 30 in all, ~1 min a trial on 2 idle cores. LOCK=<file>: each study
# under flock, so others' jobs can interleave. RANKS_<policy>="[...]" overrides a policy's ranks.
#   OUT=/tmp/lrt bash experiments/lr_transfer/run.sh && .venv/bin/python experiments/lr_transfer/table.py
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/lrt}
LRS=${LRS:-"1e-3 3e-3 1e-2 3e-4 3e-2"}
POLICIES=${POLICIES:-"scaled fixed rslora"}
STORES="search.storage=sqlite:///$OUT/optuna.db tracking.uri=sqlite:///$OUT/mlflow.db output_dir=$OUT/out"
RANKS_scaled=${RANKS_scaled:-"[1,8,64]"}
RANKS_fixed=${RANKS_fixed:-"[1,64]"}
RANKS_rslora=${RANKS_rslora:-"[8]"}
COMMON="search=grid search.target_sets=[[Wq]] search.seeds=1 search.noise_seeds=0
        search.lr_probe=[] search.extend=false search.head_reference=false search.max_rank=64 trainer.progress_bar=false"
for lr in $LRS; do            # the middle learning rates first: a cut run still covers every policy there
  for policy in $POLICIES; do
    ${LOCK:+flock $LOCK} .venv/bin/rank-sweep experiment=quickstart $COMMON $STORES lora.alpha_policy=$policy trainer.lr=$lr \
      "search.ladder=$(eval echo \$RANKS_$policy)" \
      search.study_name=lrt_${policy}_${lr} ${EXTRA:-}
  done
done
