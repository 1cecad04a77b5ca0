"""``zsw synthesize meshes``: meshes of one's own rendered into the procedural layout
(zsw.synth.mesh_sdf, zsw.synth.meshes), end to end through the CLI at a tiny size.

The folder: a box (its renders are checked against an analytic ray-box intersection), a torus
named with an '_', an open cylinder in a subfolder (a category; rendered as a shell, with a
warning), a corrupt PLY (fails alone) and a text file (passed over).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from zsw.cli.main import app
from zsw.data.layout import SampleId, ZeroShapeLayout
from zsw.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
BOX = (1.0, 0.6, 0.4)  # extents: already centred with longest side 1, so the object frame is the file's
GRID = 48
OPTIONS = ["--views", "2", "--size", "64", "--grid", str(GRID), "--workers", "1", "--splits", "1,0,0"]


def _torus(minor: float) -> trimesh.Trimesh:
    return trimesh.creation.torus(0.35, minor, major_sections=32, minor_sections=16)


def _open_cylinder() -> trimesh.Trimesh:
    tube = trimesh.creation.cylinder(0.3, 1.0, sections=24)  # along z
    tube.update_faces(np.abs(tube.face_normals[:, 2]) < 0.5)  # the caps dropped
    tube.remove_unreferenced_vertices()
    return tube


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    root = tmp_path_factory.mktemp("meshes")
    trimesh.creation.box(BOX).export(root / "box.obj")
    _torus(0.12).export(root / "torus_1.glb")
    (root / "shells").mkdir()
    _open_cylinder().export(root / "shells" / "open_cyl.stl")
    (root / "corrupt.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1 2\n")
    (root / "notes.txt").write_text("not a mesh")
    return root


def _run(meshes, out, *extra):
    return runner.invoke(app, ["synthesize", "meshes", str(meshes), "--out", str(out), *OPTIONS, *extra])


@pytest.fixture(scope="module")
def dataset(meshes, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "mine"
    result = _run(meshes, out)
    return out, result


def _sid(name: str) -> SampleId:
    return SampleId(*name.rsplit("_", 2))


def _normalised(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    from zsw.synth.mesh_sdf import normalize

    return trimesh.Trimesh(normalize(mesh.vertices, mesh.faces), mesh.faces, process=False)


def test_the_run_renders_every_good_mesh_and_names_the_bad_one(dataset):
    out, result = dataset
    assert result.exit_code == 1, result.output  # the corrupt mesh fails the command, after the others
    assert "corrupt.ply" in result.output and "rendered 6 views of 3 meshes" in result.output
    warnings = [line for line in result.output.splitlines() if "open surface" in line]
    assert len(warnings) == 1 and "shells/open_cyl.stl" in warnings[0] and "shell" in warnings[0]
    assert "notes.txt" in result.output  # passed over, said once
    layout = ZeroShapeLayout(out)
    names = sorted(s.name for s in layout.samples("train"))
    assert names == [f"{o}_{v}" for o in ("object_box", "object_torus-1", "shells_open-cyl") for v in ("00", "01")]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in records) == names and {r["source"] for r in records} == {"mesh"}
    assert {r["mesh"] for r in records} == {"box.obj", "torus_1.glb", "shells/open_cyl.stl"}


def _box_hits(K, Rt, size):  # per pixel centre: camera z where its ray meets the box, 0 if it misses
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    cam = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3) @ np.linalg.inv(K).T  # z = 1
    R, t = Rt[:, :3], Rt[:, 3]
    origin, dirs = -R.T @ t, cam @ R  # object frame; a step of 1 along dirs is 1 in camera z
    half = np.array(BOX) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (-half - origin) / dirs, (half - origin) / dirs
    near, far = np.minimum(t0, t1).max(-1), np.maximum(t0, t1).min(-1)
    return np.where(near < far, near, 0.0).reshape(size, size)


def test_box_mask_and_depth_match_the_analytic_box(dataset):
    out, _ = dataset
    layout = ZeroShapeLayout(out)
    for view in ("00", "01"):
        sid = SampleId("object", "box", view)
        K, Rt = np.load(layout.intrinsics(sid)), np.load(layout.extrinsics(sid))
        truth = _box_hits(K.astype(np.float64), Rt.astype(np.float64), 64)
        mask = layout.read_mask(layout.mask(sid))
        iou = (mask & (truth > 0)).sum() / (mask | (truth > 0)).sum()
        assert iou > 0.97, (view, iou)
        depth = np.load(layout.depth(sid))
        both = (depth > 0) & (truth > 0)
        assert np.median(np.abs(depth[both] - truth[both])) < 5e-4
        # the depth lifted to the object frame lies on the box: exactly on its faces, within a third of a
        # grid cell where the grid rounds its edges off
        ys, xs = np.nonzero(depth > 0)
        cam = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K).T * depth[ys, xs, None]
        d = np.abs((cam - Rt[:, 3]) @ Rt[:, :3]) - np.array(BOX) / 2
        off = np.abs(np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(-1), 0))  # |box SDF|
        cell = (1 + 2 * (0.02 + 3 / GRID)) / GRID
        assert np.median(off) < 2e-4 and off.max() < cell / 3, (view, np.median(off), off.max())


def test_gt_sdf_signs_agree_with_trimesh_and_points_lie_on_the_surface(dataset, meshes):
    out, _ = dataset
    layout = ZeroShapeLayout(out)
    for obj, mesh in (("box", trimesh.creation.box(BOX)), ("torus-1", _torus(0.12))):
        true = _normalised(mesh)
        sid = SampleId("object", obj, "00")
        pts, sdf = layout.read_gt_sdf(sid)
        assert len(pts) == 24576 + 8192
        pick = np.random.default_rng(0).choice(len(pts), 3000, replace=False)
        pts, sdf = pts[pick].astype(np.float64), sdf[pick]
        inside = true.contains(pts)
        assert ((sdf < 0) == inside).all(), (obj, ((sdf < 0) != inside).sum())
        dist = trimesh.proximity.closest_point(true, pts)[1]
        near = dist < 0.05  # exact there (farther: the grid's distance transform, within about a cell)
        assert np.abs(np.abs(sdf[near]) - dist[near]).max() < 1e-4
        cloud = np.load(layout.pointcloud(sid)).astype(np.float64)
        assert len(cloud) == 10000 and trimesh.proximity.closest_point(true, cloud[:500])[1].max() < 1e-5


def test_an_open_mesh_is_a_shell_with_a_hollow_inside(dataset):
    out, _ = dataset
    pts, sdf = ZeroShapeLayout(out).read_gt_sdf(SampleId("shells", "open-cyl", "00"))
    radius = np.hypot(pts[:, 0], pts[:, 1])  # the tube runs along z; normalised, its radius is 0.3
    along = np.abs(pts[:, 2]) < 0.45
    wall = along & (np.abs(radius - 0.3) < 0.005)
    hollow = along & (radius < 0.2)
    assert wall.sum() > 100 and (sdf[wall] < 0).all()  # the sheet, thickened, is solid
    assert hollow.sum() > 100 and (sdf[hollow] > 0.05).all()  # the flood went inside: no filling


def test_the_dataset_loads_for_training_and_evaluation(dataset, tmp_path):
    from zsw.data.dataset import ShapeDataset
    from zsw.data.eval_sets import open_eval_set
    from zsw.synth.meshes import MeshConfig, generate_meshes

    out, _ = dataset
    ds = ShapeDataset([out], "train", points=512, size=64)
    assert len(ds) == 6
    for i in range(len(ds)):
        item = ds[i]
        assert item["skipped"] == 0 and item["image"].shape == (3, 64, 64) and item["points"].shape == (512, 3)
        assert 0 < float(item["occupancy"].float().mean()) < 1 and float(item["visible_mask"].sum()) > 50
    # the evaluation reader takes 224 px test views: one of the box, through the library, baked in the
    # wild (a background and procedural occluders) as `--bake test` does it
    (tmp_path / "in").mkdir()
    trimesh.creation.box(BOX).export(tmp_path / "in" / "box.ply")
    cfg = MeshConfig(views=1, grid=32, split_fractions=(0, 0, 1), near_samples=600, uniform_samples=200,
                     bake_splits=("test",), min_occluders=1)  # fmt: skip
    assert generate_meshes(tmp_path / "in", tmp_path / "eval", cfg).rendered == 1
    (sample,) = open_eval_set(tmp_path / "eval", "procedural")
    assert sample.name == "object_box_00" and sample.image.shape == (224, 224, 3)
    assert sample.gt_points.shape == (10000, 3) and sample.mask.sum() > 1000
    (record,) = [json.loads(line) for line in (tmp_path / "eval" / "manifest.jsonl").read_text().splitlines()]
    assert record["baked"] and record["occluders"]
    layout, sid = ZeroShapeLayout(tmp_path / "eval"), SampleId("object", "box", "00")
    assert layout.read_mask(layout.occluder_mask(sid)).any() and not (sample.image[~sample.mask] == 255).all()


def test_resume_redoes_only_a_deleted_view(dataset, meshes, tmp_path):
    out = tmp_path / "mine"
    shutil.copytree(dataset[0], out)
    layout = ZeroShapeLayout(out)
    sid = SampleId("object", "torus-1", "01")
    before = layout.image(sid).read_bytes()
    layout.image(sid).unlink()
    result = _run(meshes, out)
    assert "rendered 1 views of 3 meshes" in result.output and "5 were already there" in result.output, result.output
    assert layout.image(sid).read_bytes() == before  # the same seeds, the same view
    records = [json.loads(line) for line in layout.manifest.read_text().splitlines()]
    assert len({r["name"] for r in records}) == len(records) == 6
    assert "other zsw code" not in result.output  # the same code rendered the other five
    from zsw.io import code_identity
    from zsw.synth.jobs import SYNTH_PACKAGES

    assert {r["zsw_code"] for r in records} == {code_identity(SYNTH_PACKAGES)}


def test_a_changed_mesh_or_setting_is_refused_and_redone_on_request(dataset, meshes, tmp_path):
    src, out = tmp_path / "meshes", tmp_path / "mine"
    shutil.copytree(meshes, src)
    (src / "corrupt.ply").unlink()
    shutil.copytree(dataset[0], out)
    layout = ZeroShapeLayout(out)
    result = _run(src, out, "--views", "3")
    assert result.exit_code != 0 and "views=2" in result.output, result.output
    _torus(0.2).export(src / "torus_1.glb")  # a fatter torus
    cloud = layout.pointcloud(SampleId("object", "torus-1", "00"))
    before = np.load(cloud)
    result = _run(src, out)
    assert result.exit_code == 1 and "torus_1.glb" in result.output and "--redo-changed" in result.output
    assert np.array_equal(np.load(cloud), before)  # nothing touched
    result = _run(src, out, "--redo-changed")
    assert result.exit_code == 0 and "rendered 2 views of 3 meshes" in result.output, result.output
    assert np.ptp(np.load(cloud)[:, 2]) > np.ptp(before[:, 2]) + 0.05  # the new, thicker ring (axis z)
    assert _run(src, out).exit_code == 0  # and it now resumes
    # a mesh taken out of the folder: its object leaves the lists, its files stay, and the run says so
    (src / "box.obj").unlink()
    result = _run(src, out)
    assert result.exit_code == 0 and "no mesh in the folder any more (e.g. box.obj)" in result.output
    assert not any(s.object == "box" for s in layout.samples("train"))
    assert layout.has_view(SampleId("object", "box", "00"))


def test_scan_names_objects_and_refuses_two_files_for_one_object(tmp_path):
    from zsw.synth.meshes import scan_meshes

    (tmp_path / "chairs" / "set.2").mkdir(parents=True)
    for rel in ("a_b.obj", "chairs/set.2/x.PLY", "chairs/y.stl", "skip.fbx", "tex.png", ".hidden.obj"):
        (tmp_path / rel).write_text("")
    sources, passed = scan_meshes(tmp_path, "thing")
    assert [(s.category, s.object, s.rel) for s in sources] == [
        ("chairs", "set-2-x", "chairs/set.2/x.PLY"),
        ("chairs", "y", "chairs/y.stl"),
        ("thing", "a-b", "a_b.obj"),
    ]
    assert passed == ["skip.fbx"]
    (tmp_path / "a-b.glb").write_text("")
    with pytest.raises(InputError, match=r"a-b.glb and a_b.obj would both be object thing_a-b"):
        scan_meshes(tmp_path, "thing")
    (tmp_path / "a-b.glb").unlink()
    # names differing only in case are one file on a Mac or a Windows machine: told apart, never merged
    (tmp_path / "chairs" / "Y.obj").write_text("")
    with pytest.raises(InputError, match=r"chairs/Y.obj and chairs/y.stl would both be object chairs_y"):
        scan_meshes(tmp_path, "thing")
    (tmp_path / "chairs" / "Y.obj").unlink()
    (tmp_path / "Chairs").mkdir()
    (tmp_path / "Chairs" / "z.obj").write_text("")
    with pytest.raises(InputError, match=r"the categories Chairs and chairs differ only in case"):
        scan_meshes(tmp_path, "thing")


def test_meshes_without_a_surface_are_one_line_errors(tmp_path):
    from zsw.synth.mesh_sdf import MeshShape

    trimesh.PointCloud(np.random.default_rng(0).random((50, 3))).export(tmp_path / "cloud.ply")
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)
    flat.export(tmp_path / "line.stl")
    with pytest.raises(InputError, match="cloud.ply has no faces"):
        MeshShape.from_file(tmp_path / "cloud.ply", grid=32)
    with pytest.raises(InputError, match="line.stl is degenerate"):
        MeshShape.from_file(tmp_path / "line.stl", grid=32)


def test_up_z_turns_a_z_up_mesh_and_both_shapes_have_the_renderers_interface():
    from zsw.synth.mesh_sdf import MeshShape, normalize
    from zsw.synth.render import SynthShape
    from zsw.synth.sdf import make_shape

    tall = trimesh.creation.box((0.2, 0.4, 1.0))  # z-up: 1.0 high
    v = normalize(tall.vertices, tall.faces, up="z")
    assert np.allclose(v.max(0) - v.min(0), [0.2, 1.0, 0.4]) and np.allclose(v.max(0) + v.min(0), 0)
    shape = MeshShape(v, tall.faces, grid=32)
    assert isinstance(shape, SynthShape) and isinstance(make_shape("box", np.random.default_rng(0), 32), SynthShape)


def test_help_has_an_example():
    result = runner.invoke(app, ["synthesize", "meshes", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "zsw synthesize meshes" in result.output


def test_a_gltf_is_fingerprinted_with_its_buffers(tmp_path):
    """A ``.gltf`` whose geometry lives in ``.bin`` files beside it: changing a buffer changes the
    fingerprint (so the dataset refuses the changed mesh), as changing the file itself does."""
    from zsw.io import sha256_file
    from zsw.synth.meshes import fingerprint

    for name, data in trimesh.creation.box().export(file_type="gltf").items():
        (tmp_path / name).write_bytes(data)
    gltf = tmp_path / "model.gltf"
    before = fingerprint(gltf)
    assert before != sha256_file(gltf) and fingerprint(gltf) == before
    buffer = sorted(tmp_path.glob("*.bin"))[0]
    buffer.write_bytes(buffer.read_bytes()[:-4] + b"\0\0\0\1")
    assert fingerprint(gltf) != before
    plain = tmp_path / "box.stl"
    trimesh.creation.box().export(plain)
    assert fingerprint(plain) == sha256_file(plain)
