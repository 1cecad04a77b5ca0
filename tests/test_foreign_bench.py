"""bench/foreign.py: objects built and drawn outside zsw's synthesiser, scored as `zsw eval` scores."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("category", ["box", "torus", "lshape", "table"])
def test_objects_are_watertight_unit_solids_of_their_kind(category):
    from zsw.bench.foreign import make_object

    mesh = make_object(category, np.random.default_rng(0))
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.extents.max() == pytest.approx(1.0) and np.abs(mesh.bounds.mean(0)).max() < 1e-6
    fill = mesh.volume / np.prod(mesh.extents)  # how much of its bounding box the solid takes
    if category == "box":
        assert fill == pytest.approx(1.0, abs=1e-6)
    elif category == "lshape":
        assert 0.3 < fill < 0.9  # a concave corner: no faces inside the union either (watertight)
    else:  # a ring and a table (a top on four legs) leave most of their box empty
        assert fill < 0.6


def test_views_put_the_ground_truth_where_the_object_is_drawn():
    """The cloud the model is scored against projects, through the view's K, onto the pixels the
    object was drawn on (camera frame x right, y down, z forward, as the model's)."""
    from zsw.bench.foreign import CATEGORIES, SIZE, make_view

    occluded = 0
    for c, category in enumerate(CATEGORIES):
        view = make_view(category, 100 + c)
        assert view["image"].shape == (SIZE, SIZE, 3) and view["image"].dtype == np.uint8
        g, K = view["gt"], view["K"]
        assert g.shape == (10000, 3) and (g[:, 2] > 0).all()
        u = np.round(g[:, 0] / g[:, 2] * K[0, 0] + K[0, 2]).astype(int)
        v = np.round(g[:, 1] / g[:, 2] * K[1, 1] + K[1, 2]).astype(int)
        assert ((u >= 0) & (u < SIZE) & (v >= 0) & (v < SIZE)).all()
        assert view["object_pixels"][v, u].mean() > 0.9, category
        assert 0.05 < view["object_pixels"].mean() < 0.6, category  # framed as photos are, not a speck
        occluded += view["occluded"]
        if view["occluded"]:  # the occluder covers pixels of its own: more is drawn than the object
            assert (view["alpha"] > 0.5).sum() > view["object_pixels"].sum()
    assert 0 < occluded < len(CATEGORIES)


@pytest.mark.parametrize("aspect, shape", [(4 / 3, (224, 299)), (0.75, (299, 224)), (16 / 9, (224, 398))])
def test_photos_of_other_shapes_keep_the_object_framed_in_their_shorter_side(aspect, shape):
    """``--aspect``: the same object, camera and background kind in a landscape or portrait photo,
    K's centre in the middle of it, the object where its points project; the square view is the
    one the bench always drew (its random draws unchanged)."""
    from zsw.bench.foreign import make_view, parse_aspect

    square, view = make_view("box", 7), make_view("box", 7, aspect=aspect)
    H, W = shape
    assert view["image"].shape == (H, W, 3) and view["object_pixels"].shape == (H, W)
    assert view["K"][0, 2] == pytest.approx(W / 2 - 0.5) and view["K"][1, 2] == pytest.approx(H / 2 - 0.5)
    assert view["K"][0, 0] == pytest.approx(square["K"][0, 0]) and view["background"] == square["background"]
    g, K = view["gt"], view["K"]
    u = np.round(g[:, 0] / g[:, 2] * K[0, 0] + K[0, 2]).astype(int)
    v = np.round(g[:, 1] / g[:, 2] * K[1, 1] + K[1, 2]).astype(int)
    assert view["object_pixels"][v, u].mean() > 0.9
    assert view["object_pixels"].sum() == pytest.approx(square["object_pixels"].sum(), rel=0.02)  # same size
    assert parse_aspect("4:3") == pytest.approx(4 / 3) and parse_aspect("0.5") == 0.5
    for bad in ("4:0", "x", "10:1", "-1"):
        with pytest.raises(SystemExit, match="--aspect"):
            parse_aspect(bad)


def test_fill_sets_how_much_of_the_photo_the_object_spans():
    """``--fill``: loosely framed views show the object small; close-ups let the frame cut it, its
    points projecting past the photo's edges."""
    from zsw.bench.foreign import FILL, SIZE, make_view

    usual, loose, close = (make_view("cylinder", 3, fill=f) for f in (FILL, (0.3, 0.35), (1.7, 1.8)))
    assert loose["object_pixels"].sum() < 0.3 * usual["object_pixels"].sum()
    g, K = close["gt"], close["K"]
    u = g[:, 0] / g[:, 2] * K[0, 0] + K[0, 2]
    v = g[:, 1] / g[:, 2] * K[1, 1] + K[1, 2]
    assert (u < 0).any() or (u >= SIZE).any() or (v < 0).any() or (v >= SIZE).any()  # cut by the frame
    edges = np.concatenate([close["object_pixels"][0], close["object_pixels"][-1],
                            close["object_pixels"][:, 0], close["object_pixels"][:, -1]])  # fmt: skip
    assert edges.any()


@pytest.mark.parametrize("bad", ["0.9", "0.8,0.7", "0,1", "a,b", "1,4"])
def test_bad_fill_is_one_line(bad, monkeypatch):
    from zsw.bench import foreign

    monkeypatch.setattr(sys, "argv", ["foreign", "--out", "x", f"--fill={bad}"])
    with pytest.raises(SystemExit) as e:
        foreign.main()
    assert "--fill" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("elevation", [0.0, 10.0, 40.0])
def test_camera_elevation_tilts_the_object_towards_the_camera(elevation):
    from zsw.bench.foreign import _camera_rotation

    e = math.radians(elevation)
    R = _camera_rotation(1.0, e)
    up = R @ np.array([0.0, 1.0, 0.0])  # the object's up axis in the camera's axes (y down, z forward)
    np.testing.assert_allclose(up, [0.0, -math.cos(e), -math.sin(e)], atol=1e-12)


@pytest.mark.parametrize("bad", ["40", "40,10", "-90,10", "a,b"])
def test_bad_elevation_range_is_one_line(bad, monkeypatch, capsys):
    from zsw.bench import foreign

    monkeypatch.setattr(sys, "argv", ["foreign", "--out", "x", f"--elevation={bad}"])  # = for a leading minus
    with pytest.raises(SystemExit) as e:
        foreign.main()
    assert "--elevation" in str(e.value) and "\n" not in str(e.value)


def test_foreign_bench_end_to_end(tmp_path, monkeypatch):
    from zsw.bench import foreign

    out = tmp_path / "res" / "tiny"
    argv = ["foreign", "--out", str(out), "--weights", "random:tiny", "--per-category", "1", "--resolution", "8"]
    monkeypatch.setattr(sys, "argv", argv)
    foreign.main()
    record = json.loads(out.with_suffix(".json").read_text())
    rows = record["rows"]
    assert record["tta"] == "flip-pixel"  # --tta auto, as it resolved on the CPU
    assert [r["category"] for r in rows] == list(foreign.CATEGORIES)
    for r in rows:
        assert all(0 < r[k] < 1 for k in ("model", "sphere", "ellipsoid")), r
    table = out.with_suffix(".md").read_text()
    assert "| **all** | 8 |" in table and "| torus | 1 |" in table
