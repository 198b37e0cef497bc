#!/usr/bin/env bash
# Build BVLC Caffe with this project's layers, installing what the build needs first.
#
#   tools/caffe_build/build_caffe.sh                 # CPU build: libcaffe, tools, pycaffe, gtest binary
#   tools/caffe_build/build_caffe.sh --cuda-check    # CUDA build (compiled and linked, not run: no GPU here)
#   tools/caffe_build/build_caffe.sh --source DIR    # offline: Debian's caffe source tarballs (or folder) in DIR
#
# It is a thin wrapper over the top-level CMakeLists.txt:
#  1. installs the Debian packages the build needs (apt-get; through sudo when not root), saying so;
#  2. makes the Python virtual environment at a stable path, $TQN_CACHE/venv (numpy's include
#     path is in every compile line: a moving venv would force full rebuilds), from
#     tools/requirements.txt;
#  3. for --cuda-check, installs cuBLAS/cuRAND/NCCL headers and libraries from PyPI's nvidia wheels
#     into $TQN_CACHE/cuda-deps (the CUDA folder here lacks them; NCCL gives `caffe train -gpu all`);
#  4. runs cmake + ninja; the Caffe build lives in $TQN_CACHE (default ~/.cache/tqn-caffe), keyed by
#     source, patches, options and toolchain, under a lock;
#  5. writes .build/caffe-<variant>.env in this checkout: where the source, the build and the
#     Python are (read by tools/env.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${TQN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tqn-caffe}
VARIANT=cpu
SOURCE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda-check) VARIANT=cuda ;;
    --source) SOURCE=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build_caffe.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$CACHE"
say() { echo "[build_caffe] $*" >&2; }

# ---[ 1. Debian packages
APT_PACKAGES=(cmake ninja-build g++ patch xz-utils util-linux
  libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev
  libleveldb-dev libsnappy-dev liblmdb-dev libopenblas-dev
  libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != "installed" ]; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# ---[ 2. Python virtual environment (stable path)
BASE_PYTHON=${TQN_BASE_PYTHON:-python3}
VENV="$CACHE/venv"
REQ="$ROOT/tools/requirements.txt"
stamp_want="$(sha256sum "$REQ" | cut -c1-16) $("$BASE_PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.tqn-stamp" 2>/dev/null)" != "$stamp_want" ]; then
  say "preparing the Python environment $VENV from tools/requirements.txt"
  [ -x "$VENV/bin/python" ] || "$BASE_PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" >&2
  echo "$stamp_want" > "$VENV/.tqn-stamp"
fi

# ---[ 3. cuBLAS / cuRAND / NCCL for the CUDA check
CMAKE_ARGS=(-DTQN_PYTHON="$VENV/bin/python" -DTQN_CACHE_DIR="$CACHE")
if [ -n "$SOURCE" ]; then CMAKE_ARGS+=(-DCAFFE_SOURCE="$SOURCE"); fi
if [ "$VARIANT" = cuda ]; then
  command -v nvcc >/dev/null || { say "nvcc not found: the CUDA check needs the CUDA toolkit's compiler"; exit 1; }
  DEPS="$CACHE/cuda-deps"
  CUDA_REQ="nvidia-cublas>=13,<14 nvidia-curand>=10.4,<11 nvidia-nccl-cu13>=2.28,<3"
  if [ "$(cat "$DEPS/.tqn-stamp" 2>/dev/null)" != "$CUDA_REQ" ]; then
    say "installing cuBLAS, cuRAND and NCCL (PyPI nvidia wheels for CUDA 13) into $DEPS"
    rm -rf "$DEPS.tmp"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --target "$DEPS.tmp" $CUDA_REQ >&2
    rm -rf "$DEPS" && mv "$DEPS.tmp" "$DEPS"
    echo "$CUDA_REQ" > "$DEPS/.tqn-stamp"
  fi
  CMAKE_ARGS+=(-DTQN_CUDA=ON -DTQN_CUDA_EXTRA_ROOTS="$DEPS/nvidia/cu13;$DEPS/nvidia/nccl")
fi

# ---[ 4. cmake + ninja (the superbuild folder is per checkout; Caffe's build is shared by key)
SUPER="$CACHE/super-$VARIANT-$(echo -n "$ROOT" | sha256sum | cut -c1-12)"
start=$(date +%s)
cmake -S "$ROOT" -B "$SUPER" -G Ninja "${CMAKE_ARGS[@]}" > "$CACHE/configure-$VARIANT.log" 2>&1 || {
  cat "$CACHE/configure-$VARIANT.log" >&2; say "cmake configure failed (log above)"; exit 1; }
cmake --build "$SUPER" >&2
say "$VARIANT build ready in $(( $(date +%s) - start )) s"

# ---[ 5. where things are, for tools/env.sh
mkdir -p "$ROOT/.build"
cp "$SUPER/caffe-paths.env" "$ROOT/.build/caffe-$VARIANT.env.tmp"
echo "TQN_SUPERBUILD=$SUPER" >> "$ROOT/.build/caffe-$VARIANT.env.tmp"
mv "$ROOT/.build/caffe-$VARIANT.env.tmp" "$ROOT/.build/caffe-$VARIANT.env"
