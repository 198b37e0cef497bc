#!/usr/bin/env bash
# The README's main job: builds Caffe if needed (tools/env.sh), then runs tools/main_job.py.
# Default: scikit-learn's digits, 12/24/48 bits, step 1 + step 2, a Table III-style table.
set -euo pipefail
# shellcheck disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$TQN_PYTHON" -m tools.main_job "$@"
