#!/usr/bin/env bash
# `make compare TASK=det|seg|face|det-ablation|det-hard|face-hard`: does DRConv beat its baseline
# on a demo's data?
# Writes the demo's synthetic data if missing, then trains the demo config and its baseline (the
# same config without its DRConv layers) once per seed and prints tools/analysis_tools/compare.py's
# table. det-ablation: the paper's filter generator, the bases generator, guide_grad='top2' and
# the baseline (it shares work_dirs/compare_det with TASK=det, so their common runs train once).
# det-hard: the det demo's model on the harder synthetic variant (make_demo_data.py --task
# det-hard: eight classes in random colours, clutter, occlusion, a wider scale range);
# face-hard: the face demo on its harder variant (tools/face/make_demo_data.py --hard).
# Finished runs are kept: the same command resumes an interrupted comparison.
set -euo pipefail
cd "$(dirname "$0")/../.."
TASK=${1:-det}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-0 1 2}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
DET=configs/det/demo/faster-rcnn_r50-thin-drconv
start=$(date +%s)

case $TASK in
    det | det-ablation)
        $PYTHON tools/make_demo_data.py --task det
        ARMS=("$DET-c3-c5_fpn_300i_demo-coco.py")
        if [ "$TASK" = det-ablation ]; then
            ARMS+=("$DET-bases-c3-c5_fpn_300i_demo-coco.py" "$DET-top2-c3-c5_fpn_300i_demo-coco.py"
                   --baseline)
        fi
        WORK_DIR=${WORK_DIR:-work_dirs/compare_det} ;;
    det-hard)
        $PYTHON tools/make_demo_data.py --task det-hard
        ARMS=("$DET-c3-c5_fpn_600i_demo-coco-hard.py") ;;
    seg)
        $PYTHON tools/make_demo_data.py --task seg
        ARMS=(configs/seg/demo/deeplabv3_r50-thin-d8-drconv-c3-c5_200i_demo-cityscapes-128x256.py)
        ;;
    face | face-hard)
        # as tools/demo/face.sh: its data (the generator's defaults, or --hard), one OpenMP thread
        DATA=data/face_demo CONFIG=configs/face/demo/arcface_mobilefacenet-thin-drconv_demo-synth
        HARD=()
        if [ "$TASK" = face-hard ]; then
            DATA=${DATA}_hard CONFIG=$CONFIG-hard HARD=(--hard)
        fi
        if [ ! -f $DATA/train.rec ] || [ ! -f $DATA/synth.bin ]; then
            $PYTHON tools/face/make_demo_data.py $DATA "${HARD[@]}"
        fi
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
        ARMS=("$CONFIG.py") ;;
    *)
        echo "make compare: no comparison for TASK=$TASK; use det, seg, face, det-ablation," \
             "det-hard or face-hard" >&2
        exit 2 ;;
esac
WORK_DIR=${WORK_DIR:-work_dirs/compare_$TASK}
echo "\$ python tools/analysis_tools/compare.py ${ARMS[*]} --seeds $SEEDS --work-dir $WORK_DIR"
$PYTHON tools/analysis_tools/compare.py "${ARMS[@]}" --seeds $SEEDS --work-dir "$WORK_DIR" \
    --json "$WORK_DIR/$TASK.json"
echo "compare ($TASK) done in $(( $(date +%s) - start )) s"
