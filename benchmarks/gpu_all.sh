#!/usr/bin/env bash
# Every GPU check of the project in one command for the device machine, within BUDGET seconds
# (default 540, for a 600-second call), most important first:
#   bash benchmarks/gpu_all.sh 2>&1 | tee $OUT/gpu_all.log
#   1. build in place with the CUDA module (HASSOD_CUDA=1, CUDAARCHS=90)
#   2. benchmarks/gpu_crf.sh            the batched CRF: tests on CUDA + benchmark
#   3. benchmarks/gpu_check_hierarchy.sh the CUDA hierarchy: tests + benchmark (SKIP_BUILD=1)
#   4. benchmarks/gpu_detector.sh       stage-2 training it/s (ITERS/WARMUP shortened)
#   5. benchmarks/gpu_discover.sh       stage 1 end to end, bf16, Triton CRF vs native CRF
# Each step gets at most its own limit and what is left of the budget; a failing step does not
# stop the later ones. The JSON reports land in $OUT (or benchmarks/results/); a summary of
# exit codes ends the output. Wheels for pycocotools / pydensecrf2 travel in .whl/, with one of
# setuptools >= 77 (pyproject's SPDX license string) in case the device image's is older.
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${BUDGET:-540}
STEPS=${STEPS:-crf hierarchy detector discover}  # which checks after the build, e.g. STEPS="crf"
export PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export CUDAARCHS=${CUDAARCHS:-90}
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
summary=()

# step NAME LIMIT COMMAND...: run with timeout min(LIMIT, budget left - 5 s).
step() {
  local name=$1 limit=$2
  shift 2
  if [ "$name" != build ] && [[ " $STEPS " != *" $name "* ]]; then
    return
  fi
  local left=$((BUDGET - SECONDS - 5))
  if [ "$left" -lt 20 ]; then
    summary+=("$name: skipped (budget spent)")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo
  echo "######## $name (limit ${limit} s, at ${SECONDS} s)"
  local start=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  summary+=("$name: rc $rc in $((SECONDS - start)) s")
}

source benchmarks/gpu_common.sh
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

step build 240 env HASSOD_CUDA=1 "$PYTHON" -m pip install -e . --no-build-isolation --no-deps -q
"$PYTHON" -c "import hassod._native as n; print(n.cuda_status())" || true
step crf 270 bash benchmarks/gpu_crf.sh
step hierarchy 90 env SKIP_BUILD=1 bash benchmarks/gpu_check_hierarchy.sh
step detector 150 env ITERS=${DETECTOR_ITERS:-10} WARMUP=${DETECTOR_WARMUP:-3} bash benchmarks/gpu_detector.sh
step discover 200 env AMP=bf16 CRF="${DISCOVER_CRF:-native torch-triton}" bash benchmarks/gpu_discover.sh

echo
echo "######## summary (${SECONDS} s)"
printf '%s\n' "${summary[@]}"
