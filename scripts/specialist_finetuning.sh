#!/usr/bin/env bash
# How much can a pair gain from parameters of its own? Each direction (the 8 of Multi30k, or those of
# reproduce.many_to_many_pairs) fine-tuned alone (the whole model, its pair's batches only) from the
# many-to-many base of `python -m jax_namnmt.reproduce --config configs/reproduce_cpu.py` (run that first): STEPS steps (default 100) at peak LR (default
# 3e-4, the reproduction's), seed 1 (or those in $SEEDS, e.g. SEEDS="1 2"); then each specialist's test
# BLEU on its own direction and paired bootstraps against the reproduction's systems (CONTROLS = its
# eval/ folder, the default, for 3e-4 and 100 steps) or against the runs of scripts/compare_finetuning.sh
# (CONTROLS = that script's OUT, for another rate or length). The method restricts each pair to a part of
# the model; a specialist gives it all of the model and no other pair's updates, so what specialists gain
# over the multilingual run bounds what allocation can gain by keeping pairs apart during fine-tuning (loosely: a
# specialist also has a whole model of its own, and the capacity of one model per pair is part of its gain).
# TOKENS (default 4096, the reproduction's batch) sets each specialist's batch: 4096 / (number of pairs),
# 512 for 8 pairs, gives it the same updates and the same examples of its pair as the multilingual run's
# (one eighth of its 4096-token batches). EXTRA adds settings to every run, e.g. EXTRA="--set finetune.eval_every=100".
# A finished run or evaluation is skipped (resumable). Figures: docs/experiments.md.
#
#   bash scripts/specialist_finetuning.sh [LR] [OUT] [REPRODUCE_WORKDIR] [STEPS] [CONTROLS] [TOKENS]
#   # defaults 3e-4 runs/specialists runs/reproduce_cpu 100 REPRODUCE_WORKDIR/many_to_many/eval 4096
set -euo pipefail
LR=${1:-3e-4}
W=${2:-runs/specialists}
M=${3:-runs/reproduce_cpu}/many_to_many
STEPS=${4:-100}
CONTROLS=${5:-$M/eval}
TOKENS=${6:-4096}
PY=${PYTHON:-python}
SEEDS=${SEEDS:-1}
CFG=$M/runs/multilingual-s1/config.json
PAIRS=$($PY -c "import json, sys; print(' '.join(json.load(open(sys.argv[1]))['data']['pairs']))" "$CFG")
mkdir -p "$W"
for seed in $SEEDS; do
  for pair in $PAIRS; do
    out=$W/$pair-s$seed
    if [ ! -e "$out/DONE" ]; then
      $PY -m jax_namnmt.finetune --config $CFG --from $M/base --out "$out" --workdir $M --set data.pairs=$pair \
        --set finetune.learning_rate=$LR --set finetune.steps=$STEPS --set train.tokens_per_batch=$TOKENS \
        --set train.seed=$seed ${EXTRA:-} --quiet
      touch "$out/DONE"
    fi
    [ -e "$W/eval_$pair-s$seed.json" ] || $PY -m jax_namnmt.evaluate --checkpoint "$out" --data $M/data --split test \
      --max-lines 0 --zero-shot none --quiet --out "$W/eval_$pair-s$seed.json" | tail -2
  done
done

$PY - "$W" "$M/data" "$LR" "$STEPS" "$CONTROLS" "$TOKENS" "$PAIRS" $SEEDS <<'PYEOF'
import json, sys
from pathlib import Path
from jax_namnmt.data.corpus import read_lines
from jax_namnmt.reproduce import valid_history
from jax_namnmt.significance import paired_bootstrap, paired_bootstrap_mean, sentence_stats

w, data, lr, steps, controls = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
tokens, pairs, seeds = int(sys.argv[6]), sys.argv[7].split(), [int(s) for s in sys.argv[8:]]
refs = {p: read_lines(data / f"test.{p}.{p.split('-')[1]}") for p in pairs}


def hypotheses(path: Path) -> dict[str, list[str]]:
    """Hypotheses per direction from `evaluate --out` JSON or the reproduction's eval/ JSON."""
    e = json.loads(path.read_text())
    return e["hypotheses"] if "hypotheses" in e else {p: e[p]["hyps"] for p in pairs if p in e}


# the controls: the reproduction's eval/ folder or compare_finetuning.sh's OUT (file names differ)
if (controls / "pretrained.json").exists():
    files = {"start": [controls / "pretrained.json"],
             "multilingual": sorted(controls.glob("multilingual-s*.json")),
             "method_te": sorted(controls.glob("method_te-cross_entropy-pair_mean-no_embedding_inputs-rho0.9-k0.7-s*.json"))}
else:
    files = {"start": [controls / "eval_start.json"], "multilingual": sorted(controls.glob("eval_multilingual-s*.json")),
             "method_te": sorted(controls.glob("eval_method_te-s*.json"))}
systems = {s: [hypotheses(f) for f in fs] for s, fs in files.items() if fs}
systems["specialists"] = [{p: hypotheses(w / f"eval_{p}-s{k}.json")[p] for p in pairs} for k in seeds]
stats = {s: [{p: sentence_stats(h[p], refs[p]) for p in pairs} for h in hs] for s, hs in systems.items()}
out = {"learning_rate": lr, "steps": steps, "tokens_per_batch": tokens, "specialist_seeds": seeds, "controls": {s: [str(f) for f in fs] for s, fs in files.items()},
       "seeds": {s: len(hs) for s, hs in systems.items()},
       "valid_nll_last": {p: [valid_history(w / f"{p}-s{k}")[-1]["nll"] for k in seeds] for p in pairs}}
for s in systems:
    if s != "specialists":
        out[f"specialists - {s}"] = {
            "avg": paired_bootstrap_mean([[x[p] for x in stats["specialists"]] for p in pairs],
                                         [[x[p] for x in stats[s]] for p in pairs]),
            **{p: paired_bootstrap([x[p] for x in stats["specialists"]], [x[p] for x in stats[s]]) for p in pairs}}
(w / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
for key, value in out.items():
    if key.startswith("specialists - "):
        print(f"{key:28s} avg {value['avg']['diff']:+.2f} (p={value['avg']['p']:.3f}) | "
              + " ".join(f"{p} {value[p]['diff']:+.2f}" for p in pairs))
PYEOF
