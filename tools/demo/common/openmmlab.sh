# Sourced by tools/demo/det.sh and seg.sh: the steps both OpenMMLab demos take.
# run_openmmlab_demo TASK CONFIG IMAGE SHOW_DIR PICTURES writes the synthetic data if missing,
# trains CONFIG through tools/train.py into $WORK_DIR, tests the last checkpoint drawing its
# results into $WORK_DIR/SHOW_DIR, draws the DRConv region maps of IMAGE, and prints where all
# went; PICTURES is where the drawn results are, relative to $WORK_DIR.
PYTHON=${PYTHON:-python}
# OpenMP threads that sleep instead of spinning when idle: on a CPU shared with other jobs,
# spinning threads slow torch down many times over (measured here: >10x with 2 jobs on 2 cores).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

run_openmmlab_demo() {
    local task=$1 config=$2 image=$3 show_dir=$4 pictures=$5
    local start checkpoint
    start=$(date +%s)
    $PYTHON tools/make_demo_data.py --task "$task"
    $PYTHON tools/train.py "$config" --work-dir "$WORK_DIR"
    checkpoint=$(cat "$WORK_DIR/last_checkpoint")
    $PYTHON tools/test.py "$config" "$checkpoint" --work-dir "$WORK_DIR" \
        --show-dir "$WORK_DIR/$show_dir"
    $PYTHON tools/visualize_regions.py "$config" "$checkpoint" "$image" \
        --out "$WORK_DIR/regions.png"

    echo
    echo "demo ($task) done in $(( $(date +%s) - start )) s"
    echo "  checkpoint:  $checkpoint"
    printf '  %-12s %s (one picture per val image)\n' "$show_dir:" "$WORK_DIR/$pictures"
    echo "  region maps: $WORK_DIR/regions.png"
}
