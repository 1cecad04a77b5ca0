"""Procedural shapes, renderer and dataset generation (zsw.synth.sdf / render / procedural)."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zsw.data.layout import SampleId, ZeroShapeLayout
from zsw.errors import ConfigError
from zsw.model.geometry import unproject_depth
from zsw.synth.pipeline import procedural_config
from zsw.synth.procedural import ProceduralConfig, generate, object_split
from zsw.synth.render import render, sample_material, sample_view
from zsw.synth.sdf import CATEGORIES, EXTRA_CATEGORIES, Box, Cone, Shape, Sphere, Torus, make_shape

pytestmark = pytest.mark.usefixtures("one_thread")


def test_primitives_hand_values():
    p = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 0.0]])
    assert torch.allclose(Sphere(1.0)(p)[:, 0], torch.tensor([1.0, -1.0, math.sqrt(8) - 1]))
    # unit box: face, centre (distance to the nearest face, negative), corner region
    assert torch.allclose(Box([1.0, 1.0, 1.0])(p)[:, 0], torch.tensor([1.0, -1.0, math.sqrt(2)]))
    # torus in the xz-plane, ring radius 1, tube 0.25: (2, 0, 0) is 1 from the ring, (2, 2, 0) sqrt(5)
    assert torch.allclose(Torus(1.0, 0.25)(p)[:, 0], torch.tensor([0.75, 0.75, math.sqrt(5) - 0.25]))
    # cone r1=1 at y=-1 to apex at y=+1: the base centre lies on the surface; below it the cap
    q = torch.tensor([[0.0, -1.0, 0.0], [0.0, -3.0, 0.0], [0.0, 0.0, 0.0]])
    d = Cone(1.0, 0.0, 1.0)(q)[:, 0]
    assert abs(d[0]) < 1e-6 and abs(d[1] - 2.0) < 1e-6 and d[2] < 0
    # a translated, rotated instance: placement is rigid
    R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    moved = Box([2.0, 0.5, 0.5], translation=[[1.0, 1.0, 0.0]], rotation=R[None])
    assert torch.allclose(moved(torch.tensor([[1.0, 3.5, 0.0]]))[0, 0], torch.tensor(0.5))


@pytest.mark.parametrize("category", CATEGORIES)
def test_shapes_are_normalised_and_exact_outside(category):
    rng = np.random.default_rng(3)
    shape = make_shape(category, rng, resolution=96)
    surface = torch.as_tensor(shape.surface_points(20000, rng, resolution=96))
    lo, hi = surface.min(0).values, surface.max(0).values
    assert abs(float((hi - lo).max()) - 1.0) < 0.01 and float((hi + lo).abs().max()) < 0.01
    assert float(shape.sdf(surface).abs().max()) < 1e-4  # projected points lie on the surface
    q = torch.rand(600, 3, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.7
    d = shape.sdf(q)
    nearest = torch.cdist(q, surface).min(dim=1).values  # brute force over dense surface samples
    spacing = 0.03  # upper bound of the gap between neighbouring samples
    outside = d > 0
    assert (d[outside] - nearest[outside]).abs().max() < spacing  # exact outside
    assert (-d[~outside] <= nearest[~outside] + 1e-5).all()  # a union is conservative inside
    assert outside.any() and (~outside).any()


@pytest.mark.parametrize("category", EXTRA_CATEGORIES)
def test_extra_shapes_are_normalised_with_exact_sign_and_safe_distances(category):
    """ellipsoid, blocks, vase: the sign is exact and the distance never overestimates (exact
    outside for the box unions and the revolved profile)."""
    rng = np.random.default_rng(5)
    shape = make_shape(category, rng, resolution=96)
    surface = torch.as_tensor(shape.surface_points(20000, rng, resolution=96))
    lo, hi = surface.min(0).values, surface.max(0).values
    assert abs(float((hi - lo).max()) - 1.0) < 0.01
    assert float(shape.sdf(surface).abs().max()) < 1e-3
    q = torch.rand(600, 3, generator=torch.Generator().manual_seed(1)) * 1.4 - 0.7
    d = shape.sdf(q)
    nearest = torch.cdist(q, surface).min(dim=1).values
    assert (d.abs() <= nearest + 0.03).all()  # never more than the true distance (+ sample spacing)
    if category != "ellipsoid":
        outside = d > 0
        assert (d[outside] - nearest[outside]).abs().max() < 0.03
    assert (d > 0).any() and (d < 0).any()
    assert category not in CATEGORIES  # asked for by name; the defaults keep their objects


def _render(category: str, seed: int):
    rng = np.random.default_rng(seed)
    shape = make_shape(category, rng, resolution=96)
    surface = shape.surface_points(5000, rng, resolution=96)
    view = sample_view(rng, surface)
    return shape, surface, view, render(shape, view, sample_material(rng, shape.num_parts))


@pytest.mark.parametrize("category", ["chair", "mug"])
def test_rendered_depth_lies_on_the_surface(category):
    shape, surface, view, r = _render(category, 5)
    K = torch.as_tensor(view.K, dtype=torch.float32)
    R = torch.as_tensor(view.R, dtype=torch.float32)
    t = torch.as_tensor(view.t, dtype=torch.float32)
    depth = torch.as_tensor(r.depth)
    hit = depth.reshape(-1) > 0
    assert 0.05 < hit.float().mean() < 0.9
    cam = unproject_depth(depth[None, None], K[None])[0][hit]  # [P, 3]
    obj = (cam - t) @ R  # camera -> object frame
    d = shape.sdf(obj).abs()
    footprint = cam[:, 2] / float(view.K[0, 0])  # one pixel at that depth
    assert float(d.median()) < 1e-4 and bool((d < 0.5 * footprint).all())
    # the sign flips across the surface along each pixel's ray
    rays = cam / cam.norm(dim=-1, keepdim=True)
    eps = 2e-3
    before, after = shape.sdf(((cam - eps * rays) - t) @ R), shape.sdf(((cam + eps * rays) - t) @ R)
    assert (before > 0).float().mean() > 0.99 and (after < 0).float().mean() > 0.9
    # background rays never meet the object: the SDF stays positive along them
    miss = ~hit & (torch.as_tensor(r.alpha).reshape(-1) == 0)
    ys, xs = np.divmod(np.nonzero(miss.numpy())[0][::97], view.size)
    pix = torch.stack([torch.as_tensor(xs), torch.as_tensor(ys), torch.ones(len(xs))], -1).float()
    dirs = pix @ torch.linalg.inv(K).T
    z = torch.linspace(0.1, 6.0, 400)
    samples = (dirs[:, None, :] * z[None, :, None]).reshape(-1, 3)
    assert bool((shape.sdf((samples - t) @ R) > 0).all())
    # the crop contains the whole silhouette, K in pixels at 224
    proj = (torch.as_tensor(surface) @ R.T + t) @ K.T
    uv = proj[:, :2] / proj[:, 2:]
    assert bool((uv > -0.5).all() and (uv < view.size - 0.5).all())
    # antialiasing only touches the silhouette: alpha is 0 or 1 away from it
    frac = (r.alpha > 0) & (r.alpha < 1)
    assert frac.sum() < 0.2 * r.mask.sum()


def test_camera_distribution():
    rng = np.random.default_rng(0)
    surface = np.random.default_rng(1).normal(size=(500, 3))
    surface = surface / np.linalg.norm(surface, axis=1, keepdims=True) * 0.5
    metas = [sample_view(rng, surface).meta for _ in range(300)]
    f = np.array([m["focal_mm"] for m in metas])
    e = np.array([m["elevation_deg"] for m in metas])
    assert f.min() >= 30 and f.max() <= 70 and e.min() >= 5 and e.max() <= 65
    assert f.max() - f.min() > 30 and e.max() - e.min() > 40  # the whole range is used


def test_camera_elevation_option_sets_the_range_and_the_camera_height():
    # --elevation -10,0: every camera at or below the object's horizon, so it looks up at it
    cfg = procedural_config("1,0,0", elevation="-10,0")
    assert cfg.camera.elevation_deg == (-10.0, 0.0)
    rng = np.random.default_rng(0)
    surface = np.random.default_rng(1).normal(size=(500, 3))
    surface = surface / np.linalg.norm(surface, axis=1, keepdims=True) * 0.5
    for _ in range(50):
        view = sample_view(rng, surface, cfg.camera)
        e = view.meta["elevation_deg"]
        assert -10 <= e <= 0
        R, t = view.Rt[:, :3], view.Rt[:, 3]
        eye = -R.T @ t  # the camera centre in the object frame (y up)
        assert eye[1] <= np.linalg.norm(eye) * np.sin(np.radians(0.1))
    bad_ranges = (("20,10", "elevation must satisfy"), ("-90,10", "elevation must satisfy"), ("5", "--elevation"))
    for bad, fragment in bad_ranges:
        with pytest.raises(ConfigError, match=fragment):
            procedural_config(elevation=bad)


def _digest(root) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():  # the manifest too: byte for byte, whatever the workers or interruptions
            out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def _manifest(root) -> list[str]:
    """Manifest lines, as written."""
    return (root / "manifest.jsonl").read_text().splitlines()


@pytest.mark.slow
def test_same_seed_same_files_for_any_workers_and_resume(tmp_path):
    cfg = ProceduralConfig(objects=3, views=2, seed=7, categories=("box", "mug", "lamp"), split_fractions=(1, 1, 1))
    a, b = tmp_path / "a", tmp_path / "b"
    report = generate(a, cfg, workers=1)
    assert report.rendered == 6 and report.skipped == 0
    generate(b, cfg, workers=2)
    assert _digest(a) == _digest(b) and _manifest(a) == _manifest(b)
    layout = ZeroShapeLayout(a)
    assert {s.name for s in layout.samples("train") + layout.samples("val") + layout.samples("test")} == {
        f"{c}_{i:05d}_{v:02d}" for i, c in enumerate(("box", "mug", "lamp")) for v in range(2)
    }
    records = [json.loads(line) for line in _manifest(a)]
    assert all(30 <= r["camera"]["focal_mm"] <= 70 and r["source"] == "procedural" for r in records)

    # an interrupted run: one view lost its image (written last), another view its manifest line
    lost = SampleId("mug", "00001", "01")
    layout.image(lost).unlink()
    lines = (a / "manifest.jsonl").read_text().splitlines()
    kept = [line for line in lines if "lamp_00002_00" not in line]
    (a / "manifest.jsonl").write_text("\n".join(kept) + "\n" + lines[0][:20])  # and a torn last line
    again = generate(a, cfg, workers=1)
    assert again.rendered == 1 and again.skipped == 5
    assert _digest(a) == _digest(b) and _manifest(a) == _manifest(b)

    # growing the dataset keeps the old files; other options may not change
    generate(a, ProceduralConfig(**{**cfg.__dict__, "objects": 4}), workers=1)
    grown = _digest(a)
    assert all(
        grown[k] == v
        for k, v in _digest(b).items()
        if not k.startswith("lists/") and k not in ("procedural.yaml", "manifest.jsonl")
    )
    assert len(grown) > len(_digest(b))
    # asking for fewer objects than the folder holds renders nothing and keeps every view listed
    listed = {s.name for split in ("train", "val", "test") for s in layout.samples(split)}
    assert len(listed) == 8
    assert generate(a, cfg, workers=1).rendered == 0
    assert {s.name for split in ("train", "val", "test") for s in layout.samples(split)} == listed
    assert _digest(a) == grown
    with pytest.raises(ConfigError, match="seed"):
        generate(a, ProceduralConfig(**{**cfg.__dict__, "seed": 8}))
    assert not list(a.rglob(".*tmp*"))


def test_a_dataset_resumed_by_other_code_says_its_views_may_differ(tmp_path, monkeypatch):
    """Every manifest record names the code that rendered it; resuming a dataset that other code
    (an older checkout, an edit within the release) started keeps its views but says the dataset
    now mixes two versions, and records each view's own code."""
    from zsw.io import code_identity
    from zsw.synth import jobs

    cfg = ProceduralConfig(objects=1, views=1, seed=3, categories=("box",), split_fractions=(1, 0, 0))
    assert generate(tmp_path, cfg).notes == []
    ours = code_identity(jobs.SYNTH_PACKAGES)
    assert [json.loads(line)["zsw_code"] for line in _manifest(tmp_path)] == [ours]
    assert generate(tmp_path, ProceduralConfig(**{**cfg.__dict__, "objects": 2})).notes == []

    monkeypatch.setattr(jobs, "code_identity", lambda packages: "other code")
    with open(tmp_path / "manifest.jsonl", "a") as f:  # a killed run's second record of one view
        f.write(_manifest(tmp_path)[0] + "\n")
    report = generate(tmp_path, ProceduralConfig(**{**cfg.__dict__, "objects": 3}))
    assert report.rendered == 1 and report.skipped == 2
    assert len(report.notes) == 1 and "2 of the 2 views" in report.notes[0] and "other zsw code" in report.notes[0]
    assert sorted(json.loads(line)["zsw_code"] for line in _manifest(tmp_path)) == sorted(["other code", ours, ours])


def test_a_stopped_run_leaves_a_dataset_of_what_it_finished(tmp_path, monkeypatch):
    """Ctrl-C or `timeout -s INT` during synthesis: the interrupt still propagates, but the views
    finished so far are listed (training can start on them); a rerun renders the rest."""
    import zsw.synth.procedural as procedural

    cfg = ProceduralConfig(objects=4, views=1, seed=5, categories=("box",), split_fractions=(1, 0, 0), size=64)
    real, calls = procedural._object_job, []

    def stopped_at_the_third(job):
        calls.append(job[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(procedural, "_object_job", stopped_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, cfg, workers=1)
    layout = ZeroShapeLayout(tmp_path)
    assert [s.name for s in layout.samples("train")] == ["box_00000_00", "box_00001_00"]
    monkeypatch.setattr(procedural, "_object_job", real)
    again = generate(tmp_path, cfg, workers=1)
    assert again.rendered == 2 and again.skipped == 2 and len(layout.samples("train")) == 4


def test_a_synthesis_stopped_by_sigterm_lists_what_it_finished(tmp_path):
    """`timeout 600 zsw synthesize ...` sends SIGTERM to the whole process group: the run left no
    split lists, so no data to train on until rerun. Now it stops as Ctrl-C stops it -- the views
    finished are listed -- says "terminated" and exits 143; workers end with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "zsw", "synthesize", "procedural", "--out", str(out), "--objects", "200",
           "--views", "1", "--categories", "box", "--splits", "1,0,0", "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    manifest, deadline = out / "manifest.jsonl", time.monotonic() + 120
    while not (manifest.is_file() and manifest.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # as timeout sends it: to the command and its workers
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err, (proc.returncode, err)
    listed = [s.name for s in ZeroShapeLayout(out).samples("train")]
    assert 2 <= len(listed) < 200 and all(ZeroShapeLayout(out).has_view(SampleId(*n.split("_"))) for n in listed)


def test_pool_workers_end_by_sigterm_not_by_the_parents_handler():
    """The pool ends its workers by SIGTERM: a worker that inherited the synthesis's handler
    (fork) raised there instead, and a worker unwinding while it waits on the task queue could
    hang in its exit while the pool waited on it (a suite run hung so). Workers take the default
    back, and a process forked before it does ends by the default as well."""
    import os
    import signal

    from zsw.synth.procedural import run_jobs, stop_on_term

    got = []
    with stop_on_term():
        run_jobs(signal.getsignal, [signal.SIGTERM] * 2, 2, got.append)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 5)
            finally:
                os._exit(7)
        _, status = os.waitpid(pid, 0)
    assert got == [signal.SIG_DFL, signal.SIG_DFL]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status


@pytest.mark.slow
def test_baked_test_split_has_background_and_consistent_occluders(tmp_path):
    cfg = ProceduralConfig(objects=2, views=1, seed=1, categories=("chair", "box"), split_fractions=(0, 0, 1))
    generate(tmp_path, ProceduralConfig(**{**cfg.__dict__, "bake_splits": ("test",)}))
    layout = ZeroShapeLayout(tmp_path)
    sids = layout.samples("test")
    assert len(sids) == 2
    occluded = 0
    for sid in sids:
        image = layout.read_image(sid)
        depth = np.load(layout.depth(sid))
        visible = layout.read_mask(layout.visible_mask(sid))
        occluder = layout.read_mask(layout.occluder_mask(sid))
        amodal = layout.read_alpha(sid) >= 0.5
        assert np.array_equal(visible, depth > 0)  # depth is the visible object's
        assert not (visible & occluder).any()
        assert (visible <= amodal | ~(depth > 0)).all()
        occluded += int((amodal & occluder).sum() > 0)
        outside = ~amodal & ~occluder
        assert np.abs(image[outside].astype(int) - 255).mean() > 5  # not a white background
    assert occluded >= 1


def test_baked_views_finished_but_unrecorded_get_their_occluders_back(tmp_path):
    """A run killed after an object's views were written but before their manifest records (the
    parent appends them once the whole object is done): the rerun rebuilds the records, and a
    baked view's record lists its occluders as an uninterrupted run's does."""
    cfg = ProceduralConfig(objects=1, views=2, seed=1, categories=("box",), split_fractions=(0, 0, 1), size=64,
                           surface_points=300, near_samples=300, uniform_samples=100, mesh_resolution=32,
                           bake_splits=("test",))  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, cfg, workers=1)
    whole = _manifest(a)
    assert all(json.loads(line)["occluders"] for line in whole)
    generate(b, cfg, workers=1)
    (b / "manifest.jsonl").write_text("")  # the records were never appended
    again = generate(b, cfg, workers=1)
    assert again.rendered == 0 and again.skipped == 2
    assert _manifest(b) == whole and _digest(b) == _digest(a)


def test_object_splits_follow_the_fractions():
    splits = [object_split(i, (0.8, 0.1, 0.1)) for i in range(100)]
    assert abs(splits.count("train") - 80) <= 2 and abs(splits.count("val") - 10) <= 2
    assert [object_split(i, (0.8, 0.1, 0.1)) for i in range(10)].count("train") == 8
    assert {object_split(i, (0.8, 0.1, 0.1)) for i in range(10)} == {"train", "val", "test"}


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown procedural categories"):
        ProceduralConfig(categories=("sphere", "dragon"))
    with pytest.raises(ConfigError, match="must not repeat, got box more than once"):
        ProceduralConfig(categories=("box", "sphere", "box"))
    with pytest.raises(ConfigError, match="bake splits"):
        ProceduralConfig(bake_splits=("holdout",))
    for splits in ((float("nan"), 1, 1), (1, float("inf"), 1), (0, 0, 0), (1, -1, 1)):  # nan != nan: no resume
        with pytest.raises(ConfigError, match="split fractions"):
            ProceduralConfig(split_fractions=splits)
    for size in (0, -32, 48):  # not a render failing later with a singular K or a torch error
        with pytest.raises(ConfigError, match="size must be a positive multiple of 32"):
            ProceduralConfig(size=size)
    with pytest.raises(ValueError):
        Shape([])


def test_backgrounds_without_bake_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="--backgrounds .* is used only with --bake"):
        procedural_config(background_dir=tmp_path)
    assert procedural_config(bake=["test"], background_dir=tmp_path).background_dir == str(tmp_path)


def test_refuses_to_write_into_a_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no zsw dataset"):
        generate(tmp_path, ProceduralConfig(objects=1, views=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_cli_synthesize_procedural(tmp_path):
    from zsw.cli.main import app

    runner = CliRunner()
    out = tmp_path / "proc"
    args = ["synthesize", "procedural", "--out", str(out), "--objects", "2", "--views", "1", "--workers", "1"]
    result = runner.invoke(app, [*args, "--categories", "torus,capsule", "--splits", "1,0,0", "--bake", "test"])
    assert result.exit_code == 0, result.output
    assert "rendered 2 views" in result.output and "train 2, val 0, test 0 views" in result.output
    assert sorted(p.name for p in (out / "lists").iterdir()) == ["capsule_train.list", "torus_train.list"]
    # a test split with no object in it is said at once, and again by `zsw eval`, which reads it by default
    assert "warning: no object fell in the test split that --bake test bakes (2 objects at --splits 1,0,0)" in (
        result.output
    )
    result = runner.invoke(
        app, ["eval", "--data", str(out), "--format", "procedural", "--out", str(tmp_path / "e.json")]
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert (
        lines[0] == f"error: {out} has no test lists (lists/<category>_test.list), only train: choose one with --split"
    )
    bad_options = [
        (["--categories", "dragon"], "unknown procedural categories"),
        (["--splits", "1,2"], "--splits"),
        (["--elevation", "5"], "--elevation"),
    ]
    for bad, fragment in bad_options:
        result = runner.invoke(app, [*args, *bad])
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 1 and len(lines) == 1 and fragment in lines[0], result.output


def test_a_second_run_into_a_dataset_being_rendered_stops_in_one_line(tmp_path):
    """Two unsharded ``zsw synthesize procedural --out D`` at once rendered the same views twice,
    the second's start deleted the first's temporary files as a killed run's (the first failed with
    "No such file or directory") and each rewrote the manifest under the other's appends. One
    process renders into a dataset (``--workers`` for more cores): the folder is locked for the
    run, and a second one stops before it writes anything, naming the first."""
    import fcntl
    import os

    from zsw.cli.main import app

    out = tmp_path / "proc"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # what the first run holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        args = ["synthesize", "procedural", "--out", str(out), "--objects", "1", "--views", "1", "--workers", "1"]
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert f"another process is writing to {out} (pid {os.getpid()}" in lines[0], lines[0]
        assert lines[0].endswith("stop it or choose another --out") and not any(out.iterdir())
        # the same from Python: generate() itself holds the lock, not only the command
        from zsw.locks import OutputBusyError

        with pytest.raises(OutputBusyError, match=f"another process is writing to {re.escape(str(out))}"):
            generate(out, ProceduralConfig(objects=1, views=1))
        assert not any(out.iterdir())
    finally:
        os.close(fd)


def test_resume_accepts_the_same_split_fractions_spelled_otherwise(tmp_path):
    """``--splits 2,1,1`` then ``--splits 0.5,0.25,0.25``: the same dataset, resumed with the
    dataset's own numbers (so every object keeps its split); other proportions are refused."""
    from zsw.config import dump_yaml
    from zsw.data.layout import ZeroShapeLayout
    from zsw.synth.procedural import CONFIG_FILE, check_dataset_resume

    first = ProceduralConfig(objects=3, split_fractions=(2, 1, 1))
    dump_yaml(first, tmp_path / CONFIG_FILE)
    layout = ZeroShapeLayout(tmp_path)
    resumed = check_dataset_resume(
        layout, ProceduralConfig(objects=5, split_fractions=(0.5, 0.25, 0.25)), CONFIG_FILE, ignore=("objects",)
    )
    assert resumed.split_fractions == first.split_fractions and resumed.objects == 5
    with pytest.raises(ConfigError, match="split_fractions"):
        check_dataset_resume(
            layout, ProceduralConfig(objects=5, split_fractions=(0.6, 0.2, 0.2)), CONFIG_FILE, ignore=("objects",)
        )
    # another kind of zsw dataset in the folder is named as such
    from zsw.synth.meshes import CONFIG_FILE as MESHES
    from zsw.synth.meshes import MeshConfig

    with pytest.raises(ConfigError, match="holds a procedural dataset; choose another --out"):
        check_dataset_resume(layout, MeshConfig(), MESHES)
