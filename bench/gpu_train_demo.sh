#!/usr/bin/env bash
# Issue 10 on a lent GPU, in one device call of about 8 minutes: synthesise procedural training,
# validation and test data on the machine's cores, continue the packaged model (zsw-demo-v7: v6 with
# its up axis refitted) at GPU batch size -- its shape path (stage shape, on true surfaces), then
# stage full with its own pixel model -- and score the result and the packaged model itself on 100
# held-out in-the-wild test images, from above and from eye level.
# Everything it measured lands in $OUT/gpu-train-demo/ (logs, metrics, the eval tables, the
# weights): commit it under bench/results/. The first H200 run trained all three stages from
# scratch (stages pixel and shape side by side, 2.5 minutes each) and scored CD 0.075 against v6's
# 0.063, its loaders starved and its pixel model far from v6's (bench/results/gpu-train-demo/).
#
#   bash bench/gpu_prepare.sh                                   # here, where pip reaches PyPI
#   device call: PYTHONUNBUFFERED=1 bash bench/gpu_train_demo.sh    (carry [".whl"], timeout_s 560)
#
# SHAPE=wide trains, in place of continuing the packaged shape path, one twice as wide from scratch
# (configs/gpu/model-wide.yaml; stage full then takes it and the packaged pixel model, as by default), and
# writes to $OUT/gpu-train-demo-wide/: the tiny shape path levelled off near validation CD 0.054 on
# true surfaces on the CPU (2,400 more steps: 0.0546 -> 0.0542) and reached the same in 547 steps
# from scratch on the H200, so the continuation may gain little there; the CPU's 2x-wide run was
# 2-3 % better at 1,800 steps and still falling (bench/results/shape-learning.md (d), (j), (cc)).
#
# SCALE=smoke runs every step with tiny sizes and no GPU check (ZSW_GPU_OPTIONAL), to test the
# script itself on a CPU; it says nothing about the model.
set -uo pipefail
cd "$(dirname "$0")/.."
scale="${SCALE:-gpu}"
if [ "$scale" = smoke ]; then export ZSW_GPU_OPTIONAL=1; fi
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh

shape="${SHAPE:-continue}"
case "$shape" in
    continue) results="${OUT:-bench/results}/gpu-train-demo"
              shape_args=(--init demo --lr 0.0005); model=() ;;  # a trained shape path continues at half the rate
    wide)     results="${OUT:-bench/results}/gpu-train-demo-wide"
              model=(--preset configs/gpu/model-wide.yaml); shape_args=("${model[@]}") ;;  # from scratch
    *) echo "SHAPE must be continue or wide, got '$shape'" >&2; exit 2 ;;
esac
mkdir -p "$results" data/gpu runs
log="$results/session.log"
C=sphere,box,cylinder,cone,torus,capsule,table,chair,mug,lamp,bottle
cpus=$(nproc)
if [ "$scale" = smoke ]; then
    objects=12; extra=4; val=11; views=2; shape_min=3; full_min=3; steps=(--max-steps 4 --batch-size 4)
else
    objects=1200; extra=300; val=66; views=4; shape_min=2.5; full_min=1.25; steps=()
fi
workers=$(( cpus > 3 ? cpus - 2 : 1 ))  # one stage at a time: the loaders get every core but two
# each stage ends on its own after --max-minutes (its cosine learning rate ends with them); the
# timeout, 45 s more for the start and the last validation, only guards against a hang
shape_s=$(python3 -c "print(round($shape_min * 60 + 45))")
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
    # Only the bf16 ones, what training runs (34 tests took ~9 s each there): the rest are
    # bench/gpu_session.sh's
    timeout -k 10 150 python3 -m pytest -m gpu tests/kernels -k bf16 -q -p no:cacheprovider -x > "$results/kernel-check.log" 2>&1 &
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

    if [ "$shape" = wide ]; then what="a shape path twice as wide, from scratch"; else what="the packaged model's shape path"; fi
    echo "== stage shape: $what (${shape_min} min, $workers loader workers)"
    t0=$(date +%s)
    # how busy the GPU is while it trains (the first run was starved by its data loaders)
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 5 > "$results/gpu-util.csv" 2>/dev/null &
    util=$!
    # (a trained shape path continues at half the from-scratch rate, as configs/demo/shape-2.yaml did)
    timeout -s INT -k 30 "$shape_s" python3 -m zsw train --config configs/gpu/shape.yaml "${data[@]}" "${shape_args[@]}" \
        --max-minutes "$shape_min" --workers "$workers" --out runs/gpu-shape --no-progress "${steps[@]}" > "$results/shape.log" 2>&1
    echo "stage shape in $(( $(date +%s) - t0 )) s"
    tail -n 2 "$results/shape.log"

    echo "== stage full: that shape path, the packaged model's pixel model (${full_min} min)"
    timeout -s INT -k 30 "$full_s" python3 -m zsw train --config configs/gpu/full.yaml "${data[@]}" "${model[@]}" \
        --max-minutes "$full_min" --workers "$workers" --out runs/gpu-full --no-progress "${steps[@]}" > "$results/full.log" 2>&1
    tail -n 3 "$results/full.log"
    kill "$util" 2>/dev/null
    tail -n 1 "$results/gpu-tests.log" 2>/dev/null
    for stage in shape full; do
        cp "runs/gpu-$stage/metrics.jsonl" "$results/$stage.metrics.jsonl" 2>/dev/null || true
    done
    cp runs/gpu-full/best.safetensors "$results/gpu-demo.safetensors" 2>/dev/null || echo "no stage-full weights"

    echo "== eval on the 100 test images (resolution 128, fast), and the packaged model beside it"
    # --tta none: scored as the CPU tables it compares with are (auto would mirror on CUDA); the
    # packaged model scored in the same run on the same images is the baseline
    device=(--device cuda --tta none)
    if [ "$scale" = smoke ]; then device=(--device cpu --tta none --resolution 16 --limit 4); fi
    for set in test test-low; do
        suffix=${set#test}
        timeout 60 python3 -m zsw eval --format procedural --data "data/gpu/$set" --weights "$results/gpu-demo.safetensors" \
            --out "$results/eval$suffix.json" "${device[@]}" > "$results/eval$suffix.log" 2>&1 &
        timeout 60 python3 -m zsw eval --format procedural --data "data/gpu/$set" \
            --out "$results/packaged-eval$suffix.json" "${device[@]}" > "$results/packaged-eval$suffix.log" 2>&1 &
        wait
        if [ "$set" = test-low ]; then echo "== the same objects seen from eye level (elevation -10-15 degrees)"; fi
        grep -h "overall" "$results/eval$suffix.md" 2>/dev/null | sed 's/^/GPU-trained: /' || tail -n 3 "$results/eval$suffix.log"
        grep -h "overall" "$results/packaged-eval$suffix.md" 2>/dev/null | sed 's/^/packaged model: /' || tail -n 3 "$results/packaged-eval$suffix.log"
    done
    date -u +"== end %FT%TZ"
} 2>&1 | tee "$log"

# The device tool brings back at most 8 files: the weights, the eval tables and this log stay as
# they are, the stage logs, metrics and per-sample eval rows travel in one archive (12 files before)
(cd "$results" && tar -czf logs.tar.gz --remove-files --ignore-failed-read \
    shape.log full.log shape.metrics.jsonl full.metrics.jsonl eval.log eval.samples.jsonl \
    eval-low.log eval-low.json eval-low.samples.jsonl packaged-eval.log packaged-eval.json packaged-eval.samples.jsonl packaged-eval-low.log \
    packaged-eval-low.json packaged-eval-low.samples.jsonl packaged-eval-low.md kernel-check.log gpu-tests.log gpu-util.csv)
ls "$results"
