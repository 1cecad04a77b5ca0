"""Two-process DistributedDataParallel training on the CPU (gloo), launched through torchrun."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_process_gloo_run_keeps_replicas_in_sync(tiny64, tmp_path):
    """Replicas stay equal step by step, with a cosine schedule under a time limit too (rank 0's
    seconds broadcast after every step through gloo; tests/test_train_recipe.py checks that the
    rate follows them)."""
    data, model = tiny64
    run = tmp_path / "ddp"
    recipe = tmp_path / "cosine.yaml"
    recipe.write_text("optim: {lr: 0.001, schedule: cosine}\n")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "zsw", "train", "--config", str(recipe), "--preset", str(model), "--data", str(data),
        "--stage", "full", "--out", str(run),
        "--batch-size", "4", "--max-steps", "3", "--workers", "0", "--checkpoint-every", "1", "--log-every", "1",
        "--no-validate", "--no-progress", "--device", "cpu", "--max-minutes", "30",
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


@pytest.mark.slow
def test_a_torchrun_job_into_a_run_folder_in_use_stops_on_every_rank(tiny64, tmp_path):
    """Rank 0 alone locks the run folder (the job above shows the ranks do not lock each other
    out); when another process holds it, every rank stops with rank 0's one line, none waits for
    a rank that stopped."""
    import fcntl

    data, model = tiny64
    run = tmp_path / "ddp"
    run.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "zsw", "train", "--preset", str(model), "--data", str(data), "--stage", "full", "--out", str(run),
        "--batch-size", "4", "--max-steps", "1", "--workers", "0", "--no-validate", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    fd = os.open(run, os.O_RDONLY)  # another run's
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    finally:
        os.close(fd)
    said = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(said) == 2, done.stderr[-3000:]  # one line per rank
    assert all(f"another process is writing to {run} (pid {os.getpid()}" in line for line in said), said
    assert not any(run.iterdir())


def _last_step(metrics) -> int:
    """The largest step ``metrics.jsonl`` records so far (0 before it exists)."""
    steps = [0]
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        with contextlib.suppress(ValueError):  # a line being written
            steps.append(json.loads(line).get("step") or 0)
    return max(steps)


def _running(marker: str) -> list[int]:
    """The pids of the live processes whose command line holds ``marker`` (zombies aside)."""
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                alive = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
                if alive and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except (OSError, IndexError):
                continue
    return found


def _kill_leftovers(marker: str) -> list[int]:
    """SIGKILL every live process whose command line holds ``marker``; returns their pids."""
    import signal

    found = _running(marker)
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the agent's death reaches the ranks through prctl")
def test_ranks_whose_torchrun_agent_is_killed_stop_after_the_same_step_and_save_it(tiny64, tmp_path):
    """torchrun's agent killed by a signal it cannot pass on (SIGKILL, the OOM killer): its ranks
    do not train on headless; each gets a termination request, they agree to stop after the same
    step and save it, so no step is lost (checkpoints are 1,000 steps apart here)."""
    import signal
    import time

    data, model = tiny64
    run = tmp_path / "ddp-killed"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "zsw", "train", "--preset", str(model), "--data", str(data), "--stage", "full", "--out", str(run),
        "--batch-size", "2", "--max-steps", "1000", "--epochs", "1000", "--workers", "0", "--checkpoint-every",
        "1000", "--log-every", "1", "--no-validate", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "torchrun.log"  # a file, not a pipe: nobody reads a pipe while the run goes on
    metrics = run / "metrics.jsonl"
    with open(log, "w") as sink:
        agent = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while _last_step(metrics) < 4:  # mid-epoch: 3 steps each
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        deadline = time.monotonic() + 120
        while _running(str(run)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        left = _kill_leftovers(str(run))
    err = log.read_text()
    assert not left, f"ranks still running 120 s after their agent was killed: {left}"
    assert "asked to terminate: stopping after this step" in err, err[-3000:]
    saved = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert saved >= 4 and saved == _last_step(metrics), (saved, err[-2000:])
    assert f"interrupted: saved step {saved}; continue with --resume" in err
    assert [line.strip() for line in err.splitlines()].count("interrupted") == 1, err[-2000:]  # not once per rank
