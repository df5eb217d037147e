#!/usr/bin/env bash
# method_te against the equal-steps multilingual run at another fine-tuning learning rate or length, from
# the many-to-many base of `python -m jax_namnmt.reproduce --config configs/reproduce_cpu.py` (run that
# first): the same masks, dropout and batches as its systems, STEPS steps (default 100, as there) at peak
# LR (default 5e-5, about the base's last), seeds 1 and 2 (or those in $SEEDS, e.g. SEEDS=1); then test
# BLEU of each and paired bootstrap (method_te - multilingual, each - the base). A finished run or
# evaluation is skipped (resumable). Figures: docs/experiments.md.
#
#   bash scripts/compare_finetuning.sh [LR] [OUT] [REPRODUCE_WORKDIR] [STEPS]   # defaults 5e-5 runs/lowlr runs/reproduce_cpu 100
set -euo pipefail
LR=${1:-5e-5}
W=${2:-runs/lowlr}
M=${3:-runs/reproduce_cpu}/many_to_many
STEPS=${4:-100}
PY=${PYTHON:-python}
SEEDS=${SEEDS:-1 2}
CFG=$M/runs/multilingual-s1/config.json
MASKS=$(ls $M/masks/taylor-cross_entropy-pair_mean-no_embedding_inputs-rho0.9-k0.7.npz)
mkdir -p "$W"
[ -e "$W/eval_start.json" ] || $PY -m jax_namnmt.evaluate --checkpoint $M/base --data $M/data --split test \
  --max-lines 0 --zero-shot none --quiet --out "$W/eval_start.json" | tail -3
for seed in $SEEDS; do
  for sys in multilingual method_te; do
    out=$W/$sys-s$seed
    extra=(); [ $sys = method_te ] && extra=(--masks "$MASKS")
    if [ ! -e "$out/DONE" ]; then
      $PY -m jax_namnmt.finetune --config $CFG --from $M/base "${extra[@]}" --out "$out" --workdir $M \
        --set finetune.learning_rate=$LR --set finetune.steps=$STEPS --set train.seed=$seed --quiet
      touch "$out/DONE"
    fi
    [ -e "$W/eval_$sys-s$seed.json" ] || $PY -m jax_namnmt.evaluate --checkpoint "$out" --data $M/data --split test \
      --max-lines 0 --zero-shot none --quiet --out "$W/eval_$sys-s$seed.json" | tail -3
  done
done

$PY - "$W" "$M/data" "$LR" "$STEPS" $SEEDS <<'PYEOF'
import json, sys
from pathlib import Path
from jax_namnmt.config import MANY_TO_MANY_8
from jax_namnmt.data.corpus import read_lines
from jax_namnmt.reproduce import valid_history
from jax_namnmt.significance import paired_bootstrap_mean, sentence_stats

w, data, lr, steps = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
seeds = [int(s) for s in sys.argv[5:]]
pairs = list(MANY_TO_MANY_8)
refs = {p: read_lines(data / f"test.{p}.{p.split('-')[1]}") for p in pairs}
files = {"method_te": [w / f"eval_method_te-s{k}.json" for k in seeds],
         "multilingual": [w / f"eval_multilingual-s{k}.json" for k in seeds], "start": [w / "eval_start.json"]}
evals = {s: [json.loads(f.read_text()) for f in fs] for s, fs in files.items()}
stats = {s: [{p: sentence_stats(e["hypotheses"][p], refs[p]) for p in pairs} for e in es] for s, es in evals.items()}
out = {"learning_rate": lr, "steps": steps, "seeds": seeds, "bleu": {s: [e["avg"]["bleu"] for e in es] for s, es in evals.items()}}
for s in ("method_te", "multilingual"):
    out.setdefault("valid_nll_last", {})[s] = [valid_history(w / f"{s}-s{k}")[-1]["nll"] for k in seeds]
for a, b in (("method_te", "multilingual"), ("method_te", "start"), ("multilingual", "start")):
    out[f"{a} - {b}"] = paired_bootstrap_mean([[x[p] for x in stats[a]] for p in pairs],
                                              [[x[p] for x in stats[b]] for p in pairs])
(w / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps(out, indent=1))
PYEOF
