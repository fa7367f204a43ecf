#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the CIFAR-10 preset at a small size through every stage, offline,
# printing images/s per stage and peak GPU memory; first, evaluate's students one at a time vs together
# (benchmarks/students_together.py: images/s per student). Needs a copy of this tree and its venv, no network.
#   benchmarks/gpu_check.sh               on the GPU, default sizes (within 8 minutes on one recent GPU)
#   benchmarks/gpu_check.sh --cpu --tiny  the same path on the CPU at smoke-test sizes
# GPU_CHECK_TIMEOUT (seconds, default 480) stops a run that overshoots.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" --tiny "* ]]; then
    timeout 120 python benchmarks/students_together.py --students 3 --epochs 20 --rounds 2
fi
exec timeout "${GPU_CHECK_TIMEOUT:-480}" python benchmarks/gpu_check.py "$@"
