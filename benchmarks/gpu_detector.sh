#!/usr/bin/env bash
# Stage-2 training speed of the paper's configuration on one GPU, as one command (about 4
# minutes on an H100 with 16 CPUs, build included):
#   bash benchmarks/gpu_detector.sh
# from the repository root of a copy of the working tree. No download, no DINO weights: Cascade
# Mask R-CNN R50-FPN with a level head, randomly initialised, BatchNorm in training mode (the
# authors' SyncBN on one process), on 48 synthetic 800x800 drawn-shapes images
# (hassod.detector.synthetic) with the paper's multi-scale sizes (240-1024, long side <= 1333),
# flip and copy-paste, DropLoss, batch 16 with fp16 AMP. The batch is tried as one forward pass
# first, then split into micro-batches of 8 and 4 (gradient accumulation) if it does not fit.
# It prints iterations/s, seconds per iteration, peak GPU memory and the share of time spent
# waiting for data, for burn-in iterations and for Mean Teacher iterations (8 + 8 images: the
# teacher's pass plus both student branches), then inference images/s, and writes the JSON to
# $OUT/detector_gpu.json (or benchmarks/results/).
#
# Needs, offline: a python3 (PYTHON=...) with torch (CUDA), torchvision, numpy, scipy, pillow,
# tqdm, pybind11, cmake and ninja (the device image has them), plus pycocotools, which the
# device image lacks: carry it as a wheel in .whl/ (see /work/.library/device/README.md; e.g.
# `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
# manylinux2014_x86_64 -d .whl pycocotools`); it is installed into /tmp/site first. hassod's
# CPU module is built in place when it does not import.
#
# Every setting can be overridden, e.g. a CPU smoke run of the same script:
#   DEVICE=cpu IMAGES=2 SIZE=200 BATCH=2 MICRO=0 MT_BATCH="1 1" ITERS=1 WARMUP=1 AMP=off bash benchmarks/gpu_detector.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-48}
SIZE=${SIZE:-800}
BATCH=${BATCH:-16}
MICRO=${MICRO:-0 8 4}
MT_BATCH=${MT_BATCH:-8 8}
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
AMP=${AMP:-on}
WORKERS=${WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))}
export PYTHONUNBUFFERED=1
results=${OUT:-benchmarks/results}
mkdir -p "$results"

source "$(dirname "$0")/gpu_common.sh"
require_modules torch torchvision scipy PIL tqdm pycocotools

build_if_missing

amp_args=()
if [ "$AMP" = off ]; then amp_args=(--no-amp); fi
echo "== paper configuration: $IMAGES synthetic ${SIZE}px images, batch $BATCH (micro-batches tried: $MICRO), Mean Teacher $MT_BATCH, AMP $AMP, $WORKERS workers, $DEVICE"
# shellcheck disable=SC2086  # MICRO and MT_BATCH are lists
timeout --foreground 240 "$PYTHON" benchmarks/bench_detector.py --preset paper --norm bn --device "$DEVICE" \
  --synthetic "$IMAGES" --size "$SIZE" --batch-size "$BATCH" --micro-batch $MICRO \
  --mean-teacher --mean-teacher-batch $MT_BATCH --iterations "$ITERS" --warmup "$WARMUP" \
  --workers "$WORKERS" --inference 16 "${amp_args[@]}" --out "$results/detector_gpu.json"
