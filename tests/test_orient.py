"""The mesh's output frames (zsw.infer.orient, ``--frame``): the rigid motions, the ``upright``
frame that stands the object on its predicted up axis, and what the files and result.json say."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from zsw.config import get_model_config, replace
from zsw.errors import ConfigError
from zsw.infer.orient import CAMERA_UP, frame_pose, mean_up, upright_rotation

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 24


def _looking_down(elevation_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """An upright object's up axis in the frame of a camera that looks down on it by
    ``elevation_deg`` and is rolled by ``roll_deg`` about its optical axis."""
    e, r = math.radians(elevation_deg), math.radians(roll_deg)
    up = np.array([0.0, -math.cos(e), -math.sin(e)])  # the top turns towards a camera above
    roll = np.array([[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0], [0.0, 0.0, 1.0]])
    return roll @ up


@pytest.mark.parametrize("elevation,roll", [(0, 0), (35, 0), (70, 0), (20, 25), (-15, -10), (180, 0)])
def test_the_upright_rotation_turns_the_object_up_onto_y_and_keeps_the_view_heading(elevation, roll):
    up = _looking_down(elevation, roll)
    R = upright_rotation(up * 3.0)  # any length
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R @ up, [0.0, 1.0, 0.0], atol=1e-12)
    if roll == 0 and elevation != 180:
        # no roll: a turn about the camera's x axis by the elevation, from glTF's axes; the camera's
        # forward direction (glTF -z) stays in the vertical plane through the object, tilted down
        np.testing.assert_allclose(R @ [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], atol=1e-12)
        forward = R @ np.array([0.0, 0.0, 1.0])  # camera +z: into the scene
        assert math.degrees(math.asin(-forward[1])) == pytest.approx(elevation, abs=1e-9)
    # the camera's own up is the gltf frame's rotation
    np.testing.assert_allclose(upright_rotation(CAMERA_UP), frame_pose("gltf").rotation, atol=1e-12)
    with pytest.raises(ValueError, match="direction"):
        upright_rotation(np.zeros(3))


def test_frame_poses_invert_and_upright_stands_the_object_on_the_ground():
    rng = np.random.default_rng(0)
    camera = rng.normal(size=(500, 3)) * [0.3, 0.5, 0.2] + [0.1, -0.2, 3.0]
    up = _looking_down(40)
    for frame in ("camera", "gltf", "upright"):
        pose = frame_pose(frame, camera, up)
        out = pose.apply(camera)
        np.testing.assert_allclose(pose.invert(out), camera, atol=1e-12)
        m = pose.matrix()
        np.testing.assert_allclose((np.c_[camera, np.ones(len(camera))] @ m.T)[:, :3], out, atol=1e-12)
    up_pose = frame_pose("upright", camera, up)
    out = up_pose.apply(camera)
    lo, hi = out.min(axis=0), out.max(axis=0)
    assert lo[1] == pytest.approx(0.0, abs=1e-12)  # standing on y = 0
    assert (lo[0] + hi[0]) / 2 == pytest.approx(0.0, abs=1e-12) and (lo[2] + hi[2]) / 2 == pytest.approx(0.0, abs=1e-12)
    # height along the object's up: the spread of the camera-frame points along `up`
    assert hi[1] == pytest.approx(np.ptp(camera @ up), rel=1e-9)
    # no vertices (an empty mesh): no shift; an unknown frame: one line naming the choices
    np.testing.assert_allclose(frame_pose("upright", np.zeros((0, 3)), up).translation, 0.0)
    with pytest.raises(ConfigError, match="gltf, upright, camera"):
        frame_pose("opengl")


def test_mean_up_reflects_the_mirror_images_estimate_back():
    up = torch.tensor([[0.3, -0.8, -0.5]])
    np.testing.assert_allclose(mean_up(up, up * torch.tensor([-1.0, 1.0, 1.0]))[0], up[0] / up[0].norm(), atol=1e-6)
    assert mean_up(None) is None


def _axial_model(up=None):
    """A tiny pixel-aligned model with mirror and axial queries; ``up`` (camera frame) pins the
    decoder's predicted up axis by its head's bias."""
    from zsw.model import build_model

    tiny = get_model_config("tiny")
    decoder = replace(tiny.decoder, pixel_aligned=True, mirror_queries=True, axial_queries=True)
    torch.manual_seed(0)
    model = build_model(replace(tiny, name="tiny-axial", decoder=decoder)).eval()
    if up is not None:
        head = model.decoder.center_head[-1]
        with torch.no_grad():
            head.weight.zero_()
            head.bias[3:] = torch.as_tensor(up, dtype=head.bias.dtype) + torch.tensor([0.0, 1.0, 0.0])
    return model


def test_upright_reconstruction_stands_on_the_predicted_up_and_its_files_follow(repo_root, tmp_path):
    from zsw.infer.reconstruct import reconstruct

    up = _looking_down(40)
    model = _axial_model(up)
    kw = dict(weights=model, resolution=RES, reframe="never", background="never", tta="none")
    image = repo_root / "examples" / "armchair.png"
    gltf = reconstruct(image, frame="gltf", **kw)
    upright = reconstruct(image, frame="upright", **kw)
    assert len(upright.mesh.faces) > 0
    np.testing.assert_allclose(upright.up, up, atol=1e-5)  # the decoder's estimate, camera frame
    # the same surface in another frame: a rigid motion of the camera-frame vertices
    np.testing.assert_allclose(upright.camera_vertices(), gltf.camera_vertices(), atol=1e-5)
    np.testing.assert_allclose(upright.pose.rotation @ up, [0.0, 1.0, 0.0], atol=1e-5)
    v = np.asarray(upright.mesh.vertices)
    assert v[:, 1].min() == pytest.approx(0.0, abs=1e-9)
    # the gltf mesh leans back by the camera's elevation; the upright one does not: its height is
    # the extent along the object's up, not along the camera's
    cam = gltf.camera_vertices()
    assert np.ptp(v[:, 1]) == pytest.approx(np.ptp(cam @ up), rel=1e-6)
    assert not np.isclose(np.ptp(v[:, 1]), np.ptp(np.asarray(gltf.mesh.vertices)[:, 1]), rtol=1e-3)
    # the visible cloud moves with the mesh
    np.testing.assert_allclose(upright.visible_cloud().vertices, upright.pose.apply(upright.visible_points), atol=1e-9)

    out = tmp_path / "upright"
    upright.save(out, formats=("glb", "stl", "usdz"), preview=False)
    info = json.loads((out / "result.json").read_text())
    assert info["mesh"]["frame"] == "upright"
    np.testing.assert_allclose(info["mesh"]["up"], up, atol=1e-5)
    np.testing.assert_allclose(np.array(info["mesh"]["camera_to_mesh"]), upright.pose.matrix(), atol=1e-12)
    glb = trimesh.load(out / "mesh.glb", force="mesh")
    np.testing.assert_allclose(np.sort(glb.vertices[:, 1]), np.sort(v[:, 1]), atol=1e-5)
    # the STL's z is the object's up too: its height over its width is the upright mesh's
    stl = trimesh.load(out / "mesh.stl")
    ext_stl, ext_up = stl.extents, np.ptp(v, axis=0)
    assert ext_stl[2] / ext_stl.max() == pytest.approx(ext_up[1] / ext_up.max(), rel=1e-4)
    assert stl.vertices[:, 2].min() == pytest.approx(0.0, abs=1e-6)
    # in the gltf frame the STL keeps the camera's up, as before
    gltf.save(tmp_path / "gltf", formats=("stl",), preview=False)
    stl_g = trimesh.load(tmp_path / "gltf" / "mesh.stl")
    g = np.ptp(np.asarray(gltf.mesh.vertices), axis=0)
    assert stl_g.extents[2] / stl_g.extents.max() == pytest.approx(g[1] / g.max(), rel=1e-4)


def test_a_model_without_an_up_head_stands_the_mesh_on_the_cameras_up(repo_root, tiny_model):
    from zsw.infer.reconstruct import reconstruct

    kw = dict(weights=tiny_model, resolution=RES, reframe="never", background="never", tta="none")
    image = repo_root / "examples" / "bucket.png"
    gltf = reconstruct(image, frame="gltf", **kw)
    upright = reconstruct(image, frame="upright", **kw)
    assert upright.up is None and upright.info["mesh"]["up"] is None
    shift = np.asarray(upright.mesh.vertices) - np.asarray(gltf.mesh.vertices)
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-6)  # a shift, no turn
    assert np.asarray(upright.mesh.vertices)[:, 1].min() == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(np.array(gltf.info["mesh"]["camera_to_mesh"]), np.diag([1.0, -1.0, -1.0, 1.0]))


def test_the_cli_writes_an_upright_mesh_and_a_frame_change_is_redone(repo_root, tmp_path, tiny_ckpt):
    from typer.testing import CliRunner

    from zsw.cli.main import app

    args = ["reconstruct", str(repo_root / "examples" / "bucket.png"), "-o", str(tmp_path),
            "--weights", str(tiny_ckpt), "--resolution", str(RES), "--no-preview"]  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*args, "--frame", "upright"])
    assert again.exit_code == 0, again.output
    info = json.loads((tmp_path / "bucket" / "result.json").read_text())
    assert info["mesh"]["frame"] == "upright"
    mesh = trimesh.load(tmp_path / "bucket" / "mesh.glb", force="mesh")
    assert mesh.vertices[:, 1].min() == pytest.approx(0.0, abs=1e-5)
    bad = runner.invoke(app, [*args, "--frame", "z-up"])
    assert bad.exit_code != 0 and "upright" in bad.output


def test_fit_up_rows_recovers_an_affine_map_and_set_up_rows_makes_the_decoder_predict_it():
    from zsw.train.up_head import fit_up_rows, set_up_rows

    rng = np.random.default_rng(1)
    H = rng.normal(size=(400, 16)) * rng.uniform(0.1, 3.0, 16) + rng.normal(size=16)
    W_true, b_true = rng.normal(size=(3, 16)), np.array([0.1, -0.9, -0.4])
    W, b = fit_up_rows(H, H @ W_true.T + b_true, ridge=1e-6)
    np.testing.assert_allclose(W, W_true, atol=1e-5)
    np.testing.assert_allclose(b, b_true, atol=1e-5)

    model = _axial_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    width = model.decoder.center_head[-1].in_features
    W, b = rng.normal(size=(3, width)), np.array([0.2, -1.0, -0.3])
    set_up_rows(model, W, b)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["decoder.center_head.3.weight", "decoder.center_head.3.bias"]
    last = model.decoder.center_head[-1]
    assert torch.equal(last.weight[:3], before["decoder.center_head.3.weight"][:3])  # the centre offset stays
    tokens = torch.randn(2, 197, model.config.encoder.token_dim)
    with torch.no_grad():
        hidden = model.decoder.center_head[:3](tokens[:, 0]).double().numpy()
        up = model.decoder.encode(tokens).up.double().numpy()
    expected = hidden @ W.T + b
    np.testing.assert_allclose(up, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)


def test_refit_up_head_brings_the_up_axis_closer_on_the_views_it_fits(repo_root, tmp_path):
    """Views of one photo turned about the camera's axis (rolled): the true up rolls with it; a
    random head does not know, the refitted one does on those views (fewer views than activations:
    the fit is loose, so only 'closer' is asserted), and the CLI's save keeps the rest."""
    from zsw.infer.image import load_image
    from zsw.train.up_head import refit_up_head

    photo = load_image(repo_root / "examples" / "bucket.png", 224).image
    views = []
    for k in range(12):
        turned = np.rot90(photo, k % 4).copy() if k < 8 else np.fliplr(np.rot90(photo, k % 4)).copy()
        roll = (k % 4) * 90.0 * (1 if k < 8 else -1)
        views.append((f"v{k}", "bucket", turned, _looking_down(20 + 3 * k, roll)))
    model = _axial_model()
    stats = refit_up_head(model, views, ridge=1.0, reframe="never", background="never", tta="none")
    assert stats["views"] == 12 and stats["after_deg"] < stats["before_deg"] - 10, stats

    # what `python -m zsw.train.up_head` saves and reads back: the refitted rows and the extras
    from zsw import checkpoint

    checkpoint.save(model, tmp_path / "refit.safetensors", extra={"up_head": stats})
    loaded, extra = checkpoint.load_with_extra(tmp_path / "refit.safetensors")
    assert extra["up_head"] == stats and extra["zsw_version"]
    assert torch.equal(loaded.decoder.center_head[-1].bias, model.decoder.center_head[-1].bias)


def test_the_foreign_renders_say_their_true_up_axis():
    """zsw.bench.foreign says each render's up axis, which zsw.bench.upright scores against: for a
    cylinder (stood up along y in its object frame) it is the normal of its caps, the mesh's largest
    flat faces, and it lies as far above the horizon as the camera was drawn."""
    from zsw.bench import foreign
    from zsw.bench.upright import angle_deg, elevation_deg

    seed = next(s for c, _, s in foreign.view_names(1) if c == "cylinder")
    view = foreign.make_view("cylinder", seed, (10.0, 40.0))
    cap = view["mesh"].facets_normal[np.argmax(view["mesh"].facets_area)]
    assert min(angle_deg(cap, view["up"]), angle_deg(-cap, view["up"])) < 0.5
    assert 10.0 <= elevation_deg(view["up"]) <= 40.0
