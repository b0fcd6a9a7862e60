#!/usr/bin/env bash
# `make demo` (TASK=det): a DRConv Faster R-CNN learns synthetic shapes on CPU.
# Writes the synthetic COCO data if missing, trains the thin demo detector (mmdet's CocoMetric
# logs `bbox_mAP: X` at the end), then draws its detections and its DRConv region maps.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
# OpenMP threads that sleep instead of spinning when idle: on a CPU shared with other jobs,
# spinning threads slow torch down many times over (measured here: >10x with 2 jobs on 2 cores).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
CONFIG=configs/det/demo/faster-rcnn_r50-thin-drconv-c3-c5_fpn_300i_demo-coco.py
WORK_DIR=${WORK_DIR:-work_dirs/demo_det}
IMAGE=data/demo_coco/val2017/000000000001.jpg

start=$(date +%s)
$PYTHON tools/make_demo_data.py --task det
$PYTHON tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")
$PYTHON tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR" \
    --show-dir "$WORK_DIR/detections"
$PYTHON tools/visualize_regions.py "$CONFIG" "$CHECKPOINT" "$IMAGE" --out "$WORK_DIR/regions.png"

echo
echo "demo (det) done in $(( $(date +%s) - start )) s"
echo "  checkpoint:  $CHECKPOINT"
echo "  detections:  $WORK_DIR/detections/$(basename "$IMAGE") (one picture per val image)"
echo "  region maps: $WORK_DIR/regions.png"
