#!/bin/bash
# The head measurement (issue 23), as run on 2026-12-05 (README.md beside this file): on the quick start's data
# and settings (SST-2, 2,000 sentences x 3 epochs, lr 1e-3, alpha = 2r), one study per model.pooling with Wq and
# Wq,Wv at r=1 and r=8 (one seed), the head alone, and for cls full fine-tuning at its own lr 5e-5 (full
# fine-tuning trains the pooler under any head); the quick start itself (auto -> mean here: 3 seeds at r=1); then
# the regression check, a word-overlap score of MRPC sentence pairs (regression.py writes the csv files).
# About 1 h on 2 idle cores. Then:
#   .venv/bin/python experiments/pooling/table.py --out sst2 cls_frozen=pool1_cls_frozen cls=pool1_cls \
#       mean=qs_auto,pool1_mean $STORES
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/exp}
STORES="search.storage=sqlite:///$OUT/optuna.db tracking.uri=sqlite:///$OUT/mlflow.db output_dir=$OUT/out"
QUIET="trainer.progress_bar=false"
.venv/bin/rank-sweep experiment=quickstart $STORES $QUIET search.study_name=qs_auto
COMMON="search.seeds=1 search.noise_seeds=0 search.lr_probe=[] search.extend=false search.head_reference=true"
for p in cls_frozen cls mean; do
  ref="search.reference_methods=[]"; [ $p = cls ] && ref="search.reference_methods=[{name:full,lr:5.0e-5}]"
  .venv/bin/rank-sweep experiment=quickstart search.ladder=[1,8] $COMMON $STORES $QUIET model.pooling=$p \
    search.study_name=pool1_$p "$ref"
done
.venv/bin/python experiments/pooling/regression.py "$OUT/overlap"
for p in mean cls cls_frozen; do
  ref="search.reference_methods=[]"; [ $p != cls_frozen ] && ref="search.reference_methods=[{name:full,lr:5.0e-5}]"
  .venv/bin/rank-sweep task=csv task.name=mrpc_overlap task.data_dir=$OUT/overlap task.train_file=train.csv \
    task.validation_file=dev.csv task.text_fields=[sentence1,sentence2] task.labels=null task.metric=pearson \
    task.metrics=[pearson,spearman] task.max_train_samples=1500 task.max_seq_length=96 trainer.epochs=3 trainer.lr=1e-3 \
    search=grid search.target_sets=[[Wq,Wv]] search.ladder=[8] $COMMON $STORES $QUIET model.pooling=$p \
    search.study_name=regpool_$p "$ref"
done
