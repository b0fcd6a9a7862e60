#!/usr/bin/env bash
# `make demo TASK=seg`: a DRConv DeepLabV3 learns synthetic street scenes on CPU.
# Writes the synthetic Cityscapes data if missing, trains the thin demo segmentor (mmseg's
# IoUMetric logs mIoU at the end), then draws its predictions and its DRConv region maps.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=configs/seg/demo/deeplabv3_r50-thin-d8-drconv-c3-c5_200i_demo-cityscapes-128x256.py
WORK_DIR=${WORK_DIR:-work_dirs/demo_seg}
IMAGE=data/demo_cityscapes/leftImg8bit/val/demo/demo_000000_000001_leftImg8bit.png

source tools/demo/common/openmmlab.sh
run_openmmlab_demo seg "$CONFIG" "$IMAGE" predictions "predictions/vis_data/vis_image/"
