#!/usr/bin/env bash
# Stage 1 end to end on a GPU machine, as one command (under 5 minutes on an H100 with 16 CPUs):
#   bash benchmarks/gpu_discover.sh
# from the repository root of a copy of the working tree. No download: the backbone is DINO
# ViT-B/8 (vit_base_patch8_224.dino) with seeded random weights, on 64 generated 640x480 scenes
# (shapes and textures, benchmarks/photos.py), at 480x480, --device cuda --batch-size 32, one
# run in fp32 and one under bf16 autocast, post-processing in a pool of every CPU. It prints
# images/s and the time per stage (decode, backbone, cluster, CRF+filters, hierarchy, encode)
# and writes the JSON to $OUT/discover_gpu.json (or benchmarks/results/). Each CRF backend is
# warmed up on all the images first (WARMUP=N: the first N), so that the Triton CRF's kernels
# are compiled for the batch shapes before the timed runs (a long run amortises the compile).
#
# Random weights with raw keys merge each image into 1-6 regions, which would make the CRF
# unrealistically cheap; the keys are therefore centred per image (--feature-transform center),
# which gives 42 / 11 / 7 regions at 0.4 / 0.2 / 0.1 on average on these scenes (up to 127 at
# 0.4; raw keys: 3 / 1.5 / 1.1), a CRF load like real keys'. The CPU parts were run with
# DEVICE=cpu IMAGES=2 (below): about 0.9 s of CRF + filters per image on one core.
#
# Needs, offline: a python3 (PYTHON=...) with torch (CUDA), timm, numpy, scipy, pillow, tqdm,
# scikit-image, pybind11, cmake and ninja (the device image has them), plus pycocotools and
# pydensecrf2, which the device image lacks: carry them as wheels in .whl/ (see
# /work/.library/device/README.md; e.g. `pip download --no-deps --only-binary=:all:
# --python-version 3.12 --platform manylinux2014_x86_64 -d .whl pycocotools pydensecrf2`) and
# they are installed into /tmp/site first. hassod's CPU module is built in place when it does not
# import (HASSOD_CUDA=0: discover needs no CUDA module).
#
# Every setting can be overridden, e.g. the CPU smoke run of the same Python:
#   DEVICE=cpu IMAGES=2 AMP=off BATCH=2 WORKERS=1 bash benchmarks/gpu_discover.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-64}
BACKBONE=${BACKBONE:-vit_base_patch8_224.dino}
SIZE=${SIZE:-480}
BATCH=${BATCH:-32}
AMP=${AMP:-off bf16}
WORKERS=${WORKERS:-$(nproc)}
CRF=${CRF:-}  # e.g. "native torch torch-triton": one run per CRF backend (default: native)
WARMUP=${WARMUP:-0}  # warm-up images per CRF backend, 0: all
export PYTHONUNBUFFERED=1
results=${OUT:-benchmarks/results}
mkdir -p "$results"

source "$(dirname "$0")/gpu_common.sh"
require_modules torch timm scipy PIL tqdm skimage pycocotools pydensecrf

build_if_missing

echo "== benchmark: $IMAGES synthetic images, $BACKBONE (random) at $SIZE, $DEVICE, batch $BATCH, amp: $AMP, $WORKERS workers"
crf_args=()
if [ -n "$CRF" ]; then
  read -r -a crf_args <<<"--crf-backend $CRF"
fi
# shellcheck disable=SC2086  # AMP is a list
timeout --foreground 270 "$PYTHON" benchmarks/bench_discover.py --synthetic "$IMAGES" --backbone "$BACKBONE" \
  --random-weights --feature-transform center --size "$SIZE" --device "$DEVICE" \
  --batch-size "$BATCH" --amp $AMP --workers "$WORKERS" --warmup-images "$WARMUP" "${crf_args[@]}" \
  --out "$results/discover_gpu.json"
