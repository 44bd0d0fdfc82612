#!/usr/bin/env bash
# GPU check of the CUDA hierarchy path, as one command for the device machine (under 5 minutes):
#   bash benchmarks/gpu_check_hierarchy.sh
# from the repository root of a copy of the working tree. It
#   1. builds hassod with the CUDA module required (HASSOD_CUDA=1), in place (editable);
#   2. runs tests/test_hierarchy_cuda.py (CUDA vs CPU: identical results), failing on any skip;
#   3. times CPU vs GPU batched coverage + forest, 64 images x 16 masks at 640x480, and prints a
#      table (JSON in $OUT, or benchmarks/results/, too).
# Assumes, offline: a python3 (override with PYTHON=...) that holds torch with CUDA, numpy,
# pybind11, setuptools, cmake, ninja, pytest and pytest-benchmark (the device image's python3
# does), and nvcc on PATH or in /usr/local/cuda. hassod's other runtime dependencies are not
# needed here, so the install uses --no-deps and --no-build-isolation (nothing is downloaded).
# CUDAARCHS defaults to 90 (Hopper only) to halve the nvcc time; set it to build others.
# SKIP_BUILD=1 uses the build already in place (benchmarks/gpu_all.sh builds once).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
export CUDAARCHS=${CUDAARCHS:-90}
export PYTHONUNBUFFERED=1
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
results=${OUT:-benchmarks/results}

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
nvcc --version | tail -n 1

if [ "${SKIP_BUILD:-0}" = 1 ]; then
  echo "== build skipped (SKIP_BUILD=1)"
else
  echo "== build (HASSOD_CUDA=1, CUDAARCHS=$CUDAARCHS)"
  start=$SECONDS
  HASSOD_CUDA=1 "$PYTHON" -m pip install -e . --no-build-isolation --no-deps -q
  echo "built in $((SECONDS - start)) s"
fi
"$PYTHON" -c "import hassod._native as n; s = n.cuda_status(); print(s); assert s['built'] and s['device_count'] > 0, s"

echo "== tests/test_hierarchy_cuda.py"
# -rs lists skips; the grep fails the check if any comparison was skipped on this GPU machine
# (two-device tests excepted).
"$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_hierarchy_cuda.py 2>&1 | tee /tmp/hierarchy_cuda_tests.log
if grep -E "^SKIPPED" /tmp/hierarchy_cuda_tests.log | grep -v -E "needs two CUDA devices|only without a CUDA device"; then
  echo "unexpected skips on a GPU machine" >&2
  exit 1
fi

echo "== benchmark"
"$PYTHON" benchmarks/bench_hierarchy_cuda.py --images 64 --masks 16 --height 480 --width 640 \
  --out "$results/hierarchy_cuda.json"
