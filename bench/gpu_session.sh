#!/usr/bin/env bash
# One command for a session with a lent GPU (<= 10 minutes on an H100):
#
#   bash bench/gpu_session.sh            # from the repository root, with zsw installed (pip install -e ".[dev]")
#
# 1. the GPU-only kernel tests (compiled Triton, model-scale shapes, bf16 without the interpreter
#    workarounds), 2. the full kernel benchmark, 3. results in bench/results/<gpu>-kernels.csv (rows
#    appended) and bench/results/<gpu>-kernels.md (the issue's targets, met or not, plus each
#    provider's correctness check), and the complete log in bench/results/<gpu>-kernels.log.
# The first benchmark call of each kernel autotunes it (a few seconds each).
set -uo pipefail

cd "$(dirname "$0")/.."
mkdir -p bench/results
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_session.sh: no CUDA device visible to torch" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader || true
gpu=$(python -c "from zsw.bench._harness import environment, gpu_slug; print(gpu_slug(environment()))")
log="bench/results/${gpu}-kernels.log"
unset TRITON_INTERPRET ZSW_KERNELS

{
    echo "== pytest -m gpu tests/kernels"
    timeout 240 pytest -m gpu tests/kernels -q -p no:cacheprovider
    tests_rc=$?
    echo "== zsw bench kernels"
    timeout -s INT -k 30 330 zsw bench kernels --out "bench/results/${gpu}-kernels.csv" --summary "bench/results/${gpu}-kernels.md"
    bench_rc=$?
    echo "== exit codes: tests ${tests_rc}, bench ${bench_rc}"
} 2>&1 | tee "$log"

echo
cat "bench/results/${gpu}-kernels.md" 2>/dev/null || echo "no summary written (see $log)"
