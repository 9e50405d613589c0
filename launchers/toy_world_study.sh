#!/usr/bin/env bash
# The toy-world study: the seed ablations of RESEARCH.md (DeepSeekMath's four designs,
# structured-math density, executable code vs Code-NL, a math-code share), 3 seeds each, plus
# each design's A/A calibration (its control again, same init seeds, another data order: the
# <design>-aa sweeps), every point an anneal from one shared base (recipes/toy/study-base.yaml, trained
# first), run, scored and compared through the public interface only:
#
#   ablate data prepare  ->  ablate sweep expand | submit (local executor; trains each point with
#   launchers/pretrain.py, then `ablate eval`)  ->  ablate report --aa (one HTML page per design,
#   verdicts corrected for multiple comparisons, the observed A/A false-positive rate; density
#   also --dose)  ->  launchers/toy_world_summary.py (tables, figures, study.json)
#
# Run from the repository root on a fresh clone (after `pip install -e ".[eval]"`):
#
#   launchers/toy_world_study.sh            # all four designs, LANES=2 sweeps at a time
#   DESIGNS="density" launchers/toy_world_study.sh
#
# Writes runs/study-base/ (the shared base, trained first on both cores), runs/<design>/<point>/
# and runs/<design>-aa/<point>/ (run dirs, eval/),
# docs/study/<design>.html (reports), docs/study/summary.md, the figures and study.json in
# docs/toy-world-results/ and docs/study/timings.tsv (wall seconds per pipeline stage). The sweep files in recipes/study/
# state each design's token budgets and batch arithmetic; re-running skips completed points.
set -euo pipefail
cd "$(dirname "$0")/.."
DESIGNS=${DESIGNS:-"dsm density code mathcode"}
LANES=${LANES:-2}
declare -A CONTROL=([dsm]=dsm-math-only [density]=density-0.00 [code]=code-code-nl [mathcode]=mathcode-none)
declare -A DOSE=([density]="--dose stages.0.mix.math.density.math.structured")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one core per lane
mkdir -p docs/study
timings=docs/study/timings.tsv
printf 'stage\tdesign\tseconds\n' > "$timings"   # this invocation's figures only
timed() {  # timed STAGE DESIGN command...
  local stage=$1 design=$2 start end; shift 2
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  printf '%s\t%s\t%s\n' "$stage" "$design" "$((end - start))" >> "$timings"
}

if [ ! -f data/toyworld/manifest.json ]; then
  timed prepare all ablate data prepare toyworld --out data/toyworld
fi
# the shared base every point starts from (recipes/toy/study-base.yaml), trained once on both cores
base_state() { python -c 'import json; print(json.load(open("runs/study-base/status.json"))["state"])' 2>/dev/null || true; }
if [ "$(base_state)" != completed ]; then
  timed base all ablate compile recipes/toy/study-base.yaml > /dev/null
  timed base all torchrun --nproc-per-node 2 launchers/pretrain.py recipes/toy/study-base.yaml --resume auto > docs/study/base.log 2>&1
fi
for d in $DESIGNS; do
  timed expand+compile "$d" ablate sweep expand "recipes/study/$d.yaml" > /dev/null
  timed expand+compile "$d-aa" ablate sweep expand "recipes/study/$d-aa.yaml" > /dev/null
done

# train + eval: LANES sweeps at a time, each one point after another
lane() {
  for d in "$@"; do
    timed train+eval "$d" ablate sweep submit "recipes/study/$d.yaml" > "docs/study/$d.log" 2>&1
    timed train+eval "$d-aa" ablate sweep submit "recipes/study/$d-aa.yaml" > "docs/study/$d-aa.log" 2>&1
  done
}
set -- $DESIGNS
pids=()
for ((i = 0; i < LANES; i++)); do
  mine=()
  for ((j = i; j < $#; j += LANES)); do idx=$((j + 1)); mine+=("${!idx}"); done
  [ ${#mine[@]} -gt 0 ] && { lane "${mine[@]}" & pids+=($!); }
done
for p in "${pids[@]}"; do wait "$p"; done

for d in $DESIGNS; do
  { ablate sweep status "recipes/study/$d.yaml"; ablate sweep status "recipes/study/$d-aa.yaml"; } > "docs/study/$d-status.txt"
  # the globs are ablate's (quoted): they keep run directories and skip the sweeps' sweep.json
  # shellcheck disable=SC2086  # DOSE holds a flag and its value
  timed report "$d" ablate report "runs/$d/*" "runs/$d-aa/*" --control "${CONTROL[$d]}" --aa ${DOSE[$d]:-} -o "docs/study/$d.html"
done
timed summary all python launchers/toy_world_summary.py --designs "${DESIGNS// /,}"
echo "reports: docs/study/*.html; tables: docs/study/summary.md; figures: docs/toy-world-results/; timings: $timings"
