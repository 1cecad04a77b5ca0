"""bench/carving.py: how much of a mesh lies over the photo's background."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

S = 32
K = np.array([[40.0, 0.0, 15.0], [0.0, 40.0, 15.0], [0.0, 0.0, 1.0]])


def _at(u: float, v: float, depth: float = 2.0) -> list[float]:  # the camera point seen at pixel (u, v)
    return [(u - K[0, 2]) * depth / K[0, 0], (v - K[1, 2]) * depth / K[1, 1], depth]


def _rec(vertices: list[list[float]]):
    import trimesh

    visible = np.zeros((S, S), bool)
    visible[10:20, 10:20] = True
    mesh = trimesh.Trimesh(np.asarray(vertices), np.zeros((0, 3), int), process=False)
    return SimpleNamespace(mesh=mesh, intrinsics=K, visible_mask=visible, occluder_mask=np.zeros((S, S), bool))


def test_outside_shares_count_vertices_by_their_distance_from_the_masks():
    from zsw.bench.carving import outside_shares

    rec = _rec([_at(15, 15), _at(21, 15), _at(24, 15), _at(28, 15), _at(40, 15), _at(28, 15, depth=-2.0)])
    # 0, 2, 5 and 9 px outside (to the nearest mask pixel); off the image and behind the camera do not count
    assert outside_shares(rec, (2, 5)) == pytest.approx([2 / 6, 1 / 6])
    assert outside_shares(_rec([]), (2, 5)) == [0.0, 0.0]


def test_coverage_marks_the_pixels_the_vertices_fall_on():
    from zsw.bench.carving import coverage

    covered = coverage(_rec([_at(u, v) for u in range(5, 9) for v in range(5, 9)] + [_at(40, 15)]))
    assert covered[5:9, 5:9].all() and covered.sum() == 16
