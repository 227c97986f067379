#!/bin/bash
# The grid the lr-calibrated study is measured against (issue 24; bench keys lr_fair_vs_grid_compute and
# lr_choice_vs_grid_best): every rank of both quick-start ladders (Wq and Wq,Wv at r = 1, 2, 4, 8, 16) at each of the
# three learning rates the bracket covers around the preset's 1e-3 (3e-4, 1e-3, 3e-3), one seed: 30 trials, one grid
# study per lr, in the same stores as run.sh's studies (so their trials compare on the same examples). ~20 min on 2
# idle cores.   OUT=/tmp/three/after bash experiments/lr_start/grid.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/three/after}
STORES="search.storage=sqlite:///$OUT/optuna.db tracking.uri=sqlite:///$OUT/mlflow.db output_dir=$OUT/out"
for lr in ${LRS:-1e-3 3e-3 3e-4}; do
  ${LOCK:+flock $LOCK} .venv/bin/rank-sweep experiment=quickstart search=grid "search.target_sets=[[Wq],[Wq,Wv]]" \
    "search.ladder=[1,2,4,8,16]" search.max_rank=16 search.seeds=1 search.noise_seeds=0 search.extend=false \
    search.head_reference=false "search.allocation_sets=[]" "search.lr_probe=[]" trainer.lr=$lr \
    trainer.progress_bar=false search.study_name=grid_$lr $STORES > "$OUT/grid_$lr.log" 2>&1
done
