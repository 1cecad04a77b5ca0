#!/usr/bin/env bash
# One command for a session with a lent GPU (<= 10 minutes on an H100):
#
#   bash bench/gpu_session.sh            # from the repository root, zsw installed or its wheels in .whl/
#
# 1. the GPU-only kernel tests (compiled Triton, model-scale shapes, bf16 without the interpreter
#    workarounds), 2. the full kernel benchmark, 3. results in bench/results/<gpu>-kernels.csv (rows
#    appended) and bench/results/<gpu>-kernels.md (the issue's targets, met or not, plus each
#    provider's correctness check), and the complete log in bench/results/<gpu>-kernels.log.
# The first benchmark call of each kernel autotunes it (a few seconds each).
#
# On the lent machine (bare image: no package registry, no trimesh/rtree/open_clip), run
# bench/gpu_prepare.sh here first and carry .whl: this script installs it into /tmp/site with
# --no-deps, writes everything under $OUT (the device tool brings it back; default bench/results)
# and caps every part so the whole call stays under 8 minutes.
set -uo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh
results="${OUT:-bench/results}"
mkdir -p "$results"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader || true
gpu=$(python3 -c "from zsw.bench._harness import environment, gpu_slug; print(gpu_slug(environment()))")
log="$results/${gpu}-session.log"

{
    echo "== pytest -m gpu (every CUDA-only test)"
    # the web app's tests need gradio, which is not carried (the image lacks it and its many
    # dependencies); any other module that fails to import costs its own tests, not the run
    timeout -k 10 150 python3 -m pytest -m gpu tests -q -p no:cacheprovider --maxfail=20 \
        --ignore=tests/test_app.py --continue-on-collection-errors
    tests_rc=$?
    echo "== zsw bench kernels"
    timeout -s INT -k 20 150 python3 -m zsw bench kernels --out "$results/${gpu}-kernels.csv" --summary "$results/${gpu}-kernels.md"
    kernels_rc=$?
    echo "== zsw bench reconstruct (zeroshape-w, random weights; fast and dense; fp32 and bf16; triton and torch)"
    timeout -s INT -k 20 120 python3 -m zsw bench reconstruct --weights random:zeroshape-w --precision fp32 --precision bf16 \
        --image examples/armchair.png \
        --out "$results/${gpu}-reconstruct.csv" \
        --summary "$results/${gpu}-reconstruct.md"
    reconstruct_rc=$?
    echo "== zsw bench train (zeroshape-w, batch 80, bf16)"
    timeout -s INT -k 20 60 python3 -m zsw bench train --preset zeroshape-w --batch-size 80 --amp bf16 --out "$results/${gpu}-train.csv"
    train_rc=$?
    echo "== exit codes: tests ${tests_rc}, kernels ${kernels_rc}, reconstruct ${reconstruct_rc}, train ${train_rc}"
} 2>&1 | tee "$log"

echo
cat "$results/${gpu}-kernels.md" "$results/${gpu}-reconstruct.md" 2>/dev/null || echo "no summary written (see $log)"
