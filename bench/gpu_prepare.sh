#!/usr/bin/env bash
# Run HERE, where pip reaches PyPI, before calling the lent GPU machine: it puts into .whl/ (ignored
# by git, carried by the device call) the wheels that machine's image lacks (trimesh, rtree,
# fast_simplification, open_clip_torch, ftfy, wcwidth, and diffusers with importlib_metadata for the diffusion synthesis's
# GPU test; it has torch, triton, timm, transformers, typer, rich, scikit-image, opencv-python-headless, ...) and
# zsw's own wheel. bench/gpu_session.sh and bench/gpu_train_demo.sh install them there with --no-deps
# (bench/gpu_env.sh). docs/kernels.md and docs/training.md give the device calls.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl trimesh rtree fast_simplification open_clip_torch ftfy wcwidth diffusers importlib_metadata
python3 -m pip wheel -q --no-deps -w .whl .
# the commit the wheel was built from (+dirty: with uncommitted changes), for the results' git_sha
sha=$(git rev-parse --short=12 HEAD)
git diff --quiet HEAD -- . ':!.whl' || sha="$sha+dirty"
echo "$sha" > .whl/SOURCE
du -sh .whl && ls .whl
