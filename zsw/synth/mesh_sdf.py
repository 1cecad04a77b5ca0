"""Triangle meshes as shapes the procedural renderer can draw: a signed distance on a grid.

:class:`MeshShape` has the interface :class:`zsw.synth.render.SynthShape` names (``sdf``,
``sdf_part``, ``gradient``, ``bounds``, ``num_parts``, ``surface_points``, ``sdf_samples``), so
:func:`zsw.synth.render.render` and the procedural dataset job draw a mesh exactly as they draw an
analytic shape. It is built in the procedural object frame (:mod:`zsw.synth.sdf`: y up, centred on
the bounding box, longest side 1) by :func:`normalize` (``up="z"`` first turns a z-up mesh).

How the signed distance is made, on a grid of vertices with ``grid`` cells (``h``) along the
longest side of the padded box:

1. *Samples*: the centroid of every triangle no longer than 2 cells, and a lattice of one-cell
   spacing on larger ones; each remembers its triangle.
2. *Unsigned distance* ``u``: within 3 cells of the surface, the exact distance to the triangles of
   the 8 nearest samples (a KD-tree) -- on the meshes measured, within 0.02 cells of the distance
   to the whole mesh --, so the zero level set lies on the true triangles; farther, a Euclidean
   distance transform of the vertices nearest to a sample (within about a cell).
3. *Sign*: the vertices within ``0.8 h`` of the surface form a wall no 6-connected path can cross
   without touching: a grid edge that crosses the surface has an end within ``h / 2`` of it.
   Flooding the rest from the grid's border finds the outside; what the flood does not reach is
   inside. That is robust to self-intersections, overlapping parts, duplicate faces, flipped
   normals and cracks narrower than the wall. A wall vertex (and any query point) takes the side
   of the vertex a step of ``1.7 h`` beyond it, away from its closest surface point (another step
   from there if that lands on the wall too, as near an edge: an ascent of the distance).
4. *Open surfaces*: where the flood is outside on both sides of a sample's triangle (an open mesh
   the flood went into, or a part thinner than about 3.5 cells), the surface is a sheet with no
   inside, and the distance there becomes ``u - h``: a shell 2 cells thick that renders and labels
   as solid (its kink at the sheet rounded off in the grid, which would otherwise ripple the
   shading). :attr:`MeshShape.shell_fraction` says how much of the surface that is.

``sdf(p)`` interpolates the grid trilinearly (outside the grid: the distance to it plus the value
at the nearest grid point); ``sdf_samples`` and ``surface_points`` are exact: points on the true
triangles, distances to the true triangles, signs from step 3.

Example::

    shape = MeshShape.from_file("chair.glb", grid=192)        # normalised, y up
    d = shape.sdf(torch.rand(1000, 3) - 0.5)                  # [1000]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zsw.data.eval_sets import FOLDER_MESHES, read_mesh_file
from zsw.errors import InputError
from zsw.synth.mesh_colors import SurfaceColors, barycentric
from zsw.synth.sdf import query_points, sample_triangles, tetra_gradient

__all__ = ["MESH_SUFFIXES", "MeshShape", "load_mesh", "normalize"]

#: mesh files ``zsw synthesize meshes`` reads: those the eval folder format reads
MESH_SUFFIXES = FOLDER_MESHES
#: most surface samples per object; above it the lattice spacing grows (a denser mesh is not needed)
MAX_SAMPLES = 3_000_000
_BAND_CELLS = 3.0  # exact distances within this many cells of the surface
_SHELL_CELLS = 1.0  # half-thickness of an open surface's shell
_SPACING = 1.0  # lattice spacing on large triangles, in cells
_SMALL = 2.0  # triangles no longer than this many cells give their centroid alone
_K = 8  # candidate triangles per point: those of its nearest samples
_ROUND = 1.0  # the kink of an open surface's distance, rounded over this many cells
_WALL = 0.8  # the wall: vertices within this many cells of the surface


def load_mesh(
    path: str | Path, colors: bool = False
) -> tuple[np.ndarray, np.ndarray, SurfaceColors | None]:  # [V, 3] float64, [F, 3] int64, colours
    """Vertices and faces of the mesh file ``path``; a scene is concatenated with its node
    transforms applied. With ``colors``, the surface's own colours (textures, materials, vertex
    colours: :class:`~zsw.synth.mesh_colors.SurfaceColors`; None when it has none), else None.
    Unreadable, empty or faceless files (point clouds) are an :class:`InputError` naming the file."""
    path = Path(path)
    meshes = [m for m in read_mesh_file(path, parts=True) if len(getattr(m, "faces", ()))]
    if not meshes:
        raise InputError(f"the mesh {path} has no faces (a point cloud or lines): nothing to render")
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes])
    vertices = np.concatenate([np.asarray(m.vertices, dtype=np.float64) for m in meshes])
    faces = np.concatenate([np.asarray(m.faces, dtype=np.int64) + o for m, o in zip(meshes, offsets)])
    if not np.isfinite(vertices[faces]).all():
        raise InputError(f"the mesh {path} has non-finite vertices")
    return vertices, faces, SurfaceColors.from_meshes(meshes) if colors else None


def normalize(vertices: np.ndarray, faces: np.ndarray, up: str = "y", name: str = "mesh") -> np.ndarray:
    """``vertices`` in the procedural object frame: y up (``up="z"`` turns z-up to y-up, a right
    turn about x: ``(x, y, z) -> (x, z, -y)``), centred on the bounding box of the used vertices,
    longest side 1. A mesh of no extent or no area is an :class:`InputError`."""
    if up not in ("y", "z"):
        raise InputError(f"up must be y or z, got {up!r}")
    v = np.asarray(vertices, dtype=np.float64)
    if up == "z":
        v = np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)
    used = v[np.unique(faces)]
    lo, hi = used.min(0), used.max(0)
    extent = float((hi - lo).max())
    tri = v[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1).sum()
    if not extent > 0 or not area > 1e-12 * extent * extent:
        raise InputError(f"the mesh {name} is degenerate (size {extent:.3g}, area {area:.3g}): nothing to render")
    return (v - (lo + hi) / 2) / extent


class MeshShape:
    """A triangle mesh (already in the object frame: :func:`normalize`) with a grid signed
    distance; see the module docstring. One part (:attr:`num_parts` 1); ``colors``, the surface's
    own colours per face of ``faces`` (:class:`~zsw.synth.mesh_colors.SurfaceColors`), give
    :meth:`albedo` (None: the renderer's random colour)."""

    num_parts = 1

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, grid: int = 192, colors: SurfaceColors | None = None):
        if grid < 16:
            raise InputError(f"grid must be at least 16 cells, got {grid}")
        v = np.asarray(vertices, dtype=np.float64)
        tri = v[np.asarray(faces, dtype=np.int64)]
        cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        area = 0.5 * np.linalg.norm(cross, axis=-1)
        keep = area > 1e-14
        self.triangles = tri[keep]  # [F, 3, 3]
        self.colors = None if colors is None else colors.select(keep)
        self._area = area[keep]
        self._normals = cross[keep] / (2 * area[keep, None])
        used = self.triangles.reshape(-1, 3)
        self._tight = (used.min(0), used.max(0))
        pad = 0.02 + 3.0 / grid
        self.origin = self._tight[0] - pad
        self.step = float((self._tight[1] - self._tight[0]).max() + 2 * pad) / grid
        self.dims = tuple(int(n) for n in np.ceil((self._tight[1] + pad - self.origin) / self.step) + 1)
        self._build()

    @classmethod
    def from_file(cls, path: str | Path, up: str = "y", grid: int = 192, colors: bool = False) -> MeshShape:
        """The mesh file ``path``, normalised; with ``colors``, its own (:func:`load_mesh`)."""
        vertices, faces, surface = load_mesh(path, colors)
        return cls(normalize(vertices, faces, up, name=str(path)), faces, grid, surface)

    # ---- construction ---------------------------------------------------------------------

    def _samples(self) -> None:
        """Samples on every triangle (:attr:`samples` [M, 3], their triangles :attr:`sample_face`
        [M]): a triangle no longer than 2 cells gives its centroid; a larger one a lattice of
        :attr:`spacing` (a cell, more if there would be over :data:`MAX_SAMPLES`) along its two
        shorter edges, and points along the longest. They serve to find each point's candidate
        triangles (:meth:`_exact`), so every triangle has one."""
        tri = self.triangles
        length = np.linalg.norm(tri[:, [1, 2, 0]] - tri[:, [2, 0, 1]], axis=-1)  # edge opposite each corner
        corner = length.argmax(axis=1)  # the lattice starts at the corner opposite the longest edge
        f = np.arange(len(tri))
        a, b, c = tri[f, corner], tri[f, (corner + 1) % 3], tri[f, (corner + 2) % 3]
        lab, lac, lbc = length[f, (corner + 2) % 3], length[f, (corner + 1) % 3], length[f, corner]
        s = _SPACING * self.step
        for _ in range(16):
            m1, m2, m3 = (np.ceil(x / s).astype(np.int64) for x in (lab, lac, lbc))
            big = lbc > _SMALL * self.step
            counts = np.where(big, (m1 + 1) * (m2 + 1) + m3 + 1, 1)  # before dropping half the lattice
            if counts.sum() <= 2 * MAX_SAMPLES or not big.any():
                break
            s *= math.sqrt(counts.sum() / (2 * MAX_SAMPLES)) * 1.05  # huge triangles in a fine grid
        self.spacing = s
        owner = np.repeat(f, counts)
        k = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)  # index within a triangle
        grid = k < (m1 + 1)[owner] * (m2 + 1)[owner]
        u = np.where(grid, (k // (m2 + 1)[owner]) / m1[owner], 0.0)
        v = np.where(grid, (k % (m2 + 1)[owner]) / m2[owner], 0.0)
        edge = ~grid  # the longest edge, b -> c
        w = (k - (m1 + 1)[owner] * (m2 + 1)[owner]) / m3[owner]
        u, v = np.where(edge, 1 - w, u), np.where(edge, w, v)
        small = ~big[owner]
        u, v = np.where(small, 1 / 3, u), np.where(small, 1 / 3, v)
        keep = u + v <= 1 + 1e-9  # the lattice's half past the longest edge is dropped
        owner, u, v = owner[keep], u[keep], v[keep]
        ao = a[owner]
        self.samples = ao + u[:, None] * (b[owner] - ao) + v[:, None] * (c[owner] - ao)
        self.sample_face = owner
        # how far a sample's triangle reaches from it: no point of the triangle is farther
        corners = tri[owner] - self.samples[:, None, :]
        self._reach = np.linalg.norm(corners, axis=-1).max(axis=1) + 1e-9

    def _exact(self, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(distance [N], closest surface point [N, 3], nearest sample [N], the triangle of the
        closest point [N]) over the triangles of the ``k`` nearest samples of each point. A
        triangle is skipped where it came before, or where its sample is farther than the best
        distance so far plus the sample's reach over its triangle."""
        from trimesh.triangles import closest_point

        dist = np.full(len(points), np.inf)
        foot = np.zeros_like(points)
        nearest = np.zeros(len(points), dtype=np.int64)
        owner = np.zeros(len(points), dtype=np.int64)
        for lo in range(0, len(points), 1 << 17):
            p = points[lo : lo + (1 << 17)]
            gap, idx = self._tree.query(p, k=k)
            gap, idx = gap.reshape(len(p), k), idx.reshape(len(p), k)
            nearest[lo : lo + len(p)] = idx[:, 0]
            faces = self.sample_face[idx]
            best_d = np.full(len(p), np.inf)
            best_f = np.zeros_like(p)
            best_t = np.zeros(len(p), dtype=np.int64)
            for j in range(k):
                todo = gap[:, j] - self._reach[idx[:, j]] < best_d
                if j:  # a triangle met before
                    todo &= ~(faces[:, j : j + 1] == faces[:, :j]).any(axis=1)
                rows = np.nonzero(todo)[0]
                f = closest_point(self.triangles[faces[rows, j]], p[rows])
                d = np.linalg.norm(p[rows] - f, axis=1)
                better = d < best_d[rows]
                best_d[rows[better]], best_f[rows[better]] = d[better], f[better]
                best_t[rows[better]] = faces[rows[better], j]
            dist[lo : lo + len(p)], foot[lo : lo + len(p)] = best_d, best_f
            owner[lo : lo + len(p)] = best_t
        return dist, foot, nearest, owner

    def _label_at(self, points: np.ndarray) -> np.ndarray:  # [N] int8: 1 outside, -1 inside, 0 wall
        ijk = np.rint((points - self.origin) / self.step).astype(np.int64)
        inside_grid = ((ijk >= 0) & (ijk < np.array(self.dims))).all(axis=1)
        ijk = np.clip(ijk, 0, np.array(self.dims) - 1)
        label = self._labels[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        return np.where(inside_grid, label, 1).astype(np.int8)

    def _side(self, points: np.ndarray, foot: np.ndarray) -> np.ndarray:  # [N] int8
        """The flood label a step beyond each point, away from its closest surface point ``foot``:
        1 outside, -1 inside, 0 undecided.

        A step that lands on the wall (near an edge, where another face is as close, or in a thin
        part) is followed by another from there, away from that point's own closest surface point:
        an ascent of the distance that ends off the wall. Points still on it after three steps
        are undecided."""
        reach = self.threshold + 0.9 * self.step
        side = np.zeros(len(points), dtype=np.int8)
        todo = np.arange(len(points))
        for step in range(3):
            away = points - foot
            norm = np.linalg.norm(away, axis=1, keepdims=True)
            points = points + np.where(norm > 1e-12, away / np.maximum(norm, 1e-300), 0.0) * reach
            side[todo] = self._label_at(points)
            left = side[todo] == 0
            todo, points = todo[left], points[left]
            if not len(todo) or step == 2:
                break
            foot = self._exact(points, k=4)[1]
        return side

    def _build(self) -> None:
        from scipy import ndimage
        from scipy.spatial import cKDTree

        self._samples()
        self._tree = cKDTree(self.samples)
        h, dims = self.step, np.array(self.dims)
        occupied = np.zeros(self.dims, dtype=bool)
        ijk = np.clip(np.rint((self.samples - self.origin) / h).astype(np.int64), 0, dims - 1)
        occupied[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = True
        cells = ndimage.distance_transform_edt(~occupied).astype(np.float32)
        u = cells * np.float32(h)
        band = np.nonzero(cells <= _BAND_CELLS)
        del cells, occupied
        band_points = self.origin + np.stack(band, axis=1) * h
        dist, foot, nearest, _ = self._exact(band_points, k=_K)
        u[band] = dist
        # the wall, and the flood from the border through the rest
        self.threshold = _WALL * h
        wall = u <= self.threshold
        regions, _ = ndimage.label(~wall)
        border = np.unique(
            np.concatenate([regions[[0, -1]].ravel(), regions[:, [0, -1]].ravel(), regions[:, :, [0, -1]].ravel()])
        )
        outside = np.isin(regions, border[border > 0])
        self._labels = np.where(wall, 0, np.where(outside, 1, -1)).astype(np.int8)
        self.has_inside = bool((self._labels == -1).any())
        del regions, outside
        # open surfaces: a sample with the outside on both sides of its triangle
        # (probes start a little inside the sample's triangle: one from a point on an edge would run
        # along the neighbouring face and never leave the wall; an undecided back side is a part too
        # thin to hold a vertex off the wall)
        normal = self._normals[self.sample_face]
        to_centre = self.triangles[self.sample_face].mean(axis=1) - self.samples
        length = np.linalg.norm(to_centre, axis=1, keepdims=True)
        start = self.samples + to_centre * np.minimum(0.2, 0.25 * h / np.maximum(length, 1e-12))
        front, back = self._side(start, start - normal), self._side(start, start + normal)
        self.sample_sheet = ((front == 1) & (back >= 0)) | ((back == 1) & (front >= 0))
        self.shell_fraction = float(self.sample_sheet.mean())
        self.shell = _SHELL_CELLS * h
        # signs: flooded vertices from their region, wall vertices from a step beyond them
        sign = self._labels.astype(np.float32)
        in_wall = wall[band]
        sign[tuple(b[in_wall] for b in band)] = np.where(self._side(band_points[in_wall], foot[in_wall]) < 0, -1, 1)
        vol = sign * u
        sheet = self.sample_sheet[nearest] & (sign[band] > 0)
        at = tuple(b[sheet] for b in band)
        a = _ROUND * h  # the kink of |distance| at the sheet rounded off: trilinear interpolation of a
        vol[at] = np.sqrt(dist[sheet] ** 2 + a * a) - math.sqrt(self.shell**2 + a * a)  # kink makes ripples
        self.volume = torch.from_numpy(np.ascontiguousarray(vol.transpose(2, 1, 0)))[None, None]  # [1, 1, z, y, x]
        self._lo = torch.as_tensor(self.origin, dtype=torch.float32)
        self._hi = torch.as_tensor(self.origin + (dims - 1) * h, dtype=torch.float32)

    # ---- the SynthShape interface ----------------------------------------------------------

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The mesh's bounding box plus 0.01 (as :meth:`zsw.synth.sdf.Shape.bounds` after
        normalisation)."""
        return self._tight[0] - 0.01, self._tight[1] + 0.01

    def sdf(self, p: Tensor) -> Tensor:  # [N, 3] -> [N]
        """Trilinear interpolation of the grid; outside it, the distance to it is added."""
        p = p.float()
        inside = torch.minimum(torch.maximum(p, self._lo), self._hi)
        g = (inside - self._lo) / (self._hi - self._lo) * 2 - 1  # x, y, z in [-1, 1]
        d = torch.nn.functional.grid_sample(
            self.volume, g.reshape(1, -1, 1, 1, 3), mode="bilinear", padding_mode="border", align_corners=True
        ).reshape(-1)
        return d + (p - inside).norm(dim=-1)

    def sdf_part(self, p: Tensor) -> tuple[Tensor, Tensor]:  # [N], [N] long
        return self.sdf(p), torch.zeros(p.shape[0], dtype=torch.long)

    def albedo(self, p: Tensor) -> Tensor | None:  # [N, 3] -> [N, 3] linear RGB
        """The surface's own colour at the points ``p`` (on or near it: the colour of the closest
        point of the true triangles), NaN where its triangle has none; None when the mesh has no
        colours (:attr:`colors`)."""
        if self.colors is None:
            return None
        if p.shape[0] == 0:
            return p.new_zeros(0, 3)
        points = p.detach().double().cpu().numpy()
        _, foot, _, face = self._exact(points, k=_K)
        rgb = self.colors.sample(face, barycentric(self.triangles[face], foot))
        return torch.from_numpy(rgb).to(p.device, torch.float32)

    def gradient(self, p: Tensor) -> Tensor:  # [N, 3] unit normals
        """Tetrahedron finite differences over 3/4 of a cell (the trilinear field's own gradient
        jumps from cell to cell: shading would show the grid)."""
        return tetra_gradient(self.sdf, p, 0.75 * self.step)

    def surface_points(self, count: int, rng: np.random.Generator, resolution: int | None = None) -> np.ndarray:
        """``count`` points on the true triangles, uniform by area (``resolution`` is unused: the
        procedural shapes' marching-cubes resolution)."""
        return sample_triangles(self.triangles, self._area, count, rng)

    def exact_sdf(self, points: np.ndarray) -> np.ndarray:  # [N, 3] -> [N]
        """Signed distance to the true triangles within a few cells of the surface and outside the
        grid (sign from the flood, open surfaces' shells offset); elsewhere the grid's (within about
        a cell: the distance transform's)."""
        points = np.asarray(points, dtype=np.float64)
        out = self.sdf(torch.as_tensor(points, dtype=torch.float32)).double().numpy()
        lo, hi = self._lo.double().numpy(), self._hi.double().numpy()
        beyond = ((points < lo) | (points > hi)).any(axis=1)  # the grid's value adds up two legs there
        near = (np.abs(out) <= _BAND_CELLS * self.step) | beyond
        dist, foot, nearest, _ = self._exact(points[near], k=2 * _K)
        side = np.where(self._side(points[near], foot) < 0, -1, 1)  # undecided: outside
        sheet = self.sample_sheet[nearest] & (side > 0)
        out[near] = np.where(sheet, dist - self.shell, side * dist)
        return out

    def sdf_samples(
        self,
        rng: np.random.Generator,
        near: int = 24576,
        uniform: int = 8192,
        sigmas: tuple[float, ...] = (0.005, 0.02),
        bound: float = 0.75,
        resolution: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:  # [near + uniform, 3], [near + uniform]
        """Query points and their signed distance, as :meth:`zsw.synth.sdf.Shape.sdf_samples` draws
        them: ``near`` around the surface (Gaussian offsets), ``uniform`` in ``[-bound, bound]^3``."""
        pts = query_points(self.surface_points(near, rng), rng, uniform, sigmas, bound).astype(np.float32)
        return pts, self.exact_sdf(pts.astype(np.float64)).astype(np.float32)
