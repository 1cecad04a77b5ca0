"""Fault injection: kill zsw commands at random points, fill the disk, make the output read-only.

For ``zsw synthesize procedural``, ``zsw reconstruct`` (a folder), ``zsw eval`` and ``zsw train``:
run the command once uninterrupted, then run it again in a fresh folder, SIGKILL it at seeded
random points of its progress (only the main process, as an OOM killer would), rerun the same
command until it completes, and compare the outputs with the uninterrupted run's: byte for byte where the docs
promise it (procedural datasets, reconstructed meshes and images, trained weights), equal up to
wall-clock timings elsewhere. No temporary file may remain, and no process of a killed run may
outlive it (orphaned pool workers would write into the folder while the rerun starts).

A full disk (``ENOSPC``) and a read-only folder are injected at the write layer (``zsw.io``), the
one every writer goes through, so the tests behave the same as root and in containers: the command
fails with one line naming the cause and leaves no partial result.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("toy.png", "bolt.png", "hat.png")
# one intra-op thread everywhere: oneDNN rounds differently with other thread counts, and the
# uninterrupted and the killed runs must compute the same numbers
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1"}


def _zsw(*args: str) -> list[str]:
    return [sys.executable, "-m", "zsw", *args]


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """True once no process of the group is left (its workers followed the killed parent)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _kill_then_finish(cmd: list[str], cwd: Path, done: Callable[[], int], total: int, seed: int,
                      kills: int = 2) -> list[str]:  # fmt: skip
    """SIGKILL ``cmd`` ``kills`` times at seeded random points (each kill on a fresh start of the
    same command), then run it to completion. A point is "after ``k`` of ``total`` units of work
    are done (``done()`` counts them), plus 0-300 ms": random, yet it lands while work remains on
    a machine of any speed or load (a point drawn in seconds would miss on a faster run). Returns
    the points that hit a running process."""
    rng = random.Random(seed)
    hit = []
    for _ in range(kills):
        now = done()
        if now > total - 2:
            break  # less than two units left: nothing worth interrupting
        k, extra = rng.randint(now, total - 2), rng.uniform(0.0, 0.3)
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)  # fmt: skip
        while proc.poll() is None and done() < k:
            time.sleep(0.02)
        time.sleep(extra)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # the main process only
            proc.wait()
            hit.append(f"{k}/{total} done + {extra * 1e3:.0f} ms")
            gone = _group_gone(proc.pid)
            if not gone:
                os.killpg(proc.pid, signal.SIGKILL)
            assert gone, f"processes of the killed {' '.join(cmd[2:4])} outlived it"
        else:
            proc.wait()
        proc.stdout.close()
    _run(cmd, cwd)
    return hit


def _count(pattern: str, root: Path) -> Callable[[], int]:
    return lambda: len(list(root.glob(pattern)))


def _lines(path: Path, header: int = 1) -> Callable[[], int]:
    def count() -> int:
        try:
            return max(0, len(path.read_text().splitlines()) - header)
        except OSError:
            return 0

    return count


def _train_step(run: Path) -> Callable[[], int]:
    def step() -> int:
        try:
            return int(json.loads((run / "checkpoints" / "latest.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            return 0

    return step


def _digests(root: Path, skip=()) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.startswith(".staging-")]


def _without_timings(obj):
    """JSON content without wall-clock fields (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in ("timings_s", "seconds", "timings")}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


# ---- SIGKILL at random points ---------------------------------------------------------------


@pytest.mark.slow
def test_synthesize_killed_anywhere_resumes_to_the_same_bytes(tmp_path):
    args = ("synthesize", "procedural", "--objects", "4", "--views", "2", "--seed", "5", "--workers", "2",
            "-c", "box", "-c", "mug")  # fmt: skip
    _run(_zsw(*args, "--out", "straight"), tmp_path)
    images = _count("images_processed/*/*.png", tmp_path / "killed")
    hits = _kill_then_finish(_zsw(*args, "--out", "killed"), tmp_path, images, total=8, seed=1)
    assert hits, "no kill landed while the command ran"
    assert _digests(tmp_path / "killed") == _digests(tmp_path / "straight")  # manifest included
    assert not _temporaries(tmp_path / "killed")


@pytest.mark.slow
def test_reconstruct_folder_killed_anywhere_resumes_to_the_same_files(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in IMAGES:
        (photos / name).write_bytes((REPO / "examples" / name).read_bytes())
    args = ("reconstruct", str(photos), "--resolution", "32", "--format", "glb", "--format", "obj")
    _run(_zsw(*args, "-o", "straight"), tmp_path)
    results = _count("*/result.json", tmp_path / "killed")
    hits = _kill_then_finish(_zsw(*args, "-o", "killed"), tmp_path, results, total=len(IMAGES), seed=2)
    assert hits
    a, b = tmp_path / "straight", tmp_path / "killed"
    assert _digests(b, skip=("result.json",)) == _digests(a, skip=("result.json",))
    for name in IMAGES:
        ra, rb = (json.loads((d / Path(name).stem / "result.json").read_text()) for d in (a, b))
        assert _without_timings(ra) == _without_timings(rb)
    assert not _temporaries(b)


def _rows(jsonl: Path) -> list[dict]:
    lines = jsonl.read_text().splitlines()
    return sorted((_without_timings(json.loads(line)) for line in lines[1:]), key=lambda r: r["name"])


@pytest.mark.slow
def test_eval_killed_anywhere_resumes_to_the_same_metrics(tmp_path):
    from zsw.synth.procedural import ProceduralConfig, generate

    root = tmp_path / "set"
    generate(root, ProceduralConfig(objects=2, views=2, seed=0, categories=("box", "mug"), split_fractions=(0, 0, 1)))
    args = ("eval", "--data", str(root), "--format", "procedural", "--resolution", "24", "--num-points", "500")
    _run(_zsw(*args, "--out", "straight/results.json"), tmp_path)
    rows = _lines(tmp_path / "killed" / "results.samples.jsonl")
    hits = _kill_then_finish(_zsw(*args, "--out", "killed/results.json"), tmp_path, rows, total=4, seed=3)
    assert hits
    a, b = tmp_path / "straight", tmp_path / "killed"
    assert _rows(b / "results.samples.jsonl") == _rows(a / "results.samples.jsonl")
    sa, sb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert _without_timings(sa) == _without_timings(sb)
    assert (a / "results.md").read_text() == (b / "results.md").read_text()
    assert not _temporaries(b)


@pytest.mark.slow
def test_train_killed_anywhere_resumes_to_the_same_weights(tiny64, tmp_path):
    from zsw import checkpoint
    from zsw.config import dump_yaml
    from zsw.train.config import DataConfig, TrainConfig

    root, model_yaml = tiny64
    data = DataConfig(roots=(str(root),), workers=0, points=512, val_samples=2)
    cfg = TrainConfig(model=str(model_yaml), stage="full", batch_size=2, validate=False, log_every=1, data=data,
                      max_steps=5, checkpoint_every=1, seed=3)  # fmt: skip
    recipe = tmp_path / "recipe.yaml"
    dump_yaml(cfg, recipe)
    args = ("train", "--config", str(recipe), "--resume", "--no-progress")
    _run(_zsw(*args, "--out", "straight"), tmp_path)
    steps = _train_step(tmp_path / "killed")
    hits = _kill_then_finish(_zsw(*args, "--out", "killed"), tmp_path, steps, total=5, seed=4)
    assert hits
    wa, _, _ = checkpoint.read(tmp_path / "straight" / "final.safetensors")
    wb, _, _ = checkpoint.read(tmp_path / "killed" / "final.safetensors")
    assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)
    assert not _temporaries(tmp_path / "killed")


# ---- full disk, read-only folder ------------------------------------------------------------


def _failing_writes(monkeypatch, code: int, after: int) -> None:
    """Every atomic write after the first ``after`` ones fails with ``code`` when it lands."""
    import contextlib

    import zsw.io as zio

    original = zio.atomic_path
    count = {"n": 0}

    @contextlib.contextmanager
    def atomic_path(path):
        with original(path) as tmp:
            yield tmp
            count["n"] += 1
            if count["n"] > after:
                raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(zio, "atomic_path", atomic_path)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_reconstruct_on_a_full_or_read_only_disk_fails_in_one_line_and_leaves_nothing(tmp_path, monkeypatch, code):
    from typer.testing import CliRunner

    from zsw.cli.main import app

    _failing_writes(monkeypatch, code, after=3)  # the mesh and the depth's picture and numbers land, the masks do not
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["reconstruct", str(REPO / "examples" / "toy.png"), "-o", str(out),
                                      "--resolution", "16", "--weights", "random:tiny"])  # fmt: skip
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {REPO / 'examples' / 'toy.png'}: cannot write results ([Errno {code}] "
                      f"{os.strerror(code)}: '{out / 'toy' / 'visible_mask.png'}')"]  # fmt: skip
    assert not [p for p in out.rglob("*") if p.is_file()]  # no partial result, no temporary file


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_synthesize_on_a_full_or_read_only_disk_fails_in_one_line(tmp_path, monkeypatch, code):
    from typer.testing import CliRunner

    from zsw.cli.main import app

    _failing_writes(monkeypatch, code, after=3)
    out = tmp_path / "data"
    result = CliRunner().invoke(app, ["synthesize", "procedural", "--out", str(out), "--objects", "1",
                                      "--views", "1", "--workers", "1", "-c", "box"])  # fmt: skip
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: {os.strerror(code)}: {out}"), result.output
    assert "Traceback" not in result.output
    assert not _temporaries(out)
    # what did land is complete: a view's image is written last, so an image means a whole view
    for image in (out / "images_processed").rglob("*.png"):
        depth = out / "depth" / image.relative_to(out / "images_processed").with_suffix(".npy")
        assert depth.is_file(), f"{image} landed without its depth"
