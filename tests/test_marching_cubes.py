"""Vectorised torch marching cubes against scikit-image, on CPU tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage import measure

from zsw.infer import grid
from zsw.infer.marching_cubes import CORNERS, case_table, marching_cubes, marching_cubes_padded


def _frame(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    axis = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    return torch.meshgrid(axis, axis, axis, indexing="ij")


def sphere(n: int, radius: float = 0.6, centre=(0.03, -0.02, 0.01)) -> torch.Tensor:  # inside > 0
    x, y, z = _frame(n)
    return (radius - ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2).sqrt()).float()


def torus(n: int, major: float = 0.55, minor: float = 0.25) -> torch.Tensor:
    x, y, z = _frame(n)
    return (minor - (((x**2 + y**2).sqrt() - major) ** 2 + z**2).sqrt()).float()


def box(n: int) -> torch.Tensor:
    x, y, z = _frame(n)
    return torch.stack([0.61 - x.abs(), 0.43 - y.abs(), 0.27 - (z - 0.05).abs()]).amin(0).float()


def touching_spheres(n: int) -> torch.Tensor:  # two spheres of radius 0.4 touching at the origin
    x, y, z = _frame(n)
    a = 0.4 - ((x - 0.4) ** 2 + y**2 + z**2).sqrt()
    b = 0.4 - ((x + 0.4) ** 2 + y**2 + z**2).sqrt()
    return torch.maximum(a, b).float()


def smooth_noise(n: int, seed: int = 0, knots: int = 9) -> torch.Tensor:
    """Trilinearly upsampled Gaussian noise with an emptied border: a closed, many-sheeted surface."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, knots, knots, knots, generator=g)
    field = torch.nn.functional.interpolate(coarse, size=(n,) * 3, mode="trilinear", align_corners=True)[0, 0]
    return _emptied_border(field)


def _emptied_border(field: torch.Tensor) -> torch.Tensor:
    field = field.clone()
    field[[0, -1]] = field[:, [0, -1]] = field[:, :, [0, -1]] = -1.0
    return field


def _skimage(field: torch.Tensor, level: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    verts, faces, _, _ = measure.marching_cubes(
        field.float().numpy(), level, gradient_direction="ascent", allow_degenerate=False
    )
    return verts.astype(np.float32), faces.astype(np.int64)


def _torch(field: torch.Tensor, level: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    verts, faces = marching_cubes(field, level)
    return verts.numpy(), faces.numpy()


def ambiguous_cells(field: torch.Tensor, level: float = 0.0) -> int:
    """Cells where Lewiner's method looks at the values: an ambiguous face, or case 4 (body diagonal)."""
    inside = (field > level).numpy()
    n = inside.shape[0] - 1
    corner = {c: inside[i : n + i, j : n + j, k : n + k] for c, (i, j, k) in enumerate(CORNERS.tolist())}
    faces = []
    for axis in range(3):
        for side in (0, 1):
            quad = [c for c in range(8) if CORNERS[c][axis] == side]  # c0 c1 c2 c3 with c0-c3, c1-c2 diagonal
            a, b, c, d = (corner[q] for q in quad)
            faces.append((a == d) & (b == c) & (a != b))
    count = np.stack([corner[c] for c in range(8)]).sum(0)
    diagonal = np.zeros_like(count, dtype=bool)
    for c in range(4):
        pair = corner[c] & corner[7 - c]
        diagonal |= ((count == 2) & pair) | ((count == 6) & ~corner[c] & ~corner[7 - c])
    return int((np.any(faces, axis=0) | diagonal).sum())


def assert_same_triangles(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], atol=1e-5) -> None:
    """Same vertices (within atol, one to one) and the same faces with the same winding."""
    (va, fa), (vb, fb) = a, b
    assert va.shape == vb.shape and fa.shape == fb.shape
    dist, match = cKDTree(vb).query(va)
    assert dist.max() <= atol
    assert len(np.unique(match)) == len(va)
    assert _canonical(match[fa]) == _canonical(fb)


def _canonical(faces: np.ndarray) -> set[tuple[int, int, int]]:
    """Faces as rotations starting at their smallest index (the winding is kept)."""
    roll = np.argmin(faces, axis=1)
    rows = np.arange(len(faces))[:, None]
    return set(map(tuple, faces[rows, (roll[:, None] + np.arange(3)) % 3].tolist()))


def vertex_fscore(a: np.ndarray, b: np.ndarray, tau: float = 1e-3) -> float:
    precision = (cKDTree(b).query(a)[0] <= tau).mean()
    recall = (cKDTree(a).query(b)[0] <= tau).mean()
    return 2 * precision * recall / (precision + recall)


def _mesh(verts: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    return trimesh.Trimesh(verts, faces, process=False)


# ----------------------------------------------------------------------------------------------


def test_case_table_is_derived_and_complete():
    table = case_table()
    assert table.triangles.shape[0] == 256 and table.counts[0] == table.counts[255] == 0
    for case in range(1, 255):
        used = set(table.triangles[case, : table.counts[case]].ravel().tolist())
        # exactly the edges whose two corners disagree carry a vertex
        crossed = set()
        for e in range(12):
            origin = CORNERS.tolist().index(_edge_origin(e))
            tip = origin + (4, 2, 1)[e // 4]
            if (case >> origin & 1) != (case >> tip & 1):
                crossed.add(e)
        assert used == crossed, case


def _edge_origin(e: int) -> list[int]:
    offset = [(e >> 1) & 1, e & 1]
    offset.insert(e // 4, 0)
    return offset


@pytest.mark.parametrize("name, field", [("sphere", sphere(33)), ("torus", torus(48)), ("box", box(40))])
def test_same_triangles_as_scikit_image_without_ambiguous_cells(name, field):
    assert ambiguous_cells(field) == 0
    ours = _torch(field)
    assert_same_triangles(ours, _skimage(field))
    mesh = _mesh(*ours)
    assert mesh.is_watertight and mesh.volume > 0


def test_129_cube_sphere_through_the_grid_module():
    probs = torch.sigmoid(40.0 * sphere(129, radius=0.8))
    ours = grid.marching_cubes(probs, backend="torch")
    reference = grid.marching_cubes(probs, backend="skimage")
    assert_same_triangles((ours.vertices, ours.faces), (reference.vertices, reference.faces))
    assert ours.is_watertight and ours.volume > 0


def test_noise_with_ambiguous_cells_agrees_within_a_cell():
    field = smooth_noise(48)
    assert ambiguous_cells(field) > 20
    ours, reference = _torch(field), _skimage(field)
    assert vertex_fscore(ours[0], reference[0]) == 1.0
    assert _mesh(*ours).area == pytest.approx(_mesh(*reference).area, rel=1e-3)
    mesh = _mesh(*ours)
    assert mesh.is_watertight and mesh.volume > 0


def test_touching_spheres_keep_the_slivers_that_scikit_image_merges():
    # samples a hair off the level near the contact put vertices on samples: scikit-image merges
    # them by position and drops the zero-area triangles, the torch path keeps them apart
    field = touching_spheres(41)
    ours, reference = _torch(field), _skimage(field)
    assert len(ours[1]) >= len(reference[1])
    assert vertex_fscore(ours[0], reference[0]) == 1.0
    assert _mesh(*ours).area == pytest.approx(_mesh(*reference).area, rel=1e-6)
    mesh = _mesh(*ours)
    assert mesh.is_watertight and mesh.volume > 0


def test_noise_fields_are_watertight_and_outward():
    fields = [
        smooth_noise(32, seed=1, knots=12),
        _emptied_border(torch.randn(16, 16, 16)),
    ]  # raw noise: mostly ambiguous
    for field in fields:
        mesh = _mesh(*_torch(field))
        assert mesh.is_watertight and mesh.volume > 0


@pytest.mark.parametrize("close", [True, False])
def test_a_surface_cut_by_the_bound_with_and_without_close(close):
    probs = torch.sigmoid(-20.0 * (torch.stack(_frame(25)).norm(dim=0).float() * 1.5 - 2.0))  # radius 2 in a 1.5 cube
    ours = grid.marching_cubes(probs, close=close, backend="torch")
    reference = grid.marching_cubes(probs, close=close, backend="skimage")
    assert_same_triangles((ours.vertices, ours.faces), (reference.vertices, reference.faces))
    assert ours.is_watertight == close
    if close:
        assert ours.volume > 0 and np.abs(ours.vertices).max() <= 1.5


def test_a_field_exactly_at_the_level_drops_degenerate_triangles():
    field = torch.round(smooth_noise(32) * 4) / 4  # many samples exactly at 0
    assert (field == 0).sum() > 100
    verts, faces = _torch(field)
    reference, _ = _skimage(field)
    assert vertex_fscore(verts, reference) == 1.0
    assert (
        (faces[:, 0] != faces[:, 1]).all() and (faces[:, 1] != faces[:, 2]).all() and (faces[:, 0] != faces[:, 2]).all()
    )
    assert np.isin(np.arange(len(verts)), faces).all()  # no unused vertex


@pytest.mark.parametrize("value", [-1.0, 1.0])
def test_empty_and_full_grids_give_empty_meshes(value):
    verts, faces = marching_cubes(torch.full((9, 9, 9), value), 0.0)
    assert verts.shape == (0, 3) and faces.shape == (0, 3)
    assert verts.dtype == torch.float32 and faces.dtype == torch.int64
    opened = grid.marching_cubes(torch.full((9, 9, 9), 0.5 + value / 4), close=False, backend="torch")
    assert len(opened.vertices) == len(opened.faces) == 0
    closed = grid.marching_cubes(torch.full((9, 9, 9), 0.5 + value / 4), backend="torch")
    reference = grid.marching_cubes(torch.full((9, 9, 9), 0.5 + value / 4), backend="skimage")
    assert len(closed.faces) == len(reference.faces)  # empty, or the grid's own cube when full
    assert len(closed.faces) == 0 or closed.is_watertight


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_input_is_computed_in_float32(dtype):
    field = sphere(17).to(dtype)
    verts, faces = marching_cubes(field, 0.0)
    assert verts.dtype == torch.float32 and faces.dtype == torch.int64 and verts.device == field.device
    assert_same_triangles((verts.numpy(), faces.numpy()), _skimage(field.float()))


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="3-D"):
        marching_cubes(torch.zeros(4, 4), 0.0)
    with pytest.raises(ValueError, match="backend"):
        grid.marching_cubes(torch.zeros(4, 4, 4), backend="cuda")


@pytest.mark.gpu  # `pytest -m gpu` (bench/gpu_session.sh) selects it; skipped without CUDA
def test_cuda_grids_use_the_torch_path_and_agree():
    probs = torch.sigmoid(40.0 * smooth_noise(64)).cuda()
    verts, faces = marching_cubes(probs, 0.5)
    assert verts.is_cuda and faces.is_cuda
    ours = grid.marching_cubes(probs)  # auto: torch on the device
    reference = grid.marching_cubes(probs.cpu())  # auto: scikit-image
    assert vertex_fscore(ours.vertices, reference.vertices) == 1.0
    assert ours.is_watertight and ours.area == pytest.approx(reference.area, rel=1e-3)


def test_padded_variant_gives_the_same_mesh_and_counts():
    field = smooth_noise(24, knots=6)
    verts, faces = marching_cubes(field, 0.0)
    pv, pf, nv, nf = marching_cubes_padded(field, 0.0, max_faces=len(faces) + 7, max_verts=len(verts) + 5)
    assert (int(nv), int(nf)) == (len(verts), len(faces))
    torch.testing.assert_close(pv[: len(verts)], verts, atol=0, rtol=0)
    assert torch.equal(pf[: len(faces)], faces)
    assert (pv[len(verts) :] == 0).all() and (pf[len(faces) :] == -1).all()
    empty = marching_cubes_padded(torch.zeros(5, 5, 5), 0.5, max_faces=4, max_verts=4)
    assert int(empty[2]) == int(empty[3]) == 0 and (empty[1] == -1).all()


@pytest.mark.gpu  # `pytest -m gpu` (bench/gpu_session.sh) selects it; skipped without CUDA
def test_the_padded_variant_does_not_wait_for_the_device():
    probs = torch.sigmoid(40.0 * sphere(33)).cuda()
    marching_cubes_padded(probs, 0.5, 10_000, 10_000)  # warm-up: the tables reach the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        verts, faces, n_verts, n_faces = marching_cubes_padded(probs, 0.5, 10_000, 10_000)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ours = marching_cubes(probs, 0.5)
    assert int(n_faces) == len(ours[1]) and torch.equal(faces[: int(n_faces)], ours[1])


def test_the_marching_cubes_bench_row_says_what_one_call_launches():
    """`zsw bench reconstruct`'s marching-cubes rows: scikit-image and torch on the same grid, the
    torch row's note with its agreement and its operator count (kernel launches and GPU time on a
    GPU: whether the host's launches or the device sets its pace)."""
    import re

    from zsw.bench._harness import environment
    from zsw.bench.reconstruct import bench_marching_cubes

    env = environment()
    rows = {r.provider: r for r in bench_marching_cubes(env, resolution=16)}
    assert set(rows) == {"skimage", "torch"}
    note = rows["torch"].note
    assert "F@0.001 vs skimage 1.0000" in note
    count = re.search(r"profiled: (\d+) operators in [\d.]+ ms", note)
    assert count and int(count.group(1)) > 20, note


def test_cell_codes_hold_each_corners_inside_and_exact_bits():
    """``256 * exact + case`` per cell, against the definition, on a grid of values with many
    samples exactly at the level (every corner, the last one's exact bit included: the top bit)."""
    from zsw.infer.marching_cubes import _cell_codes

    torch.manual_seed(0)
    v = torch.randint(0, 3, (4, 5, 3)).float() * 0.5  # 0, 0.5 (the level) or 1
    codes = _cell_codes(v, 0.5).reshape(3, 4, 2)
    assert int(codes.max()) >= 256 * 128  # some cell has its last corner exactly at the level
    for i, j, k in np.ndindex(3, 4, 2):
        case = exact = 0
        for c, (a, b, d) in enumerate(CORNERS.tolist()):
            value = float(v[i + a, j + b, k + d])
            case |= (value > 0.5) << c
            exact |= (value == 0.5) << c
        assert int(codes[i, j, k]) == 256 * exact + case
