#!/bin/bash
# Does the answer depend on the learning rate a study starts from (issue 24)? The quick start's settings with its two
# ladders up to r=16, started at lr 3e-4, 1e-3 and 3e-3 (trainer.lr): one study each, then rank-sweep-select on each
# at the README's budget (20,000 LoRA params). Run it on two checkouts (before and after the lr bracket) into two
# folders, then table.py compares: each ladder's plateau rank and each study's choice, with scores and intervals, and
# whether the three choices are shown different from each other by more than select.tolerance (paired, same dev
# examples). ~45 min per checkout on 2 idle cores (after), ~20 min (before). EXTRA="...": more overrides for
# every study (e.g. "search.allocation_sets=[]": the allocation rows, all over the 20,000 budget but one, change no
# choice here, and the checkout before the bracket has no allocation step).
#   OUT=/tmp/three/after bash experiments/lr_start/run.sh
#   .venv/bin/python experiments/lr_start/table.py /tmp/three/before /tmp/three/after
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/three/after}
TAG=${TAG:-$(basename "$OUT")}
LRS=${LRS:-"1e-3 3e-3 3e-4"}
STORES="search.storage=sqlite:///$OUT/optuna.db tracking.uri=sqlite:///$OUT/mlflow.db output_dir=$OUT/out"
mkdir -p "$OUT"
for lr in $LRS; do
  name=qs_${TAG}_$lr
  if [ ! -s "$OUT/qs_$lr.log" ] || ! grep -q "^done:" "$OUT/qs_$lr.log"; then
    ${LOCK:+flock $LOCK} /usr/bin/time -f "wall %e s" .venv/bin/rank-sweep experiment=quickstart trainer.lr=$lr \
      search.max_rank=16 trainer.progress_bar=false search.study_name=$name $STORES ${EXTRA:-} > "$OUT/qs_$lr.log" 2>&1
  fi
  .venv/bin/rank-sweep-select experiment=quickstart select.study_name=$name budget.max_lora_params=20000 \
    select.report=false $STORES > "$OUT/select_$lr.txt" 2>&1
done
