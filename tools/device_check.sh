#!/usr/bin/env bash
# Accelerator check: the tests that matter on the GPU, then the step and segmentor
# benchmarks, each phase under a timeout, all within ~8 minutes (BUDGET seconds).
#
# For a GPU machine without network access that has jax (CUDA), flax, optax, orbax,
# torch, transformers and pytest, but not grain, ml_collections or tensorboardX. Prepare
# the missing dependencies as wheels beforehand, on a machine with network access, in the
# repository root (versions as in the test environment; Python 3.12, x86-64):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d wheels \
#       grain==0.2.18 array-record==0.8.6 ml_collections==1.1.0 tensorboardX==2.6.5
#
# The project itself is installed from this tree (offline, no build isolation), so the
# code under test is never older than the tree. Run, in the repository root:
#
#   bash tools/device_check.sh [--wheels DIR] [--out DIR] [--tiny]
#
# --wheels DIR  the prepared wheels (default: wheels)
# --out DIR     where results go (default: $OUT if set, else ./device_check_out):
#               summary.txt (one line per phase: status, seconds), env.txt, step_bf16.json,
#               step_fp32.json, step_bf16_no_remat.json, segmentor.json, logs.txt (every
#               phase's output)
# --tiny        CPU dry run with demo shapes: test phases only collect their tests,
#               benchmarks run a small source-only step (step_bf16 and segmentor are
#               skipped: step_bf16_no_remat runs step_bf16's command without remat, and
#               tests/test_benchmark.py the segmentor's); no install when the package
#               and its dependencies are already importable (tests/test_benchmark.py).
# Environment: BUDGET (seconds for everything, default 470), PYTHON (default python3),
#              SEG_DTYPE (segmentor benchmark dtype, default bfloat16).
# Exit status: 0 when every phase passed, else 1.

set -u -o pipefail

TINY=0
WHEELS=wheels
OUT_DIR=${OUT:-$PWD/device_check_out}
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --wheels) WHEELS=$2; shift ;;
    --out) OUT_DIR=$2; shift ;;
    *) echo "device_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-python3}
BUDGET=${BUDGET:-470}
SEG_DTYPE=${SEG_DTYPE:-bfloat16}
START=$(date +%s)
mkdir -p "$OUT_DIR"
LOGS=$(mktemp -d)
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
FAILED=0

# Seconds left of the budget, capped at $1.
limit_of() {
  local left=$((BUDGET - ($(date +%s) - START)))
  [ "$1" -lt "$left" ] && left=$1
  echo "$left"
}

# record NAME RC SECONDS LIMIT: one summary line per phase.
record() {
  local status=ok
  if [ "$2" -eq 124 ] || [ "$2" -eq 137 ]; then
    status="timeout ($4 s)"
  elif [ "$2" -ne 0 ]; then
    status="failed (rc $2)"
  fi
  [ "$status" = ok ] || FAILED=1
  echo "$1 $status $3 s" | tee -a "$SUMMARY"
}

# phase NAME LIMIT_S CMD...: run the command CMD under min(LIMIT_S, budget left), output
# to $LOGS/NAME.log. Skipped when less than 15 s of the budget is left.
phase() {
  local name=$1 limit
  limit=$(limit_of "$2")
  shift 2
  if [ "$limit" -lt 15 ]; then
    echo "$name skipped (budget spent)" | tee -a "$SUMMARY"
    FAILED=1
    return
  fi
  local t0 rc
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  record "$name" "$rc" $(($(date +%s) - t0)) "$limit"
}

importable() {
  "$PY" -c "import lcmsm_jax, grain, ml_collections, tensorboardX" > /dev/null 2>&1
}

# ---------------------------------------------------------------- set-up
if [ "$TINY" -eq 1 ]; then
  export JAX_PLATFORMS=cpu
  # A dry run: compile fast (no LLVM optimisation), the figures themselves do not matter.
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
  CONFIG=configs/demo.py
  # A source-only step of a MiT-B0 with 16-wide heads on 32x32 crops; grouped convolutions
  # compile faster on XLA:CPU than the shifted sums.
  SMALL=(--config.uda.enabled=False --config.data.crop_size=32,32
         --config.model.depthwise_impl=conv
         --config.model.decode_head.embed_dim=16 --config.model.decode_head.channels=16
         --config.model.lcmsm_head.embed_dim=16 --config.model.lcmsm_head.channels=16)
  PYTEST_MODE=(--collect-only -q)
  BENCH=(--repeats 2 --warmup 1)
  SEG=(--size 32 --batch 1)
else
  # conftest.py only sets JAX_PLATFORMS=cpu when it is unset: name the GPU here.
  export JAX_PLATFORMS=cuda
  CONFIG=configs/gta2cs_lcmsm.py
  SMALL=()
  PYTEST_MODE=(-q -x)
  BENCH=(--repeats 20 --warmup 3)
  SEG=()
fi
export PYTHONUNBUFFERED=1
# A rerun on the same (still warm) machine reuses the benchmarks' compiled programs; their
# reported compile_s is then a cache load.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/lcmsm_jax_cache}
if importable; then
  echo "install skipped (already importable)" | tee -a "$SUMMARY"
else
  SITE=$(mktemp -d)/site
  shopt -s nullglob
  DEPS=("$WHEELS"/*.whl)
  shopt -u nullglob
  if [ "${#DEPS[@]}" -gt 0 ]; then
    phase install_wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile \
      --target "$SITE" "${DEPS[@]}"
  else
    echo "install_wheels: no wheels in $WHEELS" | tee -a "$SUMMARY"
  fi
  phase install_project 60 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
    --target "$SITE" .
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null ||
    echo "nvidia-smi: not available"
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__); print(jax.devices())" 2>&1
} > "$OUT_DIR/env.txt"
GPUS=$("$PY" -c "import jax; print(sum(d.platform == 'gpu' for d in jax.devices()))" 2>/dev/null ||
       echo 0)

# ---------------------------------------------------------------- tests (in parallel)
# Correctness checks share the GPU: no preallocation, so three processes fit beside
# each other. The 1- vs 8-device step needs 8 devices: with fewer GPUs it runs on the
# host's 8 simulated CPU devices (conftest.py).
EIGHT=$JAX_PLATFORMS
[ "$GPUS" -lt 8 ] && EIGHT=cpu
echo "test_eight_devices runs on: $EIGHT ($GPUS GPUs)" >> "$OUT_DIR/env.txt"
TEST_LIMIT=$(limit_of 120)
T0=$(date +%s)
declare -A PIDS
run_test() {  # NAME PLATFORMS PYTEST-ARGS...
  local name=$1 platforms=$2
  shift 2
  JAX_PLATFORMS=$platforms XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -k 10 "$TEST_LIMIT" \
    "$PY" -m pytest -p no:cacheprovider "${PYTEST_MODE[@]}" "$@" > "$LOGS/$name.log" 2>&1 &
  PIDS[$name]=$!
}
run_test test_parity "$JAX_PLATFORMS" tests/test_model_parity.py
run_test test_eight_devices "$EIGHT" tests/test_step.py -k eight_devices
run_test test_bf16 "$JAX_PLATFORMS" tests/test_bf16.py
for name in test_parity test_eight_devices test_bf16; do
  wait "${PIDS[$name]}"
  record "$name" $? $(($(date +%s) - T0)) "$TEST_LIMIT"
done

# ---------------------------------------------------------------- benchmarks (one at a time)
BENCH_CMD=("$PY" tools/benchmark.py --config "$CONFIG" "${SMALL[@]}" "${BENCH[@]}")
if [ "$TINY" -eq 1 ]; then
  # The dry run checks the phases' wiring: step_bf16_no_remat below runs this command too.
  echo "step_bf16 skipped (tiny: step_bf16_no_remat runs the same command)" | tee -a "$SUMMARY"
else
  phase step_bf16 180 "${BENCH_CMD[@]}" --what step --config.model.dtype=bfloat16 \
    --json "$OUT_DIR/step_bf16.json"
fi
phase step_fp32 120 "${BENCH_CMD[@]}" --what step --json "$OUT_DIR/step_fp32.json"
# torch and JAX share the GPU here: JAX allocates on demand.
if [ "$TINY" -eq 1 ]; then
  echo "segmentor skipped (tiny: tests/test_benchmark.py measures it next to torch)" |
    tee -a "$SUMMARY"
else
  phase segmentor 90 env XLA_PYTHON_CLIENT_PREALLOCATE=false "${BENCH_CMD[@]}" "${SEG[@]}" \
    --what segmentor --compare-torch --config.model.dtype="$SEG_DTYPE" \
    --json "$OUT_DIR/segmentor.json"
fi
# Last, as it is the least needed: the configs' memory options off (no recomputation of
# MiT blocks, one joint gradient): the time they cost, the memory they save.
phase step_bf16_no_remat 100 "${BENCH_CMD[@]}" --what step --config.model.dtype=bfloat16 \
  --config.model.remat=none --config.train.backward=joint \
  --json "$OUT_DIR/step_bf16_no_remat.json"

# ---------------------------------------------------------------- collect
for log in "$LOGS"/*.log; do
  echo "=================== $(basename "$log" .log)"
  cat "$log"
done > "$OUT_DIR/logs.txt"
rm -rf "$LOGS"
echo "total $(($(date +%s) - START)) s" | tee -a "$SUMMARY"
exit $FAILED
