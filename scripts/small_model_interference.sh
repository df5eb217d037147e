#!/usr/bin/env bash
# Does the method win where pairs do interfere? The same protocol as the CPU reproduction on a model ten
# times smaller than the shipped one (d 64, 4 heads, FFN 256, 3+3 layers: 0.73M parameters for the 8
# Multi30k directions), where capacity, not data, should limit it: pre-training from scratch (resumable,
# PRETRAIN_STEPS in all), then `reproduce` restricted to many-to-many, the multilingual control and
# method_te (3 seeds, one scoring: cross-entropy Taylor importance, pair_mean, no embedding inputs,
# rho 0.9, k 0.7), then the 8 directions fine-tuned alone with the multilingual run's examples
# (scripts/specialist_finetuning.sh with 512-token batches): if they beat the multilingual run, the pairs
# interfere and allocation has something to remove. Uses the vocabulary and data of the CPU reproduction
# (run that first). Every step is skipped when its output exists (resumable).
#
#   bash scripts/small_model_interference.sh [PRETRAIN_STEPS] [OUT] [REPRODUCE_WORKDIR]   # defaults 12000 runs/small runs/reproduce_cpu
set -euo pipefail
STEPS=${1:-12000}
W=${2:-runs/small}
R=${3:-runs/reproduce_cpu}
PY=${PYTHON:-python}
CFG=$R/many_to_many/runs/multilingual-s1/config.json
mkdir -p "$W"
[ -e "$W/data" ] || ln -s "$(cd "$R/many_to_many/data" && pwd)" "$W/data"
[ -e "$W/spm.model" ] || cp "$R/many_to_many/spm.model" "$W/spm.model"
SMALL=(--set data.data_dir= --set model.d_model=64 --set model.num_heads=4 --set model.ffn_dim=256 --set model.dropout=0.1)
$PY -m jax_namnmt.train --config $CFG --workdir "$W" --out "$W/pretrain" "${SMALL[@]}" --set train.steps=$STEPS \
  --set train.eval_every=500 --set train.save_every=250 --quiet
$PY -m jax_namnmt.reproduce --config "$W/pretrain/config.json" --pretrained "$W/pretrain" --workdir "$W/reproduce" \
  --set reproduce.settings=many_to_many --set reproduce.systems=multilingual,method_te --set reproduce.one_seed_systems= \
  --set reproduce.rho_k=0.9/0.7 --set reproduce.importance_losses=cross_entropy --set reproduce.normalizations=pair_mean \
  --set reproduce.module_sets=no_embedding_inputs --set reproduce.out_dir="$W/report" --quiet
bash "$(dirname "$0")/specialist_finetuning.sh" 3e-4 "$W/specialists_512" "$W/reproduce" 100 \
  "$W/reproduce/many_to_many/eval" 512
