#!/usr/bin/env bash
# Issue 10 on a lent GPU, in one device call of at most 8 minutes: synthesise procedural training,
# validation and test data on the machine's cores, train the demo recipe (zsw-demo-v5's model) at GPU
# batch size -- stages pixel and shape side by side on the one GPU, then stage full -- and score the
# result on 100 held-out in-the-wild test images. Everything it measured lands in $OUT/gpu-train-demo/
# (logs, metrics, the eval tables, the weights): commit it under bench/results/.
#
#   bash bench/gpu_prepare.sh                                   # here, where pip reaches PyPI
#   device call: PYTHONUNBUFFERED=1 bash bench/gpu_train_demo.sh    (carry [".whl"], timeout_s 540)
#
# SCALE=smoke runs every step with tiny sizes and no GPU check (ZSW_GPU_OPTIONAL), to test the
# script itself on a CPU; it says nothing about the model.
set -uo pipefail
cd "$(dirname "$0")/.."
scale="${SCALE:-gpu}"
if [ "$scale" = smoke ]; then export ZSW_GPU_OPTIONAL=1; fi
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh

results="${OUT:-bench/results}/gpu-train-demo"
mkdir -p "$results" data/gpu runs
log="$results/session.log"
C=sphere,box,cylinder,cone,torus,capsule,table,chair,mug,lamp,bottle
cpus=$(nproc)
if [ "$scale" = smoke ]; then
    objects=12; extra=4; val=11; views=2; train_min=1.5; full_min=1; steps=(--max-steps 4 --batch-size 4)
else
    objects=1200; extra=300; val=66; views=4; train_min=2.5; full_min=1.1; steps=()
fi
# each stage ends on its own after --max-minutes (its cosine learning rate ends with them); the
# timeout, 45 s more for the start and the last validation, only guards against a hang
train_s=$(python3 -c "print(round($train_min * 60 + 45))")
full_s=$(python3 -c "print(round($full_min * 60 + 45))")

{
    date -u +"== start %FT%TZ ($scale, $cpus CPUs)"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
    echo "== synthesise (train: $objects + $extra objects x $views views; val and test baked)"
    t0=$(date +%s)
    # the same seeds and sets as the CPU recipe (docs/reconstruct.md), larger; test = the project's test set.
    # Stopped at the cap, a synthesis lists the views it finished (SIGINT here; SIGTERM, timeout's
    # default, does the same: zsw.synth.procedural.stop_on_term)
    # Training cameras reach eye level and a little below (--elevation -10,65, not ZeroShape-W's 5-65):
    # zsw-demo-v6 loses to the true-size ellipsoid on eye-level views (bench/results/shape-learning.md (r))
    timeout -s INT -k 20 100 python3 -m zsw synthesize procedural --out data/gpu/train --objects "$objects" --views "$views" \
        --splits 0.97,0.03,0 --seed 10 -c $C --workers "$cpus" --elevation=-10,65 >/dev/null &
    timeout -s INT -k 20 100 python3 -m zsw synthesize procedural --out data/gpu/train3 --objects "$extra" --views 3 \
        --splits 0.95,0.05,0 --seed 14 -c ellipsoid,blocks,vase --workers 2 --elevation=-10,65 >/dev/null &
    timeout -s INT -k 20 100 python3 -m zsw synthesize procedural --out data/gpu/val --objects "$val" --views 2 --splits 0,1,0 \
        --bake val --seed 2 -c $C --workers 2 >/dev/null &
    timeout -s INT -k 20 100 python3 -m zsw synthesize procedural --out data/gpu/test --objects 25 --views 4 --splits 0,0,1 \
        --bake test --seed 1 -c $C --workers 2 >/dev/null &
    # the same test objects seen from eye level (the project's data/demo/test-low)
    timeout -s INT -k 20 100 python3 -m zsw synthesize procedural --out data/gpu/test-low --objects 25 --views 4 \
        --splits 0,0,1 --bake test --seed 1 -c $C --workers 2 --elevation=-10,15 >/dev/null &
    # meanwhile, on the idle GPU: no zsw kernel had run on a GPU before this script, so the Triton
    # kernels first pass their GPU tests against the reference, or training uses the reference
    # (on the first lent H200 they compiled and autotuned slower than the syntheses' 100 s on cores
    # busy with the syntheses: 11 passed, then the cap; a cap is not a failure, see below)
    timeout -k 10 150 python3 -m pytest -m gpu tests/kernels -q -p no:cacheprovider -x > "$results/kernel-check.log" 2>&1 &
    check=$!
    # and every other CUDA-only test (the web app's need gradio, which is not carried)
    timeout -k 10 100 python3 -m pytest -m gpu tests -q -p no:cacheprovider --maxfail=20 --ignore=tests/kernels \
        --ignore=tests/test_app.py --continue-on-collection-errors > "$results/gpu-tests.log" 2>&1 &
    wait "$check"
    check_rc=$?
    wait  # the syntheses
    if [ "$check_rc" = 124 ] || [ "$check_rc" = 137 ]; then
        # timed out with every test so far passed (-x stops at a failure): the Triton kernels train
        echo "the kernels' GPU tests ran out of time, none failed ($(grep -o '\.' "$results/kernel-check.log" | wc -l) passed; kernel-check.log): training with the Triton kernels"
    elif [ "$check_rc" != 0 ]; then
        export ZSW_KERNELS=torch
        echo "the Triton kernels failed their GPU tests (kernel-check.log): training with the reference kernels"
    else
        tail -n 1 "$results/kernel-check.log"
    fi
    echo "synthesised in $(( $(date +%s) - t0 )) s: $(find data/gpu -name '*.png' -path '*images_processed*' | wc -l) images"
    data=(--data data/gpu/train --data data/gpu/train3)

    echo "== stages pixel and shape side by side (${train_min} min each)"
    t0=$(date +%s)
    # how busy the GPU is while it trains (the first run was starved by its data loaders)
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 5 > "$results/gpu-util.csv" 2>/dev/null &
    util=$!
    timeout -s INT -k 30 "$train_s" python3 -m zsw train --config configs/gpu/pixel.yaml "${data[@]}" \
        --max-minutes "$train_min" --out runs/gpu-pixel --no-progress "${steps[@]}" > "$results/pixel.log" 2>&1 &
    timeout -s INT -k 30 "$train_s" python3 -m zsw train --config configs/gpu/shape.yaml "${data[@]}" \
        --max-minutes "$train_min" --out runs/gpu-shape --no-progress "${steps[@]}" > "$results/shape.log" 2>&1 &
    wait
    echo "pixel and shape in $(( $(date +%s) - t0 )) s"
    tail -n 3 "$results/pixel.log" "$results/shape.log"
    # stage full takes the pixel model's last weights (its masks were best at the end on the CPU)
    for f in final best; do
        if [ -f "runs/gpu-pixel/$f.safetensors" ]; then cp "runs/gpu-pixel/$f.safetensors" runs/gpu-pixel/last-pixel.safetensors; break; fi
    done

    echo "== stage full (${full_min} min)"
    timeout -s INT -k 30 "$full_s" python3 -m zsw train --config configs/gpu/full.yaml "${data[@]}" \
        --max-minutes "$full_min" --out runs/gpu-full --no-progress "${steps[@]}" > "$results/full.log" 2>&1
    tail -n 3 "$results/full.log"
    kill "$util" 2>/dev/null
    tail -n 1 "$results/gpu-tests.log" 2>/dev/null
    for stage in pixel shape full; do
        cp "runs/gpu-$stage/metrics.jsonl" "$results/$stage.metrics.jsonl" 2>/dev/null || true
    done
    cp runs/gpu-full/best.safetensors "$results/gpu-demo.safetensors" 2>/dev/null || echo "no stage-full weights"

    echo "== eval on the 100 test images (resolution 128, fast)"
    # --tta none: scored as the CPU tables it compares with are (auto would mirror on CUDA)
    device=(--device cuda --tta none)
    if [ "$scale" = smoke ]; then device=(--device cpu --tta none --resolution 16 --limit 4); fi
    timeout 75 python3 -m zsw eval --format procedural --data data/gpu/test --weights "$results/gpu-demo.safetensors" \
        --out "$results/eval.json" "${device[@]}" > "$results/eval.log" 2>&1
    cat "$results/eval.md" 2>/dev/null || tail -n 5 "$results/eval.log"
    echo "== eval on the same objects seen from eye level (elevation -10-15 degrees)"
    timeout 60 python3 -m zsw eval --format procedural --data data/gpu/test-low --weights "$results/gpu-demo.safetensors" \
        --out "$results/eval-low.json" "${device[@]}" > "$results/eval-low.log" 2>&1
    cat "$results/eval-low.md" 2>/dev/null || tail -n 5 "$results/eval-low.log"
    date -u +"== end %FT%TZ"
} 2>&1 | tee "$log"

# The device tool brings back at most 8 files: the weights, the eval tables and this log stay as
# they are, the stage logs, metrics and per-sample eval rows travel in one archive (12 files before)
(cd "$results" && tar -czf logs.tar.gz --remove-files --ignore-failed-read \
    pixel.log shape.log full.log pixel.metrics.jsonl shape.metrics.jsonl full.metrics.jsonl eval.log eval.samples.jsonl \
    eval-low.log eval-low.json eval-low.samples.jsonl kernel-check.log gpu-tests.log gpu-util.csv)
ls "$results"
