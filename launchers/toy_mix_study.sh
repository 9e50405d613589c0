#!/usr/bin/env bash
# The mixture-search study on the toy world (issue 19), through the public interface only:
#
#   swarm (recipes/sweeps/swarm-toy.yaml: 20 mixtures of one stage, one tiny run each)
#   -> ablate mix fit (log-linear, boosted trees, GP; k-fold out of fold against seed noise)
#   -> ablate mix propose (the objective below, under the repetition caps)
#   -> the proposal, and the swarm's best and median points, trained with 3 seeds each
#   -> predicted against realised, and whether the proposal beats the best and the median
#      outside seed noise (launchers/toy_mix_summary.py report).
#
# Run from the repository root on a fresh clone (after `pip install -e ".[eval]"`):
#
#   launchers/toy_mix_study.sh            # ~70 min on one core: 20 + 7 runs of ~2 min
#
# Writes runs/swarm-toy/, runs/mix-{proposal,best,median}/ and $OUT (default
# docs/mixture-results/): fit/ (fit.json, fit.html), proposal.yaml, the confirmation sweeps,
# picked.json, summary.md and summary.json. Re-running skips completed points.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-docs/mixture-results}
TARGETS=probes/accuracy/program_output,bpb/math.text,bpb/math.structured,bpb/math.code
# higher is better: program-output accuracy, and minus the mean bits per byte over math styles
OBJECTIVE=${OBJECTIVE:-"'probes/accuracy/program_output' - 0.3333*('bpb/math.text' + 'bpb/math.structured' + 'bpb/math.code')"}
mkdir -p "$OUT"
[ -f data/toyworld/manifest.json ] || ablate data prepare toyworld --out data/toyworld
ablate sweep expand recipes/sweeps/swarm-toy.yaml > /dev/null
ablate sweep submit recipes/sweeps/swarm-toy.yaml
ablate mix fit "runs/swarm-toy/*" --target "$TARGETS" -o "$OUT/fit" --overwrite
ablate mix propose "$OUT/fit" --objective "$OBJECTIVE" -o "$OUT/proposal.yaml" --name mix-proposal --overwrite | tee "$OUT/propose.txt"
python launchers/toy_mix_summary.py pick --swarm "runs/swarm-toy/*" --objective "$OBJECTIVE" --out "$OUT"
for arm in proposal best median; do
  ablate sweep expand "$OUT/confirm-$arm.yaml" > /dev/null
  ablate sweep submit "$OUT/confirm-$arm.yaml"
done
python launchers/toy_mix_summary.py report --swarm "runs/swarm-toy/*" --objective "$OBJECTIVE" --out "$OUT"
