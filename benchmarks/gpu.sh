#!/usr/bin/env bash
# The one GPU command (issue: a GPU check ready to run). On a machine with only PyTorch (and CUDA):
#
#   bash benchmarks/gpu.sh [gpu.py flags]      # e.g. --steps 120 --json gpu.json
#
# It installs megatron-core and the few pure-Python packages ablate's engine imports from
# wheels carried in .gpu-wheels/ (no registry needed; fetch them beforehand, where a registry
# is reachable, with `bash benchmarks/gpu.sh --fetch-wheels [PYTHON_VERSION]`, default 3.12),
# then runs benchmarks/gpu.py: ablate's engine and a bare megatron-core loop on the same
# ~100M-active MoE in bf16, printed as a ratio (see gpu.py's docstring). ~3-5 min on one H200.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
PACKAGES=(megatron-core==0.16.1 pyyaml tqdm numpy packaging typing_extensions)
if [ "${1:-}" = "--fetch-wheels" ]; then
  py="${2:-3.12}"
  mkdir -p "$WHEELS"
  python3 -m pip download --only-binary=:all: --no-deps --python-version "$py" --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
  ls "$WHEELS"
  exit 0
fi
if ! python3 -c "import megatron.core, yaml, tqdm" 2>/dev/null; then
  # deps resolve against what is installed (torch, numpy stay); only missing ones come from the wheels
  python3 -m pip install --no-index --find-links "$WHEELS" "${PACKAGES[@]:0:3}" 2>&1 | tail -2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 exec python3 benchmarks/gpu.py "$@"
