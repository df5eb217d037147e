#!/usr/bin/env bash
# The four GPU benchmarks of issue 4, one after another, within one time budget:
#
#     bash benchmarks/run_gpu.sh OUTDIR
#
# writes OUTDIR/<name>.json and OUTDIR/<name>.log for train_throughput, decode_speed (and
# decode_speed_bf16_weights),
# masked_overhead and importance_throughput (plus env.txt: GPU, versions). Each runs under
# `timeout` with at most its cap and at most what is left of BUDGET seconds (default 240, the
# whole script, compiles included); a failing or killed one is logged and the next one runs.
# The torch.compile side of train_throughput is the longest compile, so it runs LAST and is merged
# into train_throughput.json (`--sides marian_compiled --merge`); if too little budget is left it
# is recorded as skipped. Knobs (environment):
#   BUDGET=240           seconds for everything (raise to ~360 to leave torch.compile its time)
#   PYTHON=python3       the interpreter (with jax[cuda], flax, optax, torch, transformers)
#   TRAIN_ARGS, DECODE_ARGS, MASKED_ARGS, IMPORTANCE_ARGS   extra flags for one script, e.g.
#                        TRAIN_ARGS="--min-len 20 --max-len 60 --row-len 128" (WMT-like lengths)
#   NO_COMPILE=1         skip the torch.compile side
#   SKIP="train_throughput_compact masked_overhead_onehot"   runs (OUTDIR names) not to run
#   ABLATIONS=1          also time our step with one thing changed, each of the list below;
#   ABLATIONS="cudnn_attention bf16_logits"   only those (names as below, without "ablate_"):
#     cudnn_attention    model.attention_kernel=cudnn (cuDNN fused attention)
#     bf16_logits        model.logits_dtype=bfloat16 (the output layer writes bfloat16 logits)
#     cudnn_bf16         both of the above
#     cudnn_layer_norm   XLA_FLAGS=--xla_gpu_enable_cudnn_layer_norm=true
#     no_triton_gemm     XLA_FLAGS=--xla_gpu_enable_triton_gemm=false (cuBLAS for every matmul)
#     vocab8k, no_dropout, rows128   vocabulary 8000; dropout 0; 128-token rows of 20-60-token sentences
#   TRAIN_ARGS="--profile-dir OUTDIR/profile"   a jax.profiler trace of 3 of our train steps
set -u

OUT=${1:?usage: bash benchmarks/run_gpu.sh OUTDIR}
BUDGET=${BUDGET:-240}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# One compilation cache for all scripts: the plain train step of train_throughput is reused by
# masked_overhead and importance_throughput (same shapes), saving a compile each.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d /tmp/jax_cache.XXXXXX)}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
cd "$ROOT" || exit 1
START=$(date +%s)

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "budget: ${BUDGET} s; python: $(command -v "$PYTHON")"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PYTHON" - <<'EOF' 2>&1
import importlib.metadata as m
for n in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "flax", "optax",
          "orbax-checkpoint", "numpy", "torch", "transformers", "triton"):
    try:
        print(f"{n}: {m.version(n)}")
    except Exception:
        pass
EOF
} > "$OUT/env.txt" 2>&1

# run NAME SCRIPT CAP [ARGS...]: `python -m benchmarks.SCRIPT` under timeout min(CAP, budget left),
# its report at OUTDIR/NAME.json.
run() {
  local name=$1 script=$2 cap=$3
  shift 3
  [[ " ${SKIP:-} " == *" $name "* ]] && return 0
  local limit
  limit=$(left)
  [ "$limit" -gt "$cap" ] && limit=$cap
  if [ "$limit" -lt 20 ]; then
    echo "[$name] skipped: $(left) s of the ${BUDGET} s budget left" | tee -a "$OUT/$name.log"
    return 0
  fi
  echo "[$name] start, limit ${limit} s ($(left) s of the budget left)"
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$PYTHON" -m "benchmarks.$script" --time-budget $((limit - 4)) \
    --out "$OUT/$name.json" "$@" >> "$OUT/$name.log" 2>&1
  local rc=$?
  echo "[$name] exit $rc after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/$name.log"
  return 0
}

# shellcheck disable=SC2086  # the *_ARGS are word lists on purpose
run train_throughput train_throughput 90 --steps 20 --warmup 3 --sides jax,marian_eager ${TRAIN_ARGS:-}
# our step in the compact layout (data.layout=compact; the CPU default; 10% slower than rows on an H100, 2026-11-26)
run train_throughput_compact train_throughput 60 --steps 20 --warmup 3 --sides jax --layout compact
run decode_speed decode_speed 70 --sentences 2048 --batch 256 --decode-len 20 ${DECODE_ARGS:-}
# ours alone with the matrices in bfloat16 (decode.weights; float32 master weights cast per use above)
run decode_speed_bf16_weights decode_speed 45 --sentences 2048 --batch 256 --decode-len 20 --no-torch --weights bfloat16 ${DECODE_ARGS:-}
# 8, 32 and 128 pairs in one run (a masked step compiled per number of pairs; goal: within 5% at 128)
run masked_overhead masked_overhead 110 --steps 20 --warmup 2 --repeats 2 --mask-lookup gather ${MASKED_ARGS:-}
# the same with the one-hot-matmul lookup (its cost grows with the pairs), and the CPU's packed bits
run masked_overhead_onehot masked_overhead 80 --steps 20 --warmup 2 --repeats 2 --mask-lookup onehot --pairs 8,128 ${MASKED_ARGS:-}
run masked_overhead_bits masked_overhead 80 --steps 20 --warmup 2 --repeats 2 --mask-lookup bits --pairs 8,128 ${MASKED_ARGS:-}
run importance_throughput importance_throughput 100 --steps 20 --warmup 2 --repeats 2 ${IMPORTANCE_ARGS:-}
if [ -z "${NO_COMPILE:-}" ]; then
  run train_throughput train_throughput 600 --steps 20 --warmup 3 --sides marian_compiled --merge ${TRAIN_ARGS:-}
fi

# ABLATIONS: our step alone with one thing changed, to see what bounds it (each ~30-50 s on a GPU)
ablation() {  # ablation NAME [ARGS...]: run it if ABLATIONS is 1 or lists NAME
  local name=$1
  shift
  case "${ABLATIONS:-}" in
    "") return 0 ;;
    1 | all) ;;
    *) [[ " ${ABLATIONS//,/ } " == *" $name "* ]] || return 0 ;;
  esac
  run "ablate_$name" train_throughput 60 --steps 20 --warmup 3 --sides jax "$@"
}
ablation cudnn_attention --attention-kernel cudnn
ablation bf16_logits --logits-dtype bfloat16
ablation cudnn_bf16 --attention-kernel cudnn --logits-dtype bfloat16
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_cudnn_layer_norm=true" ablation cudnn_layer_norm
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false" ablation no_triton_gemm
ablation vocab8k --vocab 8000
ablation no_dropout --dropout 0
ablation rows128 --row-len 128 --min-len 20 --max-len 60

echo "total $(( $(date +%s) - START )) s of the ${BUDGET} s budget"
for f in "$OUT"/*.log; do
  echo "=== $f"
  grep -E '^\||^ratio|^overhead|^all-ones|^importance scored|error|Error' "$f" | grep -v '^| ---' | tail -12
done
