#!/usr/bin/env bash
# Build and install mmcv 2.1.0 (full, with compiled ops) into a virtual environment that already holds torch.
#
#   scripts/build_mmcv.sh .venv        (what `make openmmlab` runs)
#
# Why a script: mmdet 3.3.0 and mmsegmentation 1.2.2 both assert mmcv >= 2.0.0rc4, < 2.2.0, and mmcv 2.1.0
# ships no wheel for the pinned torch, so it builds from its sdist. Three things the plain `pip install` lacks:
#   * torch's headers need a newer C++ standard than the sdist's setup.py asks for (c++14/17 -> c++20):
#     the sdist is unpacked into a temporary folder and its setup.py patched there (never site-packages);
#   * setup.py imports pkg_resources, which setuptools >= 81 no longer ships: setuptools < 81;
#   * setup.py imports torch: --no-build-isolation (the build sees this venv's torch).
# `mmcv-lite` is no substitute: it has no compiled ops (mmcv._ext), and mmdet's NMS needs them.
# On a machine where torch sees a GPU (or with FORCE_CUDA=1 and TORCH_CUDA_ARCH_LIST, e.g. "8.0;9.0", on one
# without) the build also compiles the CUDA ops: nvcc of torch's CUDA version must be on PATH.
#
# The built wheel is kept in ${GEAL_WHEEL_CACHE:-~/.cache/geal/wheels}/mmcv-2.1.0/torch-<version>-<cpu|cuda>/,
# so a second venv on the same machine installs it in seconds. On 2 CPU cores the CPU build takes ~10 min.
set -euo pipefail

VENV=${1:?usage: build_mmcv.sh VENV}
PY="$VENV/bin/python"
PIP="$VENV/bin/pip"
VERSION=2.1.0

if "$PY" - <<EOF 2>/dev/null
import mmcv, mmcv._ext  # noqa: F401  (the compiled ops)
assert mmcv.__version__ == "$VERSION", mmcv.__version__
EOF
then
    echo "build_mmcv: mmcv $VERSION with compiled ops is already installed in $VENV"
    exit 0
fi

"$PIP" install -q "setuptools<81" wheel

TORCH=$("$PY" -c "import torch; print(torch.__version__)")
# mmcv's setup.py builds the CUDA ops when torch sees a GPU or FORCE_CUDA=1 (then nvcc must be installed)
FLAVOUR=cpu
if [ "${FORCE_CUDA:-0}" = 1 ] || "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    FLAVOUR=cuda
fi
CACHE="${GEAL_WHEEL_CACHE:-$HOME/.cache/geal/wheels}/mmcv-$VERSION/torch-$TORCH-$FLAVOUR"
WHEEL=$(ls "$CACHE"/mmcv-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)

if [ -z "$WHEEL" ]; then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    echo "build_mmcv: building mmcv $VERSION from source for torch $TORCH ($FLAVOUR) in $WORK"
    # pip download runs the sdist's setup.py for its metadata: it needs pkg_resources and torch, hence above
    "$PIP" download -q --no-deps --no-binary :all: --no-build-isolation -d "$WORK" "mmcv==$VERSION"
    tar -xzf "$WORK/mmcv-$VERSION.tar.gz" -C "$WORK"
    SRC="$WORK/mmcv-$VERSION"
    grep -q -- "-std=c++" "$SRC/setup.py" || { echo "build_mmcv: no -std=c++ flag in setup.py" >&2; exit 1; }
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$SRC/setup.py"
    start=$(date +%s)
    if ! MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$PIP" wheel --no-deps --no-build-isolation -w "$WORK/dist" "$SRC" >"$WORK/build.log" 2>&1; then
        tail -n 60 "$WORK/build.log" >&2
        echo "build_mmcv: the mmcv build failed (the end of its log is above)" >&2
        exit 1
    fi
    echo "build_mmcv: built in $(( $(date +%s) - start )) s"
    mkdir -p "$CACHE"
    cp "$WORK"/dist/mmcv-"$VERSION"-*.whl "$CACHE"/
    WHEEL=$(ls "$CACHE"/mmcv-"$VERSION"-*.whl | head -n 1)
fi

"$PIP" install -q "$WHEEL"   # with its dependencies (mmengine, opencv-python, addict, yapf ...)
"$PY" -c "import mmcv, mmcv._ext; print('build_mmcv: installed mmcv', mmcv.__version__, 'with compiled ops')"
