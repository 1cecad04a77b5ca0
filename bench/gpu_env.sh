# Sourced by bench/gpu_session.sh and bench/gpu_train_demo.sh on a lent GPU machine (bare image: no
# package registry, no trimesh/rtree/open_clip): installs the wheels bench/gpu_prepare.sh put into
# .whl/ with --no-deps into /tmp/site, puts it on PYTHONPATH, and checks that torch sees a GPU.
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
unset TRITON_INTERPRET ZSW_KERNELS
