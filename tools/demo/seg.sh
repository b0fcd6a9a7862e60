#!/usr/bin/env bash
# `make demo TASK=seg`: a DRConv DeepLabV3 learns synthetic street scenes on CPU.
# Writes the synthetic Cityscapes data if missing, trains the thin demo segmentor (mmseg's
# IoUMetric logs mIoU at the end), then draws its predictions and its DRConv region maps.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
# OpenMP threads that sleep instead of spinning when idle: on a CPU shared with other jobs,
# spinning threads slow torch down many times over (measured here: >10x with 2 jobs on 2 cores).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
CONFIG=configs/seg/demo/deeplabv3_r50-thin-d8-drconv-c3-c5_200i_demo-cityscapes-128x256.py
WORK_DIR=${WORK_DIR:-work_dirs/demo_seg}
IMAGE=data/demo_cityscapes/leftImg8bit/val/demo/demo_000000_000001_leftImg8bit.png

start=$(date +%s)
$PYTHON tools/make_demo_data.py --task seg
$PYTHON tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")
$PYTHON tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR" \
    --show-dir "$WORK_DIR/predictions"
$PYTHON tools/visualize_regions.py "$CONFIG" "$CHECKPOINT" "$IMAGE" --out "$WORK_DIR/regions.png"

echo
echo "demo (seg) done in $(( $(date +%s) - start )) s"
echo "  checkpoint:  $CHECKPOINT"
echo "  predictions: $WORK_DIR/predictions/vis_data/vis_image/ (one picture per val image)"
echo "  region maps: $WORK_DIR/regions.png"
