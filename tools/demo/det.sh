#!/usr/bin/env bash
# `make demo` (TASK=det): a DRConv Faster R-CNN learns synthetic shapes on CPU.
# Writes the synthetic COCO data if missing, trains the thin demo detector (mmdet's CocoMetric
# logs `bbox_mAP: X` at the end), then draws its detections and its DRConv region maps.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=configs/det/demo/faster-rcnn_r50-thin-drconv-c3-c5_fpn_300i_demo-coco.py
WORK_DIR=${WORK_DIR:-work_dirs/demo_det}
IMAGE=data/demo_coco/val2017/000000000001.jpg

source tools/demo/common/openmmlab.sh
run_openmmlab_demo det "$CONFIG" "$IMAGE" detections "detections/$(basename "$IMAGE")"
