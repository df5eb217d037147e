#!/usr/bin/env bash
# Every step of the method at NTREX-128 scale: one-to-many from English to all 127 other languages
# (configs/ntrex_o2m_tiny.py: a tiny model), each phase under /usr/bin/time -v, and a table of wall
# time and peak memory per phase (WORKDIR/phases.md, WORKDIR/phases.json). Figures: docs/scaling.md.
#
#   bash scripts/ntrex_o2m_scale.sh [WORKDIR] [NTREX_DIR]     # defaults runs/ntrex_o2m ../shared/data/ntrex128
#
# Phases: prepare (corpus split by document, 127-tag SentencePiece vocabulary), train (pre-train the
# multilingual model), importance (one pass over batches mixing the 127 pairs), allocate (pair and
# target variants), finetune (masked, pair variant; then the target variant), evaluate (beam search on
# a batch mixing every pair, BLEU per pair), translate (one direction from stdin). A phase whose
# output exists is skipped (rerun resumes); PYTHON picks the interpreter, EXTRA adds --set flags.
set -euo pipefail
W=${1:-runs/ntrex_o2m}
NTREX=${2:-../shared/data/ntrex128}
PY=${PYTHON:-python}
CFG="--config ntrex_o2m_tiny ${EXTRA:-}"
mkdir -p "$W/time"
command -v /usr/bin/time >/dev/null || { echo "error: /usr/bin/time (GNU time) is needed for peak memory" >&2; exit 2; }

phase() {  # phase NAME DONE_PATH CMD...: run CMD under time -v unless DONE_PATH exists
  local name=$1 done=$2; shift 2
  if [ -e "$done" ]; then echo "[$name] done before ($done)"; return; fi
  echo "[$name] $*"
  /usr/bin/time -v -o "$W/time/$name.txt" "$@" > "$W/time/$name.log" 2>&1 \
    || { echo "error: phase $name failed; see $W/time/$name.log" >&2; tail -5 "$W/time/$name.log" >&2; exit 2; }
  tail -3 "$W/time/$name.log"
}

phase prepare "$W/prepare.json" $PY -m jax_namnmt.prepare $CFG --workdir "$W" --from-ntrex "$NTREX" --quiet
phase train "$W/pretrain/DONE" bash -c "$PY -m jax_namnmt.train $CFG --workdir '$W' --quiet && touch '$W/pretrain/DONE'"
phase importance "$W/importance_taylor.npz" \
  $PY -m jax_namnmt.importance $CFG --checkpoint "$W/pretrain" --workdir "$W" --out "$W/importance_taylor.npz" --quiet
phase allocate_pair "$W/masks_pair.npz" \
  $PY -m jax_namnmt.allocate --importance "$W/importance_taylor.npz" --out "$W/masks_pair.npz" --variant pair --quiet
phase allocate_target "$W/masks_target.npz" \
  $PY -m jax_namnmt.allocate --importance "$W/importance_taylor.npz" --out "$W/masks_target.npz" --variant target --quiet
phase finetune_pair "$W/method_te/DONE" bash -c \
  "$PY -m jax_namnmt.finetune $CFG --from '$W/pretrain' --masks '$W/masks_pair.npz' --out '$W/method_te' --workdir '$W' --quiet && touch '$W/method_te/DONE'"
phase finetune_target "$W/method_te_target/DONE" bash -c \
  "$PY -m jax_namnmt.finetune $CFG --from '$W/pretrain' --masks '$W/masks_target.npz' --out '$W/method_te_target' --workdir '$W' --quiet && touch '$W/method_te_target/DONE'"
phase evaluate "$W/evaluate_method_te.json" \
  $PY -m jax_namnmt.evaluate --checkpoint "$W/method_te" --workdir "$W" --zero-shot none --out "$W/evaluate_method_te.json" --quiet
phase translate "$W/translate_deu.txt" bash -c \
  "printf 'The weather was good.\nTwo dogs play in the snow.\n' | $PY -m jax_namnmt.translate --checkpoint '$W/method_te' --src en --tgt deu --quiet > '$W/translate_deu.txt'"

$PY - "$W" <<'EOF'
import json, re, sys
from pathlib import Path
w = Path(sys.argv[1])
rows = []
for f in sorted((w / "time").glob("*.txt"), key=lambda p: p.stat().st_mtime):
    text = f.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    parts = [float(x) for x in wall.split(":")]
    secs = sum(x * 60 ** i for i, x in enumerate(reversed(parts)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): (\S+)", text).group(1)) for k in ("User", "System"))
    rows.append({"phase": f.stem, "wall_seconds": round(secs, 1), "cpu_seconds": round(cpu, 1),
                 "peak_rss_mib": round(rss / 1024)})
for name in ("masks_pair.npz", "masks_target.npz", "importance_taylor.npz"):
    if (w / name).exists():
        rows.append({"file": name, "bytes": (w / name).stat().st_size})
(w / "phases.json").write_text(json.dumps(rows, indent=1) + "\n")
lines = ["| phase | wall s | CPU s | peak RSS MiB |", "| --- | --- | --- | --- |"]
lines += [f"| {r['phase']} | {r['wall_seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_rss_mib']} |" for r in rows if "phase" in r]
lines += [f"\n{r['file']}: {r['bytes']:,} bytes" for r in rows if "file" in r]
(w / "phases.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
