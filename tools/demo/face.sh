#!/usr/bin/env bash
# make demo TASK=face: synthetic identities in insightface's formats -> DRConv MobileFaceNet
# trained at 112x112 on CPU through tools/train.py (seeded) -> verification accuracy on held-out
# identities -> ONNX export (dynamic batch) -> loaded by insightface's model_zoo.get_model,
# which embeds the aligned face shipped in insightface's package.
set -euo pipefail
cd "$(dirname "$0")/../.."

CONFIG=configs/face/demo/arcface_mobilefacenet-thin-drconv_demo-synth.py
DATA=data/face_demo
WORK_DIR=${WORK_DIR:-work_dirs/face_demo}
PYTHON=${PYTHON:-python}
# One BLAS/OpenMP thread: the small convs run faster so, and far faster on shared cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$(date +%s)

if [ ! -f "$DATA/train.rec" ] || [ ! -f "$DATA/synth.bin" ]; then
    "$PYTHON" tools/face/make_demo_data.py "$DATA" --train-ids 300 --per-id 24 --val-ids 100 \
        --pairs 300
fi
rm -rf "$WORK_DIR"
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
CKPT=$(cat "$WORK_DIR/last_checkpoint")
echo "== verification on held-out synthetic identities ($DATA/synth.bin, 10 folds, flip TTA)"
"$PYTHON" tools/face/eval_verification.py "$CONFIG" "$CKPT" --bins "$DATA/synth.bin" \
    --min-accuracy 0.80
echo "== ONNX export, checked with onnxruntime and insightface"
ONNX="$WORK_DIR/face_demo.onnx"
"$PYTHON" tools/export_onnx.py "$CONFIG" "$CKPT" "$ONNX" --check-insightface

echo
echo "face demo finished in $(( $(date +%s) - start ))s"
echo "  checkpoint: $CKPT"
echo "  ONNX model: $ONNX (insightface: model_zoo.get_model('$ONNX'))"
