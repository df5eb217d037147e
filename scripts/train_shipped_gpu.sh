#!/usr/bin/env bash
# Make the shipped model on one GPU: train, export, evaluate (test_2016_flickr, all lines, beam 4),
# and pack the results into OUTDIR/shipped.tar (the first-50-val-lines scores of the model card are
# measured on CPU, where the shipped-model test checks them).
#
#   bash scripts/train_shipped_gpu.sh WORKDIR OUTDIR [TRAIN_SECONDS] [extra train --set ...]
#
# WORKDIR: prepared with the demo's vocabulary (spm.model + data/, e.g. runs/shipped).
# TRAIN_SECONDS (default 270): a wall-clock cap on training; if it is reached, the latest
# checkpoint (every 500 updates) is exported and evaluated, and steps_done in the log says which.
set -u
WORK=$1; OUTDIR=$2; TRAIN_SECONDS=${3:-270}; shift 3 || shift $#
RUN=${RUN:-/tmp/shipped_run}
PY=${PY:-python3}
mkdir -p "$OUTDIR/res"
export PYTHONUNBUFFERED=1
start=$(date +%s)
timeout "$TRAIN_SECONDS" $PY -m jax_namnmt.train --config multi30k_shipped_gpu --workdir "$WORK" --out "$RUN" --quiet "$@"
echo "train rc=$? wall=$(( $(date +%s) - start ))s"
ls "$RUN/checkpoints"
cp "$RUN/metrics.jsonl" "$RUN/config.json" "$OUTDIR/res/"
$PY -m jax_namnmt.export --checkpoint "$RUN" --out "$OUTDIR/res/model" --config multi30k_shipped --quiet; echo "export rc=$?"
t=$(date +%s)
timeout "${EVAL_SECONDS:-150}" $PY -m jax_namnmt.evaluate --checkpoint "$OUTDIR/res/model" --workdir "$WORK" --split test \
    --max-lines "${TEST_LINES:-1000}" --out "$OUTDIR/res/test_scores.json" --quiet; echo "test eval rc=$? wall=$(( $(date +%s) - t ))s"
rm -f "$OUTDIR/res/model/spm.model"  # the same file as WORKDIR/spm.model
tar -C "$OUTDIR" -cf "$OUTDIR/shipped.tar" res && rm -rf "$OUTDIR/res"
echo "total wall=$(( $(date +%s) - start ))s"
