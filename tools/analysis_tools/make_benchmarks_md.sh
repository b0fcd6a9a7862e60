#!/usr/bin/env bash
# Regenerates the results part of BENCHMARKS.md: everything below its marker line is replaced by
# the commands below and what they print (stdout, verbatim); the method text above it is kept.
# Run on a quiet machine from anywhere:  bash tools/analysis_tools/make_benchmarks_md.sh
# Knobs (environment): PY (default .venv/bin/python), DEVICE (cpu), THREADS (2), REPEAT (20),
# CONFIG_REPEAT (5), E2E_REPEAT (3). stderr goes to work_dirs/benchmarks/log.txt; the JSON of each
# benchmark to work_dirs/benchmarks/*.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-20}
CONFIG_REPEAT=${CONFIG_REPEAT:-5}
E2E_REPEAT=${E2E_REPEAT:-3}
DET=configs/det/faster-rcnn_r50-drconv-c3-c5_fpn_1x_coco.py
SEG=configs/seg/deeplabv3_r50-d8-drconv-c3-c5_4xb2-40k_cityscapes-512x1024.py
OUT=work_dirs/benchmarks
MARKER='<!-- Generated below by tools/analysis_tools/make_benchmarks_md.sh; do not edit by hand. -->'
mkdir -p "$OUT"
: > "$OUT/log.txt"
grep -qxF "$MARKER" BENCHMARKS.md || { echo "BENCHMARKS.md lacks the marker line" >&2; exit 2; }

body=$(mktemp)
section() {  # section TITLE COMMAND...: a heading, the command, and its stdout
  local title=$1; shift
  echo "running: $*" >&2
  {
    printf '\n### %s\n\n```bash\n%s\n```\n\n' "$title" "$*"
    "$@" 2>>"$OUT/log.txt"
  } >> "$body"
}
{
  printf '\nGenerated %s on %s (%s, %s CPUs), commit %s%s.\n' "$(date -u +'%Y-%m-%d %H:%M UTC')" \
    "$(hostname)" "$(uname -m)" "$(nproc)" "$(git rev-parse --short HEAD)" \
    "$(git diff --quiet HEAD -- drconv plugins tools || echo ' plus uncommitted changes')"
  printf 'Load average before the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
} >> "$body"

B=tools/analysis_tools/benchmark_drconv.py
# The target layers three times, each in a fresh process: on a shared VM the op's time switches
# between two levels for minutes at a time while conv's does not, so one run misleads.
for run in 1 2 3; do
  section "The op on the issue's target layers (run $run of 3, a fresh process each)" \
    $PY $B --device "$DEVICE" --threads "$THREADS" --repeat "$REPEAT" --top2 \
    --json "$OUT/target_$run.json"
done
section "The op on every DRConv layer of Faster R-CNN R50-FPN (c3-c5), 2 x 800x1333" \
  $PY $B --config $DET --input-shape 3 800 1333 --batch 2 --device "$DEVICE" \
  --threads "$THREADS" --repeat "$CONFIG_REPEAT" --json "$OUT/det_layers.json"
section "Training step: DRConv Faster R-CNN R50-FPN vs plain R50-FPN, 2 x 256x256" \
  $PY $B --shapes none --e2e-config $DET --input-shape 3 256 256 --batch 2 \
  --threads "$THREADS" --e2e-repeat "$E2E_REPEAT" --json "$OUT/e2e.json"
section "FLOPs and parameters: Faster R-CNN R50-FPN, 800x1333" \
  $PY tools/analysis_tools/get_flops.py $DET --shape 800 1333
section "FLOPs and parameters: DeepLabV3 R50-D8, 512x1024" \
  $PY tools/analysis_tools/get_flops.py $SEG --shape 512 1024

head=$(mktemp)
sed "/^$(printf '%s' "$MARKER" | sed 's/[][\.*^$/]/\\&/g')\$/q" BENCHMARKS.md > "$head"
cat "$head" "$body" > BENCHMARKS.md
rm -f "$head" "$body"
echo "wrote BENCHMARKS.md" >&2
