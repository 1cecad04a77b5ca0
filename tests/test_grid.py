"""Grid extraction: exact vertex coordinates, dense/fast agreement, batching, chunking, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zsw.errors import ConfigError
from zsw.eval.fields import TEST_SHAPES, occupancy_field, sdf_capped_cylinder, sdf_sphere
from zsw.infer.grid import extract_mesh, extract_meshes, grid_meshes, marching_cubes, occupancy_grid
from zsw.infer.settings import GridSettings


def _one(field, resolution: int, mode: str = "dense"):
    """One mesh and its grid statistics (``grid_meshes`` returns them beside the meshes)."""
    (mesh,), (stats,) = grid_meshes(lambda p: field(p[0])[None], 1, GridSettings(resolution, mode))
    return mesh, stats.as_dict()


def test_sphere_is_watertight_outward_and_at_the_right_radius():
    radius = 0.8
    mesh, stats = _one(lambda p: -50.0 * sdf_sphere(p, radius=radius), 48)
    assert mesh.is_watertight and mesh.volume > 0  # faces point outwards
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.02)
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(r - radius).max() < 0.2 * 3.0 / 48  # within a fifth of a cell
    assert stats["evaluated_points"] == stats["grid_points"] == 49**3 and stats["mode"] == "dense"


def test_vertices_map_back_to_grid_coordinates_exactly():
    # A slab whose faces lie half-way between grid samples: the sigmoid is symmetric there, so
    # marching cubes puts every vertex exactly on the faces. ZeroShape's /(N+1) rescaling would
    # shrink them by N/(N+1).
    n, bound = 32, 1.5
    h = 2 * bound / n
    lo, hi = -bound + 9.5 * h, -bound + 25.5 * h  # x in (lo, hi) is inside

    def slab(p):  # intersection of the slab lo < x < hi and the box |y|, |z| < 1
        return 40.0 * torch.minimum(torch.minimum(p[:, 0] - lo, hi - p[:, 0]), 1.0 - p[:, 1:].abs().amax(-1))

    mesh = extract_mesh(slab, n, bound=bound)
    xs = mesh.vertices[:, 0]
    on_faces = np.isclose(xs, lo, atol=1e-5) | np.isclose(xs, hi, atol=1e-5)
    assert on_faces.sum() > 100
    assert xs.min() == pytest.approx(lo, abs=1e-5) and xs.max() == pytest.approx(hi, abs=1e-5)


def test_grid_samples_are_linspace():
    seen = []

    def record(p):
        seen.append(p.clone())
        return -sdf_sphere(p, radius=0.5)

    occupancy_grid(lambda p: record(p[0])[None], 1, 8, bound=1.5)
    pts = torch.cat(seen)
    axis = torch.linspace(-1.5, 1.5, 9)
    expected = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    torch.testing.assert_close(pts, expected, atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TEST_SHAPES))
def test_fast_matches_dense_with_20x_fewer_points(name):
    field = occupancy_field(name)
    dense, dense_stats = _one(field, 128, mode="dense")
    fast, fast_stats = _one(field, 128, mode="fast")
    ratio = dense_stats["evaluated_points"] / fast_stats["evaluated_points"]
    assert ratio >= 20.0, f"{name}: only {ratio:.1f}x fewer points"
    # fast decoded the whole surface at full resolution: the meshes are the same mesh (so their
    # F-score@0.01 is 1; `zsw bench reconstruct --shapes` measures it with mesh_agreement)
    assert len(fast.vertices) == len(dense.vertices)
    np.testing.assert_allclose(np.sort(fast.vertices, axis=0), np.sort(dense.vertices, axis=0), atol=1e-6)


def test_fast_grows_along_the_surface_into_a_thin_part_the_band_missed():
    # without margin or dilation the coarse levels lose the lamp's pole (thinner than a 16^3 cell);
    # the growth after the last level follows the shade's and base's surface into it and decodes
    # it: the mesh is the dense one, vertex for vertex
    field = occupancy_field("lamp")
    dense = extract_mesh(field, 64)
    bare = extract_mesh(field, 64, mode="fast", coarse_resolution=16, margin=0.0, dilate=0)
    assert len(bare.vertices) == len(dense.vertices)
    np.testing.assert_allclose(np.sort(bare.vertices, axis=0), np.sort(dense.vertices, axis=0), atol=1e-6)


def test_fast_without_margin_misses_a_separate_thin_part():
    # the growth only follows the surface it found: a separate rod thinner than a coarse cell is
    # found by the margin alone
    def field(p):  # a ball and, apart from it, a rod 0.06 wide (a 16^3 cell is 0.19); soft logits, as a model's
        ball, rod = sdf_sphere(p, (-0.6, 0.0, 0.0), 0.5), sdf_capped_cylinder(p, (0.6, 0.0, 0.0), 0.03, 0.8)
        return -20.0 * torch.minimum(ball, rod)

    dense = extract_mesh(field, 64)
    bare = extract_mesh(field, 64, mode="fast", coarse_resolution=16, margin=0.0, dilate=0)
    kept = extract_mesh(field, 64, mode="fast", coarse_resolution=16)
    assert dense.body_count == 2 and bare.body_count == 1  # the rod is lost
    ball = dense.vertices[dense.vertices[:, 0] < 0]  # the ball is found exactly
    np.testing.assert_allclose(np.sort(bare.vertices, axis=0), np.sort(ball, axis=0), atol=1e-6)
    assert len(kept.vertices) == len(dense.vertices)
    np.testing.assert_allclose(np.sort(kept.vertices, axis=0), np.sort(dense.vertices, axis=0), atol=1e-6)


def test_fast_respects_a_non_default_threshold():
    field = occupancy_field("torus", sharpness=10.0)
    dense = extract_mesh(field, 64, threshold=0.3)
    fast = extract_mesh(field, 64, threshold=0.3, mode="fast")
    assert len(dense.vertices) == len(fast.vertices) > 0
    assert dense.volume > extract_mesh(field, 64, threshold=0.7).volume  # lower level = fatter


def test_batch_and_chunks_give_the_same_meshes():
    names = ["torus", "chair"]
    fields = [occupancy_field(n) for n in names]
    calls = []

    def decode(points):  # [B, N, 3] -> [B, N]
        calls.append(points.shape[0] * points.shape[1])
        return torch.stack([f(points[b]) for b, f in enumerate(fields)])

    batched, batched_stats = grid_meshes(decode, 2, GridSettings(64, "fast", chunk_points=5000))
    assert max(calls) <= 5000
    assert [len(m.faces) for m in extract_meshes(decode, 2, 64, mode="fast")] == [len(m.faces) for m in batched]
    for name, mesh, stats in zip(names, batched, batched_stats):
        single, single_stats = _one(occupancy_field(name), 64, mode="fast")
        np.testing.assert_array_equal(mesh.faces, single.faces)
        np.testing.assert_allclose(mesh.vertices, single.vertices, atol=1e-6)
        assert stats.evaluated_points == single_stats["evaluated_points"]


def _full_volume_marching_cubes(probs, close, bound=1.5):
    """scikit-image on the whole grid, the outer layer emptied for ``close`` (the reference of the
    cropped form)."""
    from skimage import measure

    vol = probs.numpy().copy()
    if close:
        vol[[0, -1]] = vol[:, [0, -1]] = vol[:, :, [0, -1]] = 0.0
    if not vol.min() < 0.5 < vol.max():
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    step = 2 * bound / (len(vol) - 1)
    verts, faces, _, _ = measure.marching_cubes(
        vol, level=0.5, spacing=(step,) * 3, gradient_direction="ascent", allow_degenerate=False
    )
    return verts - bound, faces


def test_marching_cubes_runs_on_the_box_around_the_object_only():
    """scikit-image sees only the samples around those above the level: the same vertices in the
    same order and the same faces as on the whole grid (up to float32 rounding: on large grids a few
    slivers of near-zero area can differ, see the code), for an object off centre, one cut by the
    grid's bound (open or closed), fields with samples exactly at the level and an empty grid."""
    axis = torch.linspace(-1.5, 1.5, 41)
    p = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    gen = torch.Generator().manual_seed(3)
    fields = {
        "off centre": torch.sigmoid(-30 * sdf_sphere(p, (0.7, -0.9, 0.4), 0.4)),
        "cut by the bound": torch.sigmoid(-30 * sdf_sphere(p, (1.2, 0.0, 0.0), 0.8)),
        "chair": torch.sigmoid(occupancy_field("chair")(p.reshape(-1, 3)).reshape(p.shape[:3])),
        "ties": (torch.rand(41, 41, 41, generator=gen) * 4).round() / 4,  # 0, 0.25, 0.5, ...
        "ties, nothing above": (torch.rand(41, 41, 41, generator=gen) * 2).round() / 4,  # at most 0.5
        "empty": torch.zeros(41, 41, 41),
    }
    for name, probs in fields.items():
        for close in (True, False):
            mesh = marching_cubes(probs, close=close, backend="skimage")
            verts, faces = _full_volume_marching_cubes(probs, close)
            assert len(mesh.faces) == len(faces), (name, close)
            np.testing.assert_array_equal(mesh.faces, faces, err_msg=f"{name}, close={close}")
            np.testing.assert_allclose(mesh.vertices, verts, atol=1e-6, err_msg=f"{name}, close={close}")


def test_no_surface_gives_an_empty_mesh():
    for value in (-5.0, 5.0):
        mesh = extract_mesh(lambda p, v=value: torch.full((len(p),), v), 16, mode="fast", close=False)
        assert len(mesh.vertices) == 0 and len(mesh.faces) == 0
    assert len(marching_cubes(np.zeros((5, 5, 5)), 0.5).faces) == 0
    # closed (the default): an empty field stays empty, a full one is the grid's own cube
    assert len(extract_mesh(lambda p: torch.full((len(p),), -5.0), 16, mode="fast").faces) == 0
    full = extract_mesh(lambda p: torch.full((len(p),), 5.0), 16, mode="fast")
    assert full.is_watertight and np.allclose(full.bounds, [[-1.5] * 3, [1.5] * 3], atol=0.2)


def test_a_surface_cut_by_the_grid_bound_is_closed_by_default():
    """A sphere of radius 2 does not fit the [-1.5, 1.5]^3 grid: open at the bound unless closed."""
    field = lambda p: -20.0 * sdf_sphere(p, radius=2.0)  # noqa: E731
    closed = extract_mesh(field, 24, mode="dense")
    opened = extract_mesh(field, 24, mode="dense", close=False)
    assert closed.is_watertight and closed.is_volume
    assert not opened.is_watertight
    assert np.abs(closed.bounds).max() <= 1.5


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(resolution=1), "resolution"),
        (dict(mode="mise"), "extraction mode"),
        (dict(threshold=1.0), "threshold"),
        (dict(bound=0.0), "bound"),
        (dict(chunk_points=0), "chunk_points"),
    ],
)
def test_bad_options_raise_config_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        extract_mesh(lambda p: -sdf_sphere(p), **{"resolution": 8, **kwargs})


def test_decoder_with_the_wrong_output_shape_is_reported():
    with pytest.raises(ValueError, match=r"logits \[B, N\]"):
        occupancy_grid(lambda p: p.sum(-1, keepdim=True), 1, 8)


def test_small_disconnected_parts_are_dropped_whole():
    """A big sphere and a crumb: min_part 0.05 drops the crumb (the rest stays watertight), 0 keeps
    both, and a second part of comparable size survives."""
    from zsw.infer.grid import drop_small_parts

    def two(radius_b):
        return lambda p: (
            -50.0
            * torch.minimum(
                sdf_sphere(p - torch.tensor([0.5, 0.0, 0.0]), radius=0.6),
                sdf_sphere(p + torch.tensor([0.9, 0.0, 0.0]), radius=radius_b),
            )
        )

    mesh = extract_mesh(two(0.12), 48)
    assert len(mesh.split(only_watertight=False)) == 2
    kept, dropped = drop_small_parts(mesh, 0.05)
    assert dropped == 1 and kept.is_watertight and len(kept.split(only_watertight=False)) == 1
    assert kept.area == pytest.approx(max(part.area for part in mesh.split(only_watertight=False)), rel=1e-6)
    assert drop_small_parts(mesh, 0.0) == (mesh, 0)
    assert drop_small_parts(extract_mesh(two(0.45), 48), 0.05)[1] == 0  # a real second part stays


def test_fixed_shape_fast_extraction_gives_the_exact_grid_and_falls_back_when_full():
    """``capacity`` (fixed shapes, one host synchronisation per grid) decodes the same points and
    gives the same grid as the exact ``fast`` path, for a batch split into chunks; when a level
    needs more points than it holds, the grid is decoded again exactly."""
    fields = [occupancy_field("torus"), occupancy_field("lamp")]

    def decode(points):  # [B, N, 3] -> [B, N]
        return torch.stack([f(points[b]) for b, f in enumerate(fields)])

    exact, exact_stats = occupancy_grid(decode, 2, 64, mode="fast", chunk_points=20_000)
    for capacity in (0.25, 1e-3):  # room for every level; overflow on the first refinement
        grid, stats = occupancy_grid(decode, 2, 64, mode="fast", chunk_points=20_000, capacity=capacity)
        torch.testing.assert_close(grid, exact, rtol=0, atol=0)
        assert [s.evaluated_points for s in stats] == [s.evaluated_points for s in exact_stats]
    # the growth along the surface (here it has to find the lamp's pole) also runs with fixed shapes
    bare = dict(mode="fast", coarse_resolution=16, margin=0.0, dilate=0, chunk_points=20_000)
    exact, exact_stats = occupancy_grid(decode, 2, 64, **bare)
    grid, stats = occupancy_grid(decode, 2, 64, **bare, capacity=0.25)
    torch.testing.assert_close(grid, exact, rtol=0, atol=0)
    assert [s.evaluated_points for s in stats] == [s.evaluated_points for s in exact_stats]
    with pytest.raises(ConfigError, match="capacity"):
        occupancy_grid(decode, 2, 64, mode="fast", capacity=1.5)


@pytest.mark.parametrize("capacity", [0.5, 1.0])
def test_fixed_shape_decoding_writes_each_chosen_point_once_and_nothing_else(capacity):
    """The fixed-shape scatter, in place: every point to decode gets its logit, every other point
    keeps its value, in images with padding (fewer points than the capacity) whose points include
    the grid's last one and its first ones (where the padding's target could fall), with none, and
    with more than fit (the first ``cap`` decoded, the overflow flagged)."""
    from zsw.infer.grid import _decode_static, grid_points

    resolution, m = 6, 7
    total = m**3
    cap = math.ceil(capacity * total)
    todo = torch.zeros(4, total, dtype=torch.bool)
    todo[0, [0, 1, 2, 5, total - 1]] = True  # padded; its first points and the last one decoded
    todo[1, torch.randperm(total)[: total // 3]] = True  # padded
    # image 2: nothing to decode (all padding)
    todo[3, : min(total, cap + 40)] = True  # full (capacity 0.5: overflowing)
    todo = todo.view(4, m, m, m)
    values = torch.randn(4, m, m, m)
    before = values.clone()

    def decode(points):  # [B, N, 3] -> [B, N], a distinct value per point and image
        return points.sum(-1) * 10 + torch.arange(len(points))[:, None] * 100

    count, overflow = _decode_static(decode, todo, values, resolution, 1.5, 50, capacity)
    flat = todo.view(4, total)
    expected = before.view(4, total).clone()
    for b in range(4):
        chosen = flat[b].nonzero()[:, 0][:cap]
        ijk = torch.stack([chosen // (m * m), (chosen // m) % m, chosen % m], dim=-1)
        expected[b, chosen] = decode(grid_points(ijk[None], resolution, 1.5))[0] + 100 * b
    torch.testing.assert_close(values.view(4, total), expected, rtol=0, atol=0)
    assert count.tolist() == [min(int(c), cap) for c in flat.sum(1)]
    assert overflow.tolist() == [False, False, False, capacity < 1.0]


def _pooled_masks(values, evaluated, t, margin, dilate):
    """The refinement masks as they were first written (float pooling and whole-grid boolean
    grids, ~15 GB at resolution 1024): the reference of the slab and boolean-shift forms."""
    import torch.nn.functional as F

    v = values[:, None]
    hi, lo = F.max_pool3d(v, 2, stride=1), -F.max_pool3d(-v, 2, stride=1)
    active = (hi >= t - margin) & (lo <= t + margin)
    if dilate:
        active = F.max_pool3d(active.float(), 2 * dilate + 1, stride=1, padding=dilate) > 0
    children = active[:, 0].repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)
    corners = F.max_pool3d(children[:, None].float(), 2, stride=1, padding=1)[:, 0] > 0
    done = torch.zeros_like(corners)
    done[:, ::2, ::2, ::2] = evaluated
    return corners & ~done, done | (corners & ~done)


def _pooled_surface_todo(values, t, evaluated):
    import torch.nn.functional as F

    def cut(above, below):
        some = lambda x: F.max_pool3d(x[:, None].float(), 2, stride=1)[:, 0] > 0  # noqa: E731
        return some(above) & some(below)

    inner = torch.zeros_like(evaluated)
    inner[:, 1:-1, 1:-1, 1:-1] = True
    cells = cut(values >= t, values <= t) | cut((values >= t) & inner, (values <= t) | ~inner)
    corners = F.max_pool3d(cells[:, None].float(), 2, stride=1, padding=1)[:, 0] > 0
    return corners & ~evaluated


@pytest.mark.parametrize("slab", [1 << 24, 700])
def test_refinement_masks_equal_the_pooled_whole_grid_forms(monkeypatch, slab):
    """``fast``'s masks are computed with boolean shifts and, along the surface, in slabs of the
    grid (so that resolution 1024 needs ~7 GB instead of ~15): the same masks as pooling the whole
    grid, on rough random fields with exact ties, for one slab and for many (the last one row)."""
    from zsw.infer import grid

    monkeypatch.setattr(grid, "SLAB_ELEMENTS", slab)
    gen = torch.Generator().manual_seed(0)
    for B, m, above in ((2, 17, 0.0), (1, 21, 0.0), (2, 17, 2.5)):  # mostly above t: few, far apart cuts
        values = torch.randn(B, m, m, m, generator=gen).round() + above  # integers: corners exactly at t
        evaluated = torch.rand(B, m, m, m, generator=gen) < 0.5
        for margin, dilate in ((0.0, 0), (1.0, 1), (0.5, 2)):
            _, todo, done = grid._next_level(values, evaluated, 0.0, margin, dilate)
            want_todo, want_done = _pooled_masks(values, evaluated, 0.0, margin, dilate)
            assert torch.equal(todo, want_todo) and torch.equal(done, want_done), (B, m, margin, dilate)
        assert torch.equal(grid._surface_todo(values, 0.0, evaluated), _pooled_surface_todo(values, 0.0, evaluated))
    # the whole extraction, many slabs against one
    field = occupancy_field("lamp")  # bare: the growth has to find the pole
    decode, bare = (lambda p: field(p[0])[None]), dict(mode="fast", coarse_resolution=16, margin=0.0, dilate=0)
    monkeypatch.setattr(grid, "SLAB_ELEMENTS", 1 << 24)
    one, (one_stats,) = occupancy_grid(decode, 1, 64, **bare)
    monkeypatch.setattr(grid, "SLAB_ELEMENTS", slab)
    many, (many_stats,) = occupancy_grid(decode, 1, 64, **bare)
    assert torch.equal(many, one) and many_stats.evaluated_points == one_stats.evaluated_points


@pytest.mark.parametrize("slab", [1 << 20, 300, 1])
def test_upsampling_is_trilinear_interpolation_bit_for_bit(monkeypatch, slab):
    import torch.nn.functional as F

    from zsw.infer import grid

    monkeypatch.setattr(grid, "UPSAMPLE_ELEMENTS", slab)  # one slab; several; one row each
    gen = torch.Generator().manual_seed(1)
    for B, m in ((1, 2), (2, 9), (1, 33)):
        values = torch.randn(B, m, m, m, generator=gen) * 10
        want = F.interpolate(values[:, None], size=(2 * m - 1,) * 3, mode="trilinear", align_corners=True)[:, 0]
        assert torch.equal(grid._upsample2(values), want), (B, m)


@pytest.mark.gpu
def test_fixed_shape_fast_extraction_never_synchronises_inside_the_level_loop():
    from zsw.infer.grid import _fast_pass

    def decode(points):  # a sphere of radius 0.6, in logits, without host synchronisation
        return (0.6 - points.norm(dim=-1)) * 20.0

    torch.cuda.set_sync_debug_mode("error")
    try:
        values, counts, overflow = _fast_pass(decode, 2, 128, 1.5, 65536, torch.device("cuda"), 0.0, 32, 2.0, 1, 0.25)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not bool(overflow.any()) and values.shape == (2, 129, 129, 129)
    exact, _ = occupancy_grid(lambda p: (0.6 - p.norm(dim=-1)) * 20.0, 2, 128, mode="fast", device="cuda")
    torch.testing.assert_close(torch.sigmoid(values), exact)


def test_the_default_chunk_is_smaller_on_a_cpu():
    """16,384 points per call on a CPU (a 65,536-point chunk's buffers exceed glibc's largest mmap
    threshold and page-fault anew every call), 65,536 on a GPU; an explicit value wins."""
    from zsw.infer.settings import default_chunk_points

    assert default_chunk_points(torch.device("cpu")) == 16384
    assert default_chunk_points(torch.device("cuda", 0)) == default_chunk_points("cuda") == 65536
    sizes = []

    def decode(points):
        sizes.append(points.shape[1])
        return (0.5 - points.norm(dim=-1)) * 10.0

    occupancy_grid(decode, 1, 40, mode="dense")
    assert max(sizes) == 16384 and sum(sizes) == 41**3
    sizes.clear()
    occupancy_grid(decode, 1, 40, mode="dense", chunk_points=50_000)
    assert max(sizes) == 50_000


@pytest.mark.parametrize("logit", [-4.0, 4.0])
def test_an_empty_mesh_says_which_side_of_the_threshold_the_field_stays(logit):
    from zsw.infer.reconstruct import _empty_mesh_warning

    def decode(p):
        return torch.full(p.shape[:2], logit)

    for mode in ("dense", "fast"):
        (mesh,), (stats,) = grid_meshes(decode, 1, GridSettings(16, mode, close=False))
        assert len(mesh.faces) == 0
        p = 1 / (1 + math.exp(-logit))
        assert stats.occupancy_range == pytest.approx((p, p), abs=1e-6)
        text = _empty_mesh_warning(0.5, stats.occupancy_range)
        assert (f"stays under --threshold 0.5 (at most {p:.3f}" if logit < 0 else f"at least {p:.3f}") in text, text
    (mesh,), (stats,) = grid_meshes(decode, 1, GridSettings(16, "dense", close=True))
    assert (len(mesh.faces) > 0) == (logit > 0) and (stats.occupancy_range is None) == (logit > 0)
