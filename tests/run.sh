#!/usr/bin/env bash
# The whole test suite, from a fresh machine: builds what it needs, then runs
#  1. the CUDA compile+link check of Caffe with this project's .cu files (tools/caffe_build/build_caffe.sh
#     --cuda-check; cached, so only the first run pays for it; skip with --no-cuda);
#  2. this project's C++ gtests (hand-computed forward, GradientChecker) in Caffe's gtest binary;
#  3. Caffe's own CPU gtest suite, which must still pass with this project's patches;
#  4. pytest: Python layers, C++/Python agreement, errors, smoke trainings, pipeline.
# Usage: bash tests/run.sh [--no-cuda] [pytest arguments...]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CUDA=1
if [ "${1:-}" = "--no-cuda" ]; then CUDA=0; shift; fi
step() { echo; echo "=== $* ==="; }

step "build (CPU)"
bash "$ROOT/tools/caffe_build/build_caffe.sh"
if [ "$CUDA" = 1 ]; then
  step "CUDA compile+link check"
  bash "$ROOT/tools/caffe_build/build_caffe.sh" --cuda-check
fi
# shellcheck disable=SC1091
. "$ROOT/tools/env.sh"
LOGS="$ROOT/.build/test-logs"
mkdir -p "$LOGS"

run_gtest() {  # name, filter
  local log="$LOGS/gtest-$1.log"
  if (cd "$CAFFE_ROOT" && "$CAFFE_BUILD/test/test.testbin" --gtest_filter="$2") > "$log" 2>&1; then
    grep -E '^\[  PASSED  \]|tests from .* test cases ran' "$log" | sed "s/^/[$1] /"
  else
    tail -n 60 "$log"; echo "[$1] FAILED (full log: $log)"; return 1
  fi
}
step "gtest: this project's layers"
run_gtest layers '*Triplet*:*DSHLoss*:*PiecewiseThreshold*:*PairwiseCosineLoss*:*ProductQuantizationLoss*-*GPU*'
step "gtest: Caffe's own CPU suite"
run_gtest caffe '-*GPU*'

step "pytest"
cd "$ROOT"
exec "$TQN_PYTHON" -m pytest tests "$@"
