"""Occupancy grids and marching cubes: from a point decoder to a ``trimesh.Trimesh``.

The grid spans ``[-bound, bound]^3`` in the normalised frame of the visible surface with
``resolution + 1`` samples per axis (``linspace(-bound, bound, resolution + 1)``, 129^3 points for
resolution 128, as ZeroShape). Logits become probabilities with a sigmoid and marching cubes
extracts the ``threshold`` level set: scikit-image for grids on the CPU, the vectorised PyTorch
version of :mod:`zsw.infer.marching_cubes` for grids on a GPU (no copy of the grid to the host).
Vertex ``v`` of index coordinates ``(i, j, k)`` lands exactly at
``-bound + (i, j, k) * 2 * bound / resolution`` -- the coordinates of the grid samples (ZeroShape
divides by ``resolution + 1`` instead, shrinking its meshes by N/(N+1)).

Two ways to fill the grid:

``dense``
    every grid point is decoded; the exact reference.
``fast``
    coarse to fine, after the multiresolution iso-surface extraction (MISE) of Occupancy Networks:
    decode a coarse grid (``coarse_resolution``, 16 by default), mark the cells whose eight
    corners straddle the threshold or come within a margin of it (``margin`` logits on the first
    level, 2 by default: a corner probability between 0.12 and 0.88 around 0.5; halved on every
    finer level, as the logits change across a cell in proportion to its size), grow that set by
    one cell in every direction (``dilate``; not on the last level, where the growth below does
    better), and decode the points of the next finer grid only inside it; repeat up to
    ``resolution``. Points never decoded take the trilinear interpolation of the coarser level.
    Then the decoded set grows along the surface: every corner of a cell whose
    corners straddle the threshold that still holds an interpolated value is decoded, and again,
    until no such corner is left. Each cell the surface cuts then has decoded corners only, and a
    surface passes from cell to cell through faces whose (decoded) corners straddle the threshold,
    so every connected piece of surface that the refined band touched is exactly ``dense``'s,
    wherever it leads. Only a separate part that no refined cell came near can be missed: finding
    those (thin parts, small pieces) is what the margin is for. ``bench/fast_extraction.py`` and
    ``zsw bench reconstruct`` measure the agreement with ``dense`` on real model outputs.

Points go to ``decode`` in chunks of at most ``chunk_points`` (summed over the images of a batch),
which bounds the decoder's memory. :func:`extract_meshes` decodes several images per call (the
decoder's batch dimension); :func:`extract_mesh` is the one-image form.

:func:`grid_meshes` takes a :class:`~zsw.infer.settings.GridSettings` and returns the meshes with
their statistics (points decoded, seconds in decoding and marching cubes); :func:`extract_meshes`
and :func:`extract_mesh` are the keyword forms that return meshes only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zsw.errors import ConfigError
from zsw.infer import settings as _settings

__all__ = [
    "extract_mesh",
    "extract_meshes",
    "grid_meshes",
    "drop_small_parts",
    "occupancy_grid",
    "marching_cubes",
    "grid_points",
    "GridStats",
    "MODES",
]

#: grid filling strategies
MODES = _settings.EXTRACTIONS


@dataclass
class GridStats:
    """What filling one image's grid cost."""

    mode: str
    resolution: int
    evaluated_points: int  # points sent to the decoder for this image (padding excluded)
    grid_points: int  # (resolution + 1)^3
    decode_s: float = 0.0  # wall time in the decoder, shared by the batch
    marching_cubes_s: float = 0.0
    #: the lowest and highest probability on the grid, for an image whose mesh came out empty (why)
    occupancy_range: tuple[float, float] | None = None

    @property
    def fraction(self) -> float:
        """Evaluated points over grid points (1.0 for dense)."""
        return self.evaluated_points / self.grid_points

    def as_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction}


#: ``fast`` with fixed shapes (``capacity``): rounds of growth after the last level, and the share
#: of ``capacity`` each decodes. The growth adds a rim, not a band: on the packaged model's outputs
#: for 36 images, 1-14 rounds (3 or fewer for 25 of them), at most 495 points a round.
STATIC_GROWTH_ROUNDS = 16
GROWTH_SHARE = 1 / 64


def _check(
    resolution: int, mode: str, threshold: float, bound: float, chunk_points: int | None, capacity: float | None = None
) -> None:
    _settings.GridSettings(resolution, mode, threshold, bound, chunk_points=chunk_points)  # validates
    if capacity is not None and not (math.isfinite(capacity) and 0.0 < capacity <= 1.0):
        raise ConfigError(f"capacity must be a fraction in (0, 1], got {capacity!r}")


def grid_points(
    index: Tensor,  # [..., 3] integer grid indices (i, j, k)
    resolution: int,
    bound: float,
) -> Tensor:  # [..., 3] float32 coordinates
    """Coordinates of grid samples: ``-bound + index * 2 * bound / resolution``.

    Identical to ``linspace(-bound, bound, resolution + 1)[index]`` up to float rounding.
    """
    return index.to(torch.float32) * (2.0 * bound / resolution) - bound


def _decode_sparse(
    decode: Callable[[Tensor], Tensor],
    index: list[Tensor],  # per image: [K_b, 3] integer indices on a grid of `resolution`
    resolution: int,
    bound: float,
    chunk_points: int,
) -> list[Tensor]:  # per image: [K_b] float32 logits
    """Decode per-image point sets of different sizes through one batched decoder.

    The batch is padded to the largest set (padding points are the grid centre and are dropped);
    each call sends at most ``chunk_points`` points in total.
    """
    B = len(index)
    counts = [len(ix) for ix in index]
    most = max(counts)
    device = index[0].device
    out = [torch.empty(c, dtype=torch.float32, device=device) for c in counts]
    if most == 0:
        return out
    per_image = max(1, chunk_points // B)
    for start in range(0, most, per_image):
        stop = min(start + per_image, most)
        pts = torch.zeros(B, stop - start, 3, dtype=torch.float32, device=device)
        for b, ix in enumerate(index):
            part = ix[start:stop]
            if len(part):
                pts[b, : len(part)] = grid_points(part, resolution, bound)
        logits = decode(pts)
        if tuple(logits.shape) != (B, stop - start):
            raise ValueError(f"decode must map points [B, N, 3] to logits [B, N], got {tuple(logits.shape)}")
        logits = logits.float()
        for b, ix in enumerate(index):
            n = max(0, min(stop, len(ix)) - start)
            if n:
                out[b][start : start + n] = logits[b, :n]
    return out


def _dense_index(n: int, start: int, stop: int, device) -> Tensor:  # [stop - start, 3]
    flat = torch.arange(start, stop, device=device)
    return torch.stack([flat // (n * n), (flat // n) % n, flat % n], dim=-1)


def _decode_dense(
    decode: Callable[[Tensor], Tensor], B: int, resolution: int, bound: float, chunk_points: int, device
) -> Tensor:  # [B, R+1, R+1, R+1] logits
    n = resolution + 1
    total = n**3
    values = torch.empty(B, total, dtype=torch.float32, device=device)
    per_image = max(1, chunk_points // B)
    for start in range(0, total, per_image):
        stop = min(start + per_image, total)
        pts = grid_points(_dense_index(n, start, stop, device), resolution, bound)
        logits = decode(pts[None].expand(B, -1, -1))
        if tuple(logits.shape) != (B, stop - start):
            raise ValueError(f"decode must map points [B, N, 3] to logits [B, N], got {tuple(logits.shape)}")
        values[:, start:stop] = logits.float()
    return values.view(B, n, n, n)


def _levels(resolution: int, coarse_resolution: int) -> int:
    """Number of 2x refinements from the coarsest grid (>= coarse_resolution cells) to resolution."""
    k = 0
    while resolution % (2 ** (k + 1)) == 0 and resolution // 2 ** (k + 1) >= coarse_resolution:
        k += 1
    return k


def _active_cells(values: Tensor, t: float, margin: float, dilate: int) -> Tensor:  # [B, n+1]^3 -> [B, n]^3
    """Cells whose corners straddle logit ``t`` or come within ``margin`` of it, grown by ``dilate``.
    Boolean shifts, not pooling (a cell's largest corner is at least ``t - margin`` exactly when one
    of its corners is): on two CPU cores 16-60x faster than ``max_pool3d`` of the float grid (513^3:
    0.7-0.9 s against 11-19 s), with temporaries of a quarter of its size."""
    active = _cell_any(values >= t - margin) & _cell_any(values <= t + margin)
    for dim in (1, 2, 3) if dilate else ():  # a cube of side 2 * dilate + 1, cut at the grid's faces
        grown = active.clone()
        n = active.shape[dim]
        for shift in range(1, min(dilate, n - 1) + 1):
            grown.narrow(dim, shift, n - shift).logical_or_(active.narrow(dim, 0, n - shift))
            grown.narrow(dim, 0, n - shift).logical_or_(active.narrow(dim, shift, n - shift))
        active = grown
    return active


def _decode_static(
    decode: Callable[[Tensor], Tensor],
    todo: Tensor,  # [B, m, m, m] bool: the points to decode on a grid of `resolution` (m = resolution + 1)
    values: Tensor,  # [B, m, m, m] logits, updated in place at the decoded points
    resolution: int,
    bound: float,
    chunk_points: int,
    capacity: float,
) -> tuple[Tensor, Tensor]:  # evaluated points [B] (int64), overflow [B] (bool), on the device
    """Decode the ``todo`` points with shapes fixed in advance and no host synchronisation: each
    image's points are the first ``ceil(capacity * m^3)`` of ``torch.nonzero_static``, padded with
    the index of a point it does not decode, where the padding writes back that point's own logit
    (no copy of the grid). Images with more points than that are flagged in ``overflow`` (their
    remaining points keep the coarser level's interpolation)."""
    B, m = todo.shape[0], todo.shape[1]
    total = m**3
    cap = max(1, math.ceil(capacity * total))
    flat = todo.reshape(B, total)
    grid = values.view(B, total)  # the grid itself: scattered into in place
    idx = torch.stack([torch.nonzero_static(flat[b], size=cap, fill_value=total)[:, 0] for b in range(B)])
    padded = idx == total
    # An image with padding has fewer than `cap` points to decode, so one of its first `cap` points is
    # not among them: the padding's target (where no decoded logit is written, so the scatter has
    # no conflicting writes). Where there is no padding the target is unused.
    spare = (~flat[:, :cap]).to(torch.uint8).argmax(dim=1, keepdim=True)  # [B, 1]
    target = torch.where(padded, spare, idx)
    safe = idx.clamp(max=total - 1)
    ijk = torch.stack([safe // (m * m), (safe // m) % m, safe % m], dim=-1)  # [B, cap, 3]
    logits = torch.empty(B, cap, dtype=torch.float32, device=values.device)
    per_image = max(1, chunk_points // B)
    for start in range(0, cap, per_image):
        stop = min(start + per_image, cap)
        out = decode(grid_points(ijk[:, start:stop], resolution, bound))
        if tuple(out.shape) != (B, stop - start):
            raise ValueError(f"decode must map points [B, N, 3] to logits [B, N], got {tuple(out.shape)}")
        logits[:, start:stop] = out.float()
    grid.scatter_(1, target, torch.where(padded, grid.gather(1, target), logits))
    count = flat.sum(dim=1)
    return count.clamp(max=cap), count > cap


def _next_level(
    values: Tensor, evaluated: Tensor, t: float, margin: float, dilate: int
) -> tuple[Tensor, Tensor, Tensor]:  # [B, n2+1]^3 logits, todo, evaluated after decoding todo
    """One refinement step of ``fast``: the logits on the grid twice as fine (interpolated), which
    of its points must be decoded now (the corners of the halves of the active cells that hold no
    decoded logit yet), and which hold decoded logits once they are. Two boolean grids of the fine
    size, no more: at resolution 1024 each is 1 GB."""
    active = _cell_any_expanded(_active_cells(values, t, margin, dilate))
    values = _upsample2(values)
    coarse = (slice(None), slice(None, None, 2), slice(None, None, 2), slice(None, None, 2))
    active[coarse] &= ~evaluated  # the coarse level's points keep their decoded logits
    done = active.clone()
    done[coarse] |= evaluated
    return values, active, done


#: grid elements a slab of :func:`_upsample2` reads (rows of the first axis): its temporaries,
#: ~32 bytes per element read, stay small
UPSAMPLE_ELEMENTS = 1 << 20


def _upsample2(values: Tensor) -> Tensor:  # [B, m, m, m] -> [B, 2m-1, 2m-1, 2m-1]
    """``F.interpolate(..., mode="trilinear", align_corners=True)`` to the grid twice as fine, bit
    for bit (a new point is the mean of its two neighbours along an axis, an old one is copied),
    one axis at a time over slabs of the first: about 2x faster on a CPU (the last level of
    resolution 1024, 1.1G points: 2.3-2.9 s against 5.2-5.4 s on two cores). On an accelerator,
    ``F.interpolate`` itself (one kernel)."""
    B, m = values.shape[0], values.shape[1]
    fine = 2 * m - 1
    if values.device.type != "cpu":  # one kernel launch, not a few per slab
        return F.interpolate(values[:, None], size=(fine,) * 3, mode="trilinear", align_corners=True)[:, 0]
    out = values.new_empty(B, fine, fine, fine)
    rows = max(1, UPSAMPLE_ELEMENTS // (B * m * m))
    previous = None
    for a in range(0, m, rows):
        b = min(a + rows, m)
        slab = _upsample2_axis(_upsample2_axis(values[:, a:b], 3), 2)  # [B, b - a, fine, fine]
        out[:, 2 * a : 2 * b - 1 : 2] = slab
        if b - a > 1:
            out[:, 2 * a + 1 : 2 * b - 2 : 2] = (slab[:, :-1] + slab[:, 1:]) * 0.5
        if previous is not None:  # the row between this slab and the one before
            out[:, 2 * a - 1] = (previous + slab[:, 0]) * 0.5
        previous = slab[:, -1]
    return out


def _upsample2_axis(x: Tensor, dim: int) -> Tensor:  # n points along dim -> 2n - 1
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = 2 * n - 1
    out = x.new_empty(shape)
    old, new = [slice(None)] * x.dim(), [slice(None)] * x.dim()
    old[dim], new[dim] = slice(0, None, 2), slice(1, None, 2)
    out[tuple(old)] = x
    out[tuple(new)].copy_(x.narrow(dim, 0, n - 1)).add_(x.narrow(dim, 1, n - 1)).mul_(0.5)
    return out


def _cell_any_expanded(cells: Tensor) -> Tensor:  # [B, n, n, n] bool -> [B, 2n+1, 2n+1, 2n+1]
    """The points of the grid twice as fine that are a corner of a half of any of ``cells``, one
    axis at a time: along an axis, fine point ``2p + 1`` lies inside coarse cell ``p`` and point
    ``2p`` on the face between cells ``p - 1`` and ``p``, and the corners of a box of cells are
    the product of their corners along each axis."""
    out = cells
    for dim in (1, 2, 3):
        n = out.shape[dim]
        shape = list(out.shape)
        shape[dim] = 2 * n + 1
        grown = out.new_zeros(shape)
        odd, even = [slice(None)] * 4, [slice(None)] * 4
        odd[dim], even[dim] = slice(1, None, 2), slice(0, None, 2)
        grown[tuple(odd)] = out
        faces = grown[tuple(even)]  # a view: n + 1 points along dim
        faces.narrow(dim, 0, n).copy_(out)
        faces.narrow(dim, 1, n).logical_or_(out)
        out = grown
    return out


def _cell_any(x: Tensor) -> Tensor:  # [B, m, m, m] bool -> [B, m-1, m-1, m-1]: any of each cell's 8 corners
    x = x[:, 1:] | x[:, :-1]
    x = x[:, :, 1:] | x[:, :, :-1]
    return x[:, :, :, 1:] | x[:, :, :, :-1]


#: elements of the grid a slab of :func:`_surface_todo` covers (rows of the first axis): 16M, a
#: 129^3 grid in one slab, a 1025^3 grid in 69
SLAB_ELEMENTS = 1 << 24


def _surface_todo(values: Tensor, t: float, evaluated: Tensor) -> Tensor:  # [B, m, m, m] -> bool
    """The corners not ``evaluated`` yet of every cell that marching cubes may cut at logit ``t``:
    the cells whose corners straddle it (inclusively), also when the grid's outermost layer counts
    as empty (``close``). Boolean shifts over slabs of the first axis, so that the temporaries stay
    small (on a 1025^3 grid, the whole-grid form needed ~8 GB of them) and in cache."""
    B, m = values.shape[0], values.shape[1]
    todo = torch.zeros_like(evaluated)
    rows = max(1, SLAB_ELEMENTS // (B * m * m))
    for a in range(0, m - 1, rows):
        b = min(a + rows, m - 1)  # cells a..b-1, their corners on rows a..b
        v = values[:, a : b + 1]
        above, below = v >= t, v <= t
        cut = _cell_any(above) & _cell_any(below)
        # the outermost layer as empty: above there never, below always (slices, not index lists,
        # which are host tensors: copying one to a GPU waits for it)
        for mask, fill in ((above, False), (below, True)):
            mask[:, :, 0] = mask[:, :, -1] = mask[:, :, :, 0] = mask[:, :, :, -1] = fill
            if a == 0:
                mask[:, 0] = fill
            if b == m - 1:
                mask[:, -1] = fill
        cut |= _cell_any(above) & _cell_any(below)
        todo[:, a : b + 1] |= _cell_corners(cut) & ~evaluated[:, a : b + 1]
    return todo


def _cell_corners(cells: Tensor) -> Tensor:  # [B, n, n, n] bool -> [B, n+1, n+1, n+1]
    """The grid points that are a corner of any of ``cells`` (boolean shifts: pooling a float
    copy costs ~10x more on a CPU)."""
    B, n = cells.shape[0], cells.shape[1]
    corners = cells.new_zeros(B, n + 1, *(s + 1 for s in cells.shape[2:]))
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                corners[:, i : i + n, j : j + cells.shape[2], k : k + cells.shape[3]] |= cells
    return corners


def _decode_exact(
    decode: Callable[[Tensor], Tensor], todo: Tensor, values: Tensor, resolution: int, bound: float, chunk_points: int
) -> Tensor:  # evaluated points [B] (int64)
    """Decode exactly the ``todo`` points into ``values`` (``nonzero``: one host synchronisation)."""
    index = [todo[b].nonzero() for b in range(todo.shape[0])]
    logits = _decode_sparse(decode, index, resolution, bound, chunk_points)
    for b, ix in enumerate(index):
        values[b, ix[:, 0], ix[:, 1], ix[:, 2]] = logits[b]
    return torch.tensor([len(ix) for ix in index], dtype=torch.int64, device=values.device)


def _fast_pass(
    decode, B, resolution, bound, chunk_points, device, t, coarse_resolution, margin, dilate, capacity, grow=True
) -> tuple[Tensor, Tensor, Tensor]:  # [B, R+1, R+1, R+1] logits, evaluated points [B], overflow [B]
    """Coarse to fine, each level decoded exactly (``capacity`` None) or with fixed shapes
    (:func:`_decode_static`, no host synchronisation in the loop)."""
    levels = _levels(resolution, coarse_resolution)
    n = resolution >> levels
    values = _decode_dense(decode, B, n, bound, chunk_points, device)
    evaluated = torch.ones_like(values, dtype=torch.bool)
    counts = torch.full((B,), (n + 1) ** 3, dtype=torch.int64, device=device)
    overflow = torch.zeros(B, dtype=torch.bool, device=device)
    for level in range(levels):
        # the margin finds parts thinner than a cell; the logits change across a cell in proportion
        # to its size, so the margin halves with every level
        # the growth below follows the surface on the last level: a dilated band would add nothing
        last = level == levels - 1
        values, todo, evaluated = _next_level(values, evaluated, t, margin / 2**level, 0 if grow and last else dilate)
        n *= 2
        if capacity is None:
            counts += _decode_exact(decode, todo, values, n, bound, chunk_points)
        else:
            decoded, over = _decode_static(decode, todo, values, n, bound, chunk_points, capacity)
            counts += decoded
            overflow |= over
        del todo
    # grow the decoded set until every cell the surface cuts has decoded corners (see the module
    # docstring): then each part of the surface that was found is the dense grid's, exactly
    if grow and capacity is None:
        while True:
            todo = _surface_todo(values, t, evaluated)
            if not bool(todo.any()):
                break
            counts += _decode_exact(decode, todo, values, resolution, bound, chunk_points)
            evaluated |= todo
    elif grow:
        for _ in range(STATIC_GROWTH_ROUNDS):
            todo = _surface_todo(values, t, evaluated)
            decoded, over = _decode_static(
                decode, todo, values, resolution, bound, chunk_points, capacity * GROWTH_SHARE
            )
            counts += decoded
            overflow |= over
            evaluated |= todo
        # still growing after the fixed rounds: the exact path finishes it
        overflow |= _surface_todo(values, t, evaluated).flatten(1).any(dim=1)
    return values, counts, overflow


def _decode_fast(
    decode: Callable[[Tensor], Tensor],
    B: int,
    resolution: int,
    bound: float,
    chunk_points: int,
    device,
    t: float,
    coarse_resolution: int,
    margin: float,
    dilate: int,
    capacity: float | None = None,
    grow: bool = True,
) -> tuple[Tensor, list[int]]:  # [B, R+1, R+1, R+1] logits, evaluated points per image
    args = (decode, B, resolution, bound, chunk_points, device, t, coarse_resolution, margin, dilate)
    if capacity is not None:
        values, counts, overflow = _fast_pass(*args, capacity, grow)
        if not bool(overflow.any()):  # the one host synchronisation of the whole grid
            return values, counts.tolist()
        # some image had more points to decode than `capacity` holds: redo exactly (same result
        # as without capacity, at the cost of the first pass)
    values, counts, _ = _fast_pass(*args, None, grow)
    return values, counts.tolist()


def occupancy_grid(
    decode: Callable[[Tensor], Tensor],
    batch: int,
    resolution: int = 128,
    *,
    mode: str = "dense",
    threshold: float = 0.5,
    bound: float = 1.5,
    chunk_points: int | None = None,
    device: str | torch.device | None = None,
    coarse_resolution: int = _settings.FAST_EXTRACTION["coarse_resolution"],
    margin: float = _settings.FAST_EXTRACTION["margin"],
    dilate: int = _settings.FAST_EXTRACTION["dilate"],
    grow: bool = _settings.FAST_EXTRACTION["grow"],
    capacity: float | None = None,
) -> tuple[Tensor, list[GridStats]]:  # [B, R+1, R+1, R+1] probabilities, per-image stats
    """Occupancy probabilities on the ``(resolution + 1)^3`` grid of ``batch`` images.

    Args:
        decode: points ``[B, N, 3]`` (normalised frame) -> occupancy logits ``[B, N]``.
        batch: number of images ``B`` that ``decode`` handles per call.
        resolution: cells per axis; the grid has ``resolution + 1`` samples per axis.
        mode: ``dense`` or ``fast`` (see the module docstring).
        threshold: iso-level of the probability; ``fast`` refines around it.
        bound: half-size of the grid cube.
        chunk_points: most points per ``decode`` call, summed over the batch (None: 65,536 on a
            GPU, 16,384 on a CPU; see :func:`zsw.infer.settings.default_chunk_points`).
        device: where the points and the grid live (default CPU).
        coarse_resolution: ``fast`` only: cells per axis of the first grid.
        margin: ``fast`` only: also refine cells within this many logits of the threshold (on the
            coarsest level; halved on each finer level).
        dilate: ``fast`` only: grow the refined region by this many cells per level (but the
            last, with ``grow``).
        grow: ``fast`` only: after the last level, decode along the surface until every cell it
            cuts has decoded corners, in place of the last level's dilation (off: only to measure
            what it adds).
        capacity: ``fast`` only: decode each level with fixed shapes and without a host
            synchronisation (so that a GPU can run the whole extraction as one CUDA graph later):
            every level decodes ``ceil(capacity * points of the level)`` points per image, the
            needed ones first and padding after, and the whole grid synchronises once at the end.
            If an image needed more on some level, the grid is decoded again without it, so the
            result is always the one of ``capacity=None`` (the default: decode exactly the needed
            points, one synchronisation per level). The padding is wasted work: pick a capacity
            just above the largest share of a level that your model needs refined (the packaged
            model decodes 10 % of the whole grid at resolution 128 on average, 13 % at most;
            ``bench/results/fast-extraction.md``).

    Returns:
        The probability grid (indexed ``[b, i, j, k]`` for ``x, y, z``) and per-image statistics.
    """
    _check(resolution, mode, threshold, bound, chunk_points, capacity)
    device = torch.device(device) if device is not None else torch.device("cpu")
    chunk_points = chunk_points or _settings.default_chunk_points(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if mode == "dense":
            logits = _decode_dense(decode, batch, resolution, bound, chunk_points, device)
            counts = [(resolution + 1) ** 3] * batch
        else:
            t = math.log(threshold / (1.0 - threshold))
            logits, counts = _decode_fast(
                decode, batch, resolution, bound, chunk_points, device, t, coarse_resolution, margin, dilate, capacity,
                grow,
            )  # fmt: skip
        probs = logits.sigmoid_()  # in place: no second grid (4.3 GB at resolution 1024)
    seconds = time.perf_counter() - t0
    stats = [GridStats(mode, resolution, c, (resolution + 1) ** 3, decode_s=seconds) for c in counts]
    return probs, stats


def marching_cubes(
    volume: np.ndarray | Tensor,  # [R+1, R+1, R+1] probabilities, indexed [i, j, k] = (x, y, z)
    threshold: float = 0.5,
    bound: float = 1.5,
    close: bool = True,
    backend: str = "auto",
):
    """The ``threshold`` level set of a grid over ``[-bound, bound]^3`` as an outward-facing mesh.

    With ``close`` the space outside the grid counts as empty (the grid's outermost layer of
    samples is set to 0), so a surface that reaches the bound is capped within one step of it and
    the mesh is watertight and stays inside the cube; without it such a surface stays open at the
    bound. Returns an empty ``trimesh.Trimesh`` when the level is not crossed.

    ``backend``: ``skimage`` (scikit-image on the host), ``torch`` (:mod:`zsw.infer.marching_cubes`
    on the grid's device, same triangles except in ambiguous cells) or ``auto``: ``torch`` for a
    tensor on an accelerator (no host copy of the grid), ``skimage`` otherwise (faster on a CPU).
    """
    import trimesh

    if backend not in ("auto", "skimage", "torch"):
        raise ValueError(f"marching cubes backend must be auto, skimage or torch, got {backend!r}")
    on_device = isinstance(volume, Tensor) and volume.device.type != "cpu"
    if backend == "torch" or (backend == "auto" and on_device):
        verts, faces = _marching_cubes_torch(volume, threshold, bound, close)
    else:
        verts, faces = _marching_cubes_skimage(volume, threshold, bound, close)
    if len(faces) == 0:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)
    return trimesh.Trimesh(verts, faces, process=False)


def drop_small_parts(mesh, min_fraction: float):
    """``mesh`` without its disconnected parts whose surface area is below ``min_fraction`` of the
    largest part's (crumbs and floaters of an uncertain occupancy field), and how many were
    dropped. Whole parts go, so a watertight mesh stays watertight; 0 keeps everything."""
    import trimesh

    if min_fraction <= 0 or len(mesh.faces) == 0:
        return mesh, 0
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    areas = np.bincount(labels, weights=mesh.area_faces)
    keep = areas >= min_fraction * areas.max()
    if keep.all():
        return mesh, 0
    kept = mesh.submesh([np.flatnonzero(keep[labels])], append=True, repair=False)
    return kept, int((~keep).sum())


def _check_cube(shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or len(set(shape)) != 1:
        raise ValueError(f"volume must be a cube [R+1, R+1, R+1], got {tuple(shape)}")


def _marching_cubes_skimage(
    volume: np.ndarray | Tensor, threshold: float, bound: float, close: bool
) -> tuple[np.ndarray, np.ndarray]:  # verts [V, 3] float32 in the frame, faces [F, 3] int64
    from skimage import measure

    vol = volume.detach().float().cpu().numpy() if isinstance(volume, Tensor) else np.asarray(volume, np.float32)
    _check_cube(vol.shape)
    n = vol.shape[0]
    # only the box around the samples above the level, one sample wider on each side, holds cells
    # the level cuts: marching cubes runs there (the packaged model's grid of examples/toy.png at
    # resolution 512: 0.94 s instead of 3.64 s), and `close` copies the box, not the grid (4.3 GB
    # at resolution 1024).
    # The same triangles, but for slivers of near-zero area: scikit-image merges vertices that
    # coincide in float32, and the box's smaller coordinates round finer (at 512, 6 of 688,852
    # faces more; the mesh is as watertight)
    closed = close and n > 2
    inner = vol[1:-1, 1:-1, 1:-1] if closed else vol  # with `close` the outermost layer is empty
    lo, hi = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        inside = np.flatnonzero(inner.max(axis=others) > threshold)
        if len(inside) == 0:  # nothing above the level
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
        first, last = (int(inside[0]) + 1, int(inside[-1]) + 1) if closed else (int(inside[0]), int(inside[-1]))
        lo.append(max(first - 1, 0))
        hi.append(min(last + 1, n - 1))
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    sub = np.array(vol[box], dtype=np.float32)  # a copy: the grid itself is not changed
    if closed:
        for axis in range(3):
            for index, edge in ((0, lo[axis] == 0), (-1, hi[axis] == n - 1)):
                if edge:
                    face = [slice(None)] * 3
                    face[axis] = index
                    sub[tuple(face)] = 0.0
    if not (sub.min() < threshold < sub.max()):
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    step = 2.0 * bound / (n - 1)
    # inside is > threshold, so the field increases inwards: 'ascent' makes the faces point out
    verts, faces, _, _ = measure.marching_cubes(
        sub, level=threshold, spacing=(step,) * 3, gradient_direction="ascent", allow_degenerate=False
    )
    verts = verts + (np.asarray(lo) * step - bound)
    return verts.astype(np.float32), faces.astype(np.int64)


def _marching_cubes_torch(
    volume: np.ndarray | Tensor, threshold: float, bound: float, close: bool
) -> tuple[np.ndarray, np.ndarray]:  # as _marching_cubes_skimage, computed where the grid is
    from zsw.infer.marching_cubes import marching_cubes as marching_cubes_torch

    vol = volume.detach() if isinstance(volume, Tensor) else torch.as_tensor(np.asarray(volume, np.float32))
    _check_cube(tuple(vol.shape))
    if close and vol.shape[0] > 2:
        vol = vol.clone()  # the same outer layer as the scikit-image path, emptied on the device
        for index in (0, -1):  # slices, not index lists: those are host tensors, and copying one waits
            vol[index] = vol[:, index] = vol[:, :, index] = 0.0
    verts, faces = marching_cubes_torch(vol, threshold)  # no early exit: an uncrossed level gives 0 faces
    step = 2.0 * bound / (vol.shape[0] - 1)
    return (verts * step - bound).cpu().numpy(), faces.cpu().numpy()


def grid_meshes(
    decode: Callable[[Tensor], Tensor],
    batch: int,
    grid: _settings.GridSettings,
    *,
    device: str | torch.device | None = None,
    **fast_options,
) -> tuple[list, list[GridStats]]:
    """Meshes of ``batch`` images whose decoder maps ``[B, N, 3]`` points to ``[B, N]`` logits, and
    what it took (points decoded, seconds) per image.

    Vertices are in the normalised frame of each image; ``grid.close``: see :func:`marching_cubes`.
    ``fast_options`` are passed to :func:`occupancy_grid` (``coarse_resolution``, ``margin``,
    ``dilate``).
    """
    g = grid
    probs, stats = occupancy_grid(decode, batch, g.resolution, mode=g.extraction, threshold=g.threshold,
                                  bound=g.bound, chunk_points=g.chunk_points, device=device,
                                  **fast_options)  # fmt: skip
    meshes = []
    for b in range(batch):
        t0 = time.perf_counter()
        meshes.append(marching_cubes(probs[b], g.threshold, g.bound, close=g.close))
        stats[b].marching_cubes_s = time.perf_counter() - t0
        if len(meshes[-1].faces) == 0:
            stats[b].occupancy_range = (float(probs[b].min()), float(probs[b].max()))
    return meshes, stats


def _grid(resolution: int, options: dict) -> tuple[_settings.GridSettings, dict]:
    """Keyword options -> (GridSettings, the ``fast`` options left: coarse_resolution, margin, dilate)."""
    names = {"mode": "extraction", "threshold": "threshold", "bound": "bound", "close": "close",
             "chunk_points": "chunk_points"}  # fmt: skip
    grid = {names[k]: options.pop(k) for k in list(options) if k in names}
    return _settings.GridSettings(resolution, **{"extraction": "dense", **grid}), options


def extract_meshes(
    decode: Callable[[Tensor], Tensor],
    batch: int,
    resolution: int = 128,
    *,
    device: str | torch.device | None = None,
    **options,
) -> list:
    """:func:`grid_meshes` with the grid settings as keywords (those of :func:`extract_mesh`),
    without the statistics."""
    grid, fast_options = _grid(resolution, options)
    return grid_meshes(decode, batch, grid, device=device, **fast_options)[0]


def extract_mesh(
    decode: Callable[[Tensor], Tensor],
    resolution: int = 128,
    *,
    device: str | torch.device | None = None,
    **options,
):
    """The mesh of one image's occupancy field.

    Args:
        decode: points ``[N, 3]`` in the normalised frame of the image -> occupancy logits ``[N]``.
        resolution: cells per axis (grid ``linspace(-bound, bound, resolution + 1)`` per axis).
        mode: ``dense`` (every grid point) or ``fast`` (coarse to fine, see the module docstring).
        threshold: probability level of the surface (after a sigmoid).
        bound: half-size of the grid cube.
        chunk_points: most points per ``decode`` call.
        device: where grid points are created and the grid is kept (default CPU).
        close: count the space outside the grid as empty (watertight meshes, see :func:`marching_cubes`).
        coarse_resolution, margin, dilate: ``fast`` only, see :func:`occupancy_grid`.

    ``mode`` (default ``dense``), ``threshold`` (0.5), ``bound`` (1.5), ``chunk_points`` (by device),
    ``close`` (True) and the ``fast`` options are keywords.

    Returns:
        A ``trimesh.Trimesh`` in the normalised frame (empty if the field never crosses the
        threshold).

    Example::

        latents = backend.encode(...)
        mesh = extract_mesh(lambda p: backend.decode(latents, p[None])[0], 128, mode="fast")
    """

    def batched(points: Tensor) -> Tensor:  # [1, N, 3] -> [1, N]
        return decode(points[0]).reshape(1, -1)

    return extract_meshes(batched, 1, resolution, device=device, **options)[0]
