from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from zsw.errors import InputError
from zsw.eval.align import brute_force_align, icp, rotation_grid
from zsw.eval.metrics import THRESHOLDS, chamfer_fscore, normalize_pc, sample_surface


def _sphere(n, radius, seed):
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return radius * p / np.linalg.norm(p, axis=1, keepdims=True)


def test_identical_clouds():
    p = _sphere(2000, 1.0, 0)
    m = chamfer_fscore(p, p)
    assert m["acc"] == m["comp"] == m["cd"] == 0.0
    assert all(m[f"fscore@{t}"] == 1.0 for t in THRESHOLDS)
    assert set(m) == {
        "acc",
        "comp",
        "cd",
        "fscore@0.005",
        "fscore@0.01",
        "fscore@0.02",
        "fscore@0.05",
        "fscore@0.1",
        "fscore@0.2",
    }


def test_concentric_spheres_hand_computed():
    # every point of the inner sphere is at least 0.1 from the outer one, and about that close
    inner, outer = _sphere(5000, 1.0, 1), _sphere(5000, 1.1, 2)
    m = chamfer_fscore(torch.from_numpy(inner), torch.from_numpy(outer))
    assert m["acc"] == pytest.approx(0.1, abs=0.01) and m["comp"] == pytest.approx(0.1, abs=0.01)
    assert m["cd"] == pytest.approx((m["acc"] + m["comp"]) / 2)
    assert m["fscore@0.05"] == 0.0 and m["fscore@0.2"] == 1.0


def test_one_sided_precision_recall():
    gt = np.array([[0, 0, 0], [1, 0, 0]], np.float32)
    pred = np.array([[0, 0, 0.001]], np.float32)  # precise but covers half of the ground truth
    m = chamfer_fscore(pred, gt, thresholds=(0.01,))
    assert m["acc"] == pytest.approx(0.001, rel=1e-3)
    assert m["comp"] == pytest.approx((0.001 + np.sqrt(1 + 1e-6)) / 2, rel=1e-4)
    assert m["fscore@0.01"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    empty = chamfer_fscore(np.zeros((0, 3)), gt)
    assert empty["cd"] == float("inf") and empty["fscore@0.2"] == 0.0


def test_normalize_and_sample():
    p = torch.tensor([[0.0, 0, 0], [2, 0, 5], [0, 4, 0]])
    n = normalize_pc(p)
    assert torch.allclose(n.mean(0), torch.zeros(3), atol=1e-6)
    assert (n.amax(0) - n.amin(0))[:2].max() == pytest.approx(1.0)
    pts = sample_surface(trimesh.creation.icosphere(subdivisions=3), 1000)
    assert pts.shape == (1000, 3) and np.allclose(np.linalg.norm(pts, axis=1), 1, atol=0.02)
    assert np.all(sample_surface(trimesh.Trimesh(), 10) == 0)


@pytest.mark.parametrize("method", ["kernels", "kdtree"])
def test_non_finite_points_are_one_line_errors_naming_the_cloud(method):
    """Both searches give the same answer: not cd NaN (kernels) or scipy's 'x' must be finite (k-d tree)."""
    gt = _sphere(50, 1.0, 3)
    pred = gt.copy()
    pred[3, 0], pred[7, 2] = np.nan, np.inf
    with pytest.raises(InputError, match=r"^chamfer_fscore: the prediction has 2 non-finite .* of 50$"):
        chamfer_fscore(pred, gt, method=method)
    with pytest.raises(InputError, match=r"^chamfer_fscore: the ground truth has 2 non-finite"):
        chamfer_fscore(torch.from_numpy(gt), torch.from_numpy(pred), method=method)
    with pytest.raises(InputError, match="prediction has 2 .* and the ground truth has 2"):
        chamfer_fscore(pred, pred, method=method)
    with pytest.raises(InputError, match="prediction has 2"):  # an empty other side is no excuse
        chamfer_fscore(pred, np.zeros((0, 3)), method=method)


def test_a_non_finite_predicted_mesh_is_skipped_by_training_validation(tmp_path):
    """Training validation skips a view whose scoring raises one of READ_ERRORS (with a warning):
    a NaN predicted mesh is such a view, with a message naming the prediction."""
    from types import SimpleNamespace

    from zsw.data.dataset import READ_ERRORS
    from zsw.train.validate import score_view

    np.save(tmp_path / "cloud.npy", _sphere(300, 1.0, 4).astype(np.float32))
    layout = SimpleNamespace(pointcloud=lambda sid: tmp_path / "cloud.npy")
    dataset = SimpleNamespace(sample_id=lambda index: (layout, "view"))
    sphere = trimesh.creation.icosphere(subdivisions=2)
    vertices = sphere.vertices.copy()
    vertices[0] = np.nan
    mesh = trimesh.Trimesh(vertices, sphere.faces, process=False)
    with pytest.raises(READ_ERRORS) as caught:
        score_view(mesh, dataset, 0, torch.eye(3, 4), points=500)
    assert isinstance(caught.value, InputError) and "the prediction has 500 non-finite" in str(caught.value)


def test_kdtree_keeps_float64_inputs_in_float64():
    """At 1e4 from the origin float32 spacing is ~1e-3: a 3e-4 distance must not round to 0."""
    b = np.full((1, 3), 1e4)
    m = chamfer_fscore(b, b + [[3e-4, 0, 0]], thresholds=(1e-4, 1e-3), method="kdtree")
    assert m["cd"] == pytest.approx(3e-4, rel=1e-6)
    assert m["fscore@0.0001"] == 0.0 and m["fscore@0.001"] == 1.0
    # and the distances stay float64 too: 0.1 - 1e-9 would round to float32's 0.1000000015
    m = chamfer_fscore(np.zeros((1, 3)), [[0.1 - 1e-9, 0, 0]], thresholds=(0.1,), method="kdtree")
    assert m["acc"] == pytest.approx(0.1 - 1e-9, rel=1e-12, abs=0) and m["fscore@0.1"] == 1.0


def test_thresholds_are_plain_numbers_and_must_be_finite_and_positive():
    p = _sphere(100, 1.0, 5)
    for given in (torch.tensor([0.05, 0.2]), np.array([0.05, 0.2], np.float32), [torch.tensor(0.05), np.float64(0.2)]):
        m = chamfer_fscore(p, p, thresholds=given)
        assert list(m)[3:] == ["fscore@0.05", "fscore@0.2"], given
        assert all(type(k) is str for k in m)
    assert list(chamfer_fscore(p, p, thresholds=(1,)))[3:] == ["fscore@1"]  # a Python number as it prints
    for bad in (-0.01, 0.0, float("nan"), float("inf"), torch.tensor(-1.0)):
        with pytest.raises(InputError, match="^chamfer_fscore: thresholds must be finite positive numbers"):
            chamfer_fscore(p, p, thresholds=(0.01, bad))
        with pytest.raises(InputError):  # the empty-cloud answer has F-score keys too
            chamfer_fscore(np.zeros((0, 3)), p, thresholds=(bad,))


def test_a_cloud_without_xy_extent_is_only_centred():
    line = torch.tensor([[1.0, 2, 0], [1, 2, 1], [1, 2, 2]])  # along z: no x or y extent to divide by
    assert torch.equal(normalize_pc(line), torch.tensor([[0.0, 0, -1], [0, 0, 0], [0, 0, 1]]))
    assert torch.equal(normalize_pc(torch.zeros(2, 5, 3)), torch.zeros(2, 5, 3))  # an empty mesh's zeros


@pytest.mark.parametrize("method", ["kernels", "kdtree"])
def test_alignment_refuses_empty_and_non_finite_clouds_in_one_line(method):
    cloud = normalize_pc(torch.from_numpy(_sphere(40, 1.0, 6)).float())
    nan = cloud.clone()
    nan[5, 1] = float("nan")
    rotations = rotation_grid(4, 2, 2)
    cases = [
        ((nan, cloud, rotations), "brute_force_align: the prediction has 1 non-finite"),  # kernels gave index 0
        ((cloud, nan, rotations), "brute_force_align: the ground truth has 1 non-finite"),
        ((torch.zeros(0, 3), cloud, rotations), r"brute_force_align: the prediction must be a non-empty \[N, 3\]"),
        ((cloud, torch.zeros(0, 3), rotations), r"brute_force_align: the ground truth must be a non-empty"),
        ((cloud, cloud, torch.zeros(0, 3, 3)), r"brute_force_align: rotations must be \[R >= 1, 3, 3\]"),
    ]
    for args, message in cases:
        with pytest.raises(InputError, match="^" + message):
            brute_force_align(*args, method=method)
    for args, message in [
        ((cloud, torch.zeros(0, 3)), "icp: the ground truth must be a non-empty"),
        ((torch.zeros(0, 3), cloud), "icp: the prediction must be a non-empty"),
        ((nan, cloud), "icp: the prediction has 1 non-finite"),
        ((cloud, nan), "icp: the ground truth has 1 non-finite"),
    ]:
        with pytest.raises(InputError, match="^" + message):
            icp(*args, iterations=2, method=method)


@pytest.mark.parametrize("method", ["kernels", "kdtree"])
def test_brute_force_search_scores_a_rotation_without_xy_extent_centred(method):
    """A rotation that stands a line on z leaves it without x/y extent: it is scored centred and
    unscaled, as normalize_pc gives it (not divided by 1e-12), so it can win."""
    line = torch.stack([torch.zeros(9), torch.zeros(9), torch.linspace(0.0, 1.0, 9)], dim=1)
    gt = normalize_pc(torch.stack([torch.zeros(5), torch.zeros(5), torch.linspace(-0.5, 0.5, 5)], dim=1))
    lay_down = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # z -> y
    aligned, _, index = brute_force_align(line, gt, torch.stack([lay_down, torch.eye(3)]), method=method)
    assert index == 1 and aligned.abs().max() == 0.5
