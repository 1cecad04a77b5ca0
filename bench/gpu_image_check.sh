#!/usr/bin/env bash
# Run HERE (a CPU machine that reaches PyPI), before spending device time: rehearse what
# bench/gpu_session.sh and bench/gpu_train_demo.sh meet on the lent GPU's bare image, minus the GPU.
#
#   bash bench/gpu_image_check.sh          # ~5 min the first time (the environment), ~3 min after
#
# 1. a virtual environment with the image's Python (3.12), torch 2.11, triton 3.6 and only the
#    packages the image has that zsw needs, at the versions KINDS.md lists where it lists them (no
#    gradio, trimesh, rtree, open_clip, diffusers: those are carried or left out), in
#    build/gpu-image-venv (ignored by git; VENV= to put it elsewhere);
# 2. bench/gpu_prepare.sh, then the carried wheels installed exactly as bench/gpu_env.sh does there;
# 3. the GPU tests collected (they skip without CUDA, but every module must import), every Triton
#    kernel compiled for sm_90 and sm_80 with the image's triton (the table goes to
#    bench/results/kernel-compile-triton36.md: no spills is the rule there too), and
#    `SCALE=smoke bash bench/gpu_train_demo.sh` end to end.
# It found the faults docs/kernels.md lists under "Checked without a GPU, in the image's versions".
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON312:-python3.12}"
venv="${VENV:-build/gpu-image-venv}"
if [ ! -x "$venv/bin/python3" ]; then
    "$py" -m venv "$venv"
    "$venv/bin/python3" -m pip install -q torch==2.11.0 triton==3.6.0 torchvision==0.26.0 timm typer rich \
        safetensors numpy pillow scikit-image opencv-python-headless onnxruntime scipy pyyaml tensorboard \
        pytest pytest-timeout onnx onnxscript transformers==5.17.0 huggingface_hub==1.33.0 accelerate requests
fi
bash bench/gpu_prepare.sh
venv="$(cd "$venv" && pwd)"
export PATH="$venv/bin:$PATH" ZSW_GPU_OPTIONAL=1
rm -rf /tmp/site
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh
python3 -c "import sys, torch, triton, zsw; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'zsw from', zsw.__file__)"
echo "== the GPU tests collect (they skip here)"
python3 -m pytest -m gpu tests -q -p no:cacheprovider --collect-only --ignore=tests/test_app.py | tail -1
echo "== every kernel compiled with the image's triton"
python3 -m zsw.kernels.compile_check --write-table bench/results/kernel-compile-triton36.md | tail -1
echo "== SCALE=smoke bash bench/gpu_train_demo.sh"
out="$(mktemp -d)"
SCALE=smoke OUT="$out" bash bench/gpu_train_demo.sh > "$out/log" 2>&1 || { tail -30 "$out/log"; exit 1; }
grep -E "^== (start|end)|overall" "$out/log"
rm -rf "$out" data/gpu runs/gpu-pixel runs/gpu-shape runs/gpu-full
