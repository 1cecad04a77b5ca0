"""Two-process DistributedDataParallel training on the CPU (gloo), launched through torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_process_gloo_run_keeps_replicas_in_sync(tiny64, tmp_path):
    data, model = tiny64
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "zsw", "train", "--preset", str(model), "--data", str(data), "--stage", "full", "--out", str(run),
        "--batch-size", "4", "--max-steps", "3", "--workers", "0", "--checkpoint-every", "1", "--log-every", "1",
        "--no-validate", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 rank(s) x 2 x 1" in done.stderr  # global batch 4 = 2 ranks x 2 samples
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    syncs = [r for r in records if r.get("event") == "sync"]
    # every checkpoint compared the ranks' parameter fingerprints: identical on both ranks...
    assert sorted({r["step"] for r in syncs}) == [1, 2, 3]
    assert all(len(r["digests"]) == 2 and r["digests"][0] == r["digests"][1] for r in syncs)
    # ... and changing from step to step (the fingerprint does see the updates)
    assert len({r["digests"][0] for r in syncs}) == 3
    losses = [r for r in records if "loss/total" in r]
    assert [r["step"] for r in losses] == [1, 2, 3] and all(r["nonfinite_steps"] == 0 for r in losses)
    assert (run / "final.safetensors").is_file()
    assert done.stdout.count("stage full at step 3") == 1  # rank 0 reports
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 3
