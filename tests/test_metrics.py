from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

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
