#!/usr/bin/env bash
# GPU check of the batched torch CRF (hassod.crf_torch), as one command for the device machine
# (about 3 minutes on an H100 with 16 CPUs):
#   bash benchmarks/gpu_crf.sh
# from the repository root of a copy of the working tree. It
#   1. runs tests/test_crf_torch.py, test_crf_triton.py and test_batched_crf.py (the CUDA
#      paths, sparse products and Triton kernels, against the native CPU CRF on photos: mean
#      IoU >= 0.98, none below 0.90), failing on any skip;
#   2. times benchmarks/bench_crf_gpu.py: 64 photos at 480 x 480 with three label sets each
#      (about 50 / 20 / 12 regions), 10 iterations, on the GPU (methods spmm, triton,
#      triton-float16; METHODS=... to choose) vs the native CPU CRF on every core vs
#      pydensecrf in one process, and the Triton kernels under several launch settings
#      (--sweep; SWEEP=0 leaves it out); writes $OUT/crf_gpu.json (or benchmarks/results/).
# Needs, offline: a python3 (PYTHON=...) with torch (CUDA), numpy, scipy, pillow, scikit-image,
# pybind11, cmake, pytest (the device image has them), plus pydensecrf2 and pycocotools, which
# it lacks: carry wheels in .whl/ (see gpu_common.sh). hassod's CPU module is built in place
# when it does not import.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
IMAGES=${IMAGES:-64}
export PYTHONUNBUFFERED=1
results=${OUT:-benchmarks/results}
mkdir -p "$results"
source "$(dirname "$0")/gpu_common.sh"
require_modules torch skimage scipy PIL pydensecrf
build_if_missing

echo "== tests/test_crf_torch.py tests/test_crf_triton.py tests/test_batched_crf.py"
tests_ok=1
# Inside an if: under set -e a failing test must not end the script before the benchmark.
if ! "$PYTHON" -m pytest -q -rs -s -p no:cacheprovider tests/test_crf_torch.py tests/test_crf_triton.py \
  tests/test_batched_crf.py 2>&1 | tee /tmp/crf_gpu_tests.log; then
  tests_ok=0
fi
if grep -E "^SKIPPED" /tmp/crf_gpu_tests.log; then
  echo "unexpected skips on a GPU machine" >&2
  tests_ok=0
fi
if ! grep -q " passed" /tmp/crf_gpu_tests.log || grep -q -E " failed| error" /tmp/crf_gpu_tests.log; then
  echo "CRF tests failed" >&2
  tests_ok=0
fi

echo "== benchmark"  # also after failed tests: one device call should bring back both
sweep=()
[ "${SWEEP:-1}" = 1 ] && sweep=(--sweep)  # SWEEP=0: no launch-settings sweep (saves ~1 minute)
"$PYTHON" benchmarks/bench_crf_gpu.py --images "$IMAGES" ${METHODS:+--methods "$METHODS"} "${sweep[@]}" \
  --out "$results/crf_gpu.json"
[ "$tests_ok" = 1 ]
