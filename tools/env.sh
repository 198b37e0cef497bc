# Source this file (bash): `. tools/env.sh`. It builds Caffe first when this checkout has no
# build yet (tools/caffe_build/build_caffe.sh), then exports
#   CAFFE_ROOT, CAFFE_BUILD, TQN_PYTHON (the virtual environment's python), TQN_ROOT,
#   PATH       with Caffe's tools (caffe, compute_image_mean, ...) and the venv's bin first,
#   PYTHONPATH with this checkout (data_prep, prototxt, tools), layers/python and pycaffe.
TQN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$TQN_ROOT/.build/caffe-cpu.env" ] || [ -n "${TQN_REBUILD:-}" ]; then
  bash "$TQN_ROOT/tools/caffe_build/build_caffe.sh" || return 1 2>/dev/null || exit 1
fi
set -a
# shellcheck disable=SC1091
. "$TQN_ROOT/.build/caffe-cpu.env"
set +a
export TQN_ROOT
export PATH="$CAFFE_BUILD/tools:$(dirname "$TQN_PYTHON"):$PATH"
export PYTHONPATH="$TQN_ROOT:$TQN_ROOT/layers/python:$CAFFE_ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
