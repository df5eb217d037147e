#!/usr/bin/env bash
# A positive control: does the method win where two directions are built to conflict? A multi-way corpus
# of Multi30k's de, fr and en plus "enrev", English with its word order reversed ("A man sleeps ." ->
# ". sleeps man A"), and four directions de-en, de-enrev, fr-en, fr-enrev: from the same source, en and
# enrev need the same words in opposite orders, so a shared decoder is pulled two ways (the target tag
# tells them apart). A small model (d 64, 4 heads, FFN 256, 3+3 layers) pre-trained from scratch on the
# four directions, then the CPU reproduction's protocol restricted to the multilingual control and
# method_te (3 seeds, one scoring: cross-entropy Taylor importance, pair_mean, no embedding inputs,
# rho 0.9, k 0.7), the directions fine-tuned alone with the multilingual run's examples (4096 / pairs
# target tokens a batch: 1024 for four), and `analyze gradients` on the pre-trained model with the demo
# pipeline's masks. PAIRS other than the default run the same on other directions of the corpus (which
# holds en, de, fr, cs and enrev), e.g. de-en,de-cs,fr-en,fr-cs: the same shape without the built-in
# conflict. Every step is skipped when its output exists (resumable). Figures: docs/experiments.md.
# FT_STEPS (default 100) fine-tunes longer, validating every EVAL_EVERY steps (default 20), in OUT/reproduce_ftN,
# OUT/report_ftN and OUT/specialists_ftN (the 100-step protocol's start model, data, importance and masks
# copied in when it has run: the same inputs, no second convergence), and writes the validation curves
# (multilingual, method_te with the first RHO_K candidate, specialists) to OUT/curves_ftN.png and .json.
# The figures together (BLEU, significance, masks' cost, curves minus the multilingual run's): OUT/summary[_ftN].json.
# RHO_K (default 0.9/0.7) sets the rho/k candidates, e.g. 0.9/0.7,0.7/0.9. D_MODEL (default 64) sets the model's
# width (FFN 4x, 4 heads, 3+3 layers): 152 gives 2.85M parameters, as many as four 0.73M specialists together.
# REPRODUCE_SET adds settings to `reproduce`, e.g. "--set reproduce.seeds=1,2".
#
#   bash scripts/conflict_control.sh [PRETRAIN_STEPS] [OUT] [PAIRS]   # defaults 6000 runs/conflict de-en,de-enrev,fr-en,fr-enrev
#   FT_STEPS=1000 EVAL_EVERY=100 bash scripts/conflict_control.sh      # ten times longer
#   D_MODEL=152 bash scripts/conflict_control.sh 6000 runs/conflict_big  # four times the parameters
set -euo pipefail
STEPS=${1:-6000}
W=${2:-runs/conflict}
PY=${PYTHON:-python}
PAIRS=${3:-de-en,de-enrev,fr-en,fr-enrev}
mkdir -p "$W/corpus"
$PY - "$W/corpus" <<'PYEOF'
import gzip, shutil, sys
from pathlib import Path
from jax_namnmt.data.multiway import multi30k_dir
out = Path(sys.argv[1])
for split in ("train", "val", "test_2016_flickr"):
    if not (out / f"{split}.enrev.gz").exists():
        for lang in ("en", "de", "fr", "cs"):
            shutil.copy(multi30k_dir() / f"{split}.{lang}.gz", out / f"{split}.{lang}.gz")
        lines = gzip.open(multi30k_dir() / f"{split}.en.gz", "rt", encoding="utf-8").read().splitlines()
        with gzip.open(out / f"{split}.enrev.gz.part", "wt", encoding="utf-8") as f:
            f.write("".join(" ".join(reversed(line.split())) + "\n" for line in lines))
        (out / f"{split}.enrev.gz.part").rename(out / f"{split}.enrev.gz")
PYEOF
[ -e "$W/spm.model" ] || $PY -m jax_namnmt.prepare --config multi30k_shipped --workdir "$W" --from-multiway "$W/corpus" \
  --pairs $PAIRS --splits train=train,valid=val,test=test_2016_flickr --quiet
D_MODEL=${D_MODEL:-64}  # the model's width: FFN 4x, 4 heads, 3+3 layers
SMALL=(--set model.d_model=$D_MODEL --set model.num_heads=4 --set model.ffn_dim=$((4 * D_MODEL)) --set model.dropout=0.1)
$PY -m jax_namnmt.train --config multi30k_shipped --workdir "$W" --out "$W/pretrain" --pairs $PAIRS "${SMALL[@]}" \
  --set train.steps=$STEPS --set train.eval_every=500 --set train.save_every=250 --quiet
# the settings of configs/reproduce_cpu.py: 100 fine-tuning steps, validation every 20, all test lines
FT_STEPS=${FT_STEPS:-100}
EVAL_EVERY=${EVAL_EVERY:-20}
RHO_K=${RHO_K:-0.9/0.7}
TAG=""
[ "$FT_STEPS" = 100 ] || TAG=_ft$FT_STEPS
R=$W/reproduce$TAG
if [ -n "$TAG" ] && [ -d "$W/reproduce/many_to_many/base" ] && [ ! -e "$R/many_to_many" ]; then
  mkdir -p "$R/many_to_many.part"
  cp -r "$W/reproduce/many_to_many/"{base,data,masks,prepare.json,spm.model} "$W/reproduce/many_to_many/"importance_*.npz \
    "$R/many_to_many.part/"
  mv "$R/many_to_many.part" "$R/many_to_many"
fi
$PY -m jax_namnmt.reproduce --config "$W/pretrain/config.json" --pretrained "$W/pretrain" --workdir "$R" \
  --set finetune.steps=$FT_STEPS --set finetune.eval_every=$EVAL_EVERY --set train.valid_max_lines=0 \
  --set decode.test_max_lines=0 --set decode.batch_sentences=128 --set reproduce.converge_max_steps=300 \
  --set reproduce.corpus="$W/corpus" --set reproduce.many_to_many_pairs=$PAIRS \
  --set reproduce.settings=many_to_many --set reproduce.systems=multilingual,method_te --set reproduce.one_seed_systems= \
  --set reproduce.rho_k=$RHO_K --set reproduce.importance_losses=cross_entropy --set reproduce.normalizations=pair_mean \
  --set reproduce.module_sets=no_embedding_inputs --set reproduce.out_dir="$W/report$TAG" ${REPRODUCE_SET:-} --quiet
TOKENS=$((4096 / $(echo $PAIRS | tr ',' '\n' | wc -l)))  # the multilingual run's examples of a pair per step
SEEDS=${SEEDS:-"1 2"} EXTRA="--set finetune.eval_every=$EVAL_EVERY" bash "$(dirname "$0")/specialist_finetuning.sh" 3e-4 \
  "$W/specialists$TAG" "$R" $FT_STEPS "$R/many_to_many/eval" $TOKENS
FIRST=${RHO_K%%,*}
M=$R/many_to_many/runs
$PY "$(dirname "$0")/valid_curves.py" "$W/curves$TAG.png" "$W/curves$TAG.json" "multilingual=$M/multilingual-s*" \
  "method_te=$M/method_te-*-rho${FIRST%/*}-k${FIRST#*/}-s*" "specialists=$W/specialists$TAG/*-s?" --minus multilingual
$PY "$(dirname "$0")/conflict_summary.py" "$W" "$W/summary$TAG.json" "$TAG"
[ -e "$W/demo/results.json" ] || $PY -m jax_namnmt.pipeline --config "$W/pretrain/config.json" --pretrained "$W/pretrain" \
  --workdir "$W/demo" --data "$W/data" --pairs $PAIRS --quiet
[ -e "$W/demo/analysis/gradients.json" ] || $PY -m jax_namnmt.analyze gradients --workdir "$W/demo" --quiet
