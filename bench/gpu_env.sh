# Sourced by bench/gpu_session.sh and bench/gpu_train_demo.sh on a lent GPU machine (bare image: no
# package registry, no trimesh/rtree/open_clip): installs the wheels bench/gpu_prepare.sh put into
# .whl/ with --no-deps into /tmp/site, puts it on PYTHONPATH, and checks that torch sees a GPU.
# PYTHONSAFEPATH keeps the current directory off sys.path: these scripts run from the repository
# root, where `python3 -m ...` and `python3 -c ...` would otherwise import the tree's zsw/ folder,
# which lacks zsw.kernels, zsw.cli and zsw.bench (setuptools maps them in from kernels/, cli/,
# bench/), instead of the installed wheel. Checked on the CPU in a Python 3.12 environment with the
# image's torch 2.11 and triton 3.6: without it every test module and command failed to import.
# PYTHONSAFEPATH is Python 3.11's (the lent image has 3.12): an older python3 would ignore it silently.
export PYTHONSAFEPATH=1
if ! python3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)"; then
    echo "$0: these scripts need Python 3.11 or newer for PYTHONSAFEPATH (python3 is $(python3 -V 2>&1))" >&2
    exit 2
fi
if [ -d .whl ] && ! python3 -c "import zsw, trimesh, open_clip" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "$0: installing the carried wheels failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    export PATH=/tmp/site/bin${PATH:+:$PATH}
fi
if [ -z "${ZSW_GPU_OPTIONAL:-}" ] && ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "$0: no CUDA device visible to torch" >&2
    exit 2
fi
if [ -f .whl/SOURCE ]; then export ZSW_GIT_SHA="$(cat .whl/SOURCE)"; fi
unset TRITON_INTERPRET ZSW_KERNELS
# no terminal there: rich would fit its tables into 80 columns and cut every cell to "…"
export COLUMNS="${COLUMNS:-200}"
