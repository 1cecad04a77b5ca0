"""Vertex colours from the photo.

Three kinds of vertex, in this order of trust:

1. **Seen**: from the input camera the vertex projects inside the image and inside the predicted
   visible mask shrunk by ``erode`` pixels (a predicted mask spills onto the background at its
   rim: white streaks otherwise), and nothing of the mesh lies in front of it (its depth is within
   ``tol`` of the mesh's own z-buffer at its pixel, rendered with
   :func:`zsw.infer.preview._rasterize`). It takes the photo's bilinear colour there, from the
   pixels of the shrunk mask only.
2. **Behind the object's image**: the vertex is not seen but projects onto the object in the photo
   (within a few pixels of the shrunk mask): the hidden back of a bottle, the far side of a box, a
   rim vertex. It takes the photo's colour there *blurred within the mask* (a mask-normalised
   Gaussian of ``blur`` pixels, so no background or occluder colour mixes in and the front's
   details -- eyes, print -- are not copied onto the back): the back of a yellow hydrant is
   yellow, not the streaks of its outline.
3. **The rest** (parts hidden by an occluder or outside the silhouette) take the colour of the
   coloured vertex nearest to them *over the mesh surface* (multi-source Dijkstra along the mesh
   edges); vertices of parts with no coloured vertex take the Euclidean-nearest one.

No seen vertex at all leaves the mesh uniformly clay-coloured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from zsw.infer import settings as _settings

__all__ = ["VertexColors", "photo_colors", "COLOR_MODES"]

COLOR_MODES = _settings.COLORS
CLAY = np.array([199, 189, 176], dtype=np.uint8)


@dataclass
class VertexColors:
    rgb: np.ndarray  # [V, 3] uint8
    seen: np.ndarray  # [V] bool: coloured directly from the photo


def _bilinear(
    image: np.ndarray, u: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:  # [H, W, 3] -> [P, 3] float
    """The image at pixel coordinates ``(u, v)``, interpolated bilinearly; with ``mask`` ``[H, W]``
    only the neighbours inside it count (weights renormalised), so nothing outside bleeds in.
    A point with no neighbour in ``mask`` takes its nearest pixel."""
    H, W = image.shape[:2]
    u = np.clip(u, 0, W - 1)
    v = np.clip(v, 0, H - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    u1, v1 = np.minimum(u0 + 1, W - 1), np.minimum(v0 + 1, H - 1)
    a, b = u - u0, v - v0
    corners = [(v0, u0, (1 - a) * (1 - b)), (v0, u1, a * (1 - b)), (v1, u0, (1 - a) * b), (v1, u1, a * b)]
    if mask is not None:
        corners = [(y, x, w * mask[y, x]) for y, x, w in corners]
    total = sum(w for _, _, w in corners)
    img = image.astype(np.float32)
    out = sum(img[y, x] * w[:, None] for y, x, w in corners) / np.maximum(total, 1e-12)[:, None]
    none = total <= 0
    if none.any():
        out[none] = img[np.rint(v[none]).astype(int), np.rint(u[none]).astype(int)]
    return out


@dataclass
class Projection:
    """Points seen through the input camera: pixel coordinates, their nearest pixel (clipped to the
    image) and whether the point lies in front of the camera and inside the image."""

    u: np.ndarray  # [P] float
    v: np.ndarray  # [P] float
    px: np.ndarray  # [P] int, clipped to [0, W - 1]
    py: np.ndarray  # [P] int, clipped to [0, H - 1]
    inside: np.ndarray  # [P] bool


def project(points: np.ndarray, intrinsics: np.ndarray, size: tuple[int, int]) -> Projection:
    """``points [P, 3]`` (camera frame) through ``intrinsics`` onto an image of ``size`` (H, W)."""
    H, W = size
    z = points[:, 2]
    front = z > 1e-9
    zs = np.where(front, z, 1.0)
    u = intrinsics[0, 0] * points[:, 0] / zs + intrinsics[0, 2]
    v = intrinsics[1, 1] * points[:, 1] / zs + intrinsics[1, 2]
    px, py = np.rint(u).astype(np.int64), np.rint(v).astype(np.int64)
    inside = front & (px >= 0) & (px < W) & (py >= 0) & (py < H)
    return Projection(u, v, np.clip(px, 0, W - 1), np.clip(py, 0, H - 1), inside)


def shrunk_mask(visible_mask: np.ndarray, erode: int = 1) -> np.ndarray:  # [H, W] bool
    """The visible mask without its rim of ``erode`` pixels (a predicted mask spills onto the
    background there); the whole mask when it is thinner than that."""
    from scipy.ndimage import binary_erosion

    core = binary_erosion(visible_mask, iterations=erode) if erode > 0 and visible_mask.any() else visible_mask
    return core if core.any() else visible_mask


def _zbuffer(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Depth of the nearest surface per pixel ``[H, W]`` (inf where the mesh is absent)."""
    from zsw.infer.preview import _rasterize

    v = torch.as_tensor(vertices, dtype=torch.float32)
    f = torch.as_tensor(faces, dtype=torch.int64)
    face_id, bary = _rasterize(v, f, torch.as_tensor(K, dtype=torch.float32), size[0], size[1])
    z = torch.full(face_id.shape, float("inf"))
    hit = face_id >= 0
    if hit.any():
        z[hit] = (bary[hit] * v[f[face_id[hit]]][..., 2]).sum(-1)
    return z.numpy()


def _masked_blur(image: np.ndarray, mask: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo blurred inside ``mask`` only (mask-normalised Gaussian), ``[H, W, 3]`` float, and
    the blurred mask ``[H, W]`` in [0, 1]: how much of a pixel's neighbourhood is object."""
    from scipy.ndimage import gaussian_filter

    weight = gaussian_filter(mask.astype(np.float32), sigma, mode="constant")
    masked = image.astype(np.float32) * mask[..., None]
    blurred = np.stack([gaussian_filter(masked[..., c], sigma, mode="constant") for c in range(3)], axis=-1)
    return blurred / np.maximum(weight, 1e-6)[..., None], weight


def photo_colors(
    vertices: np.ndarray,  # [V, 3] camera frame (x right, y down, z forward)
    faces: np.ndarray,  # [F, 3]
    image: np.ndarray,  # [S, S, 3] uint8: the model input
    intrinsics: np.ndarray,  # [3, 3] pixels of ``image``
    visible_mask: np.ndarray,  # [S, S] bool
    tol: float = 0.02,  # visibility slack, as a fraction of the mesh's bounding-box diagonal
    erode: int = 1,  # pixels taken off the mask's rim before sampling the photo
    blur: float = 4.0,  # Gaussian sigma in pixels of the colours behind the object's image (0: skip step 2)
    reach: float = 0.05,  # least share of object in a pixel's blurred neighbourhood to colour through it
) -> VertexColors:
    """Colours of a mesh's vertices from the photo it was reconstructed from (module docstring)."""
    from scipy.ndimage import minimum_filter
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from scipy.spatial import cKDTree

    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    visible_mask = np.asarray(visible_mask, dtype=bool)
    V = len(vertices)
    rgb = np.tile(CLAY, (V, 1))
    seen = np.zeros(V, dtype=bool)
    if V == 0 or len(faces) == 0 or not visible_mask.any():
        return VertexColors(rgb, seen)
    H, W = image.shape[:2]
    core = shrunk_mask(visible_mask, erode)
    z = vertices[:, 2]
    proj = project(vertices, intrinsics, (H, W))
    u, v, pxc, pyc, inside = proj.u, proj.v, proj.px, proj.py, proj.inside
    zbuf = minimum_filter(_zbuffer(vertices, faces, intrinsics, (H, W)), size=3, mode="nearest")
    diag = float(np.linalg.norm(vertices.max(0) - vertices.min(0))) or 1.0
    seen = inside & core[pyc, pxc] & (z <= zbuf[pyc, pxc] + tol * diag)
    if not seen.any():
        return VertexColors(rgb, seen)
    colors = np.zeros((V, 3), dtype=np.float32)
    colors[seen] = _bilinear(image, u[seen], v[seen], core)
    colored = seen.copy()
    if blur > 0:  # behind the object's image: the photo blurred within the mask at the vertex's pixel
        blurred, weight = _masked_blur(image, core, blur)
        behind = ~seen & inside & (weight[pyc, pxc] >= reach)
        colors[behind] = _bilinear(blurred, u[behind], v[behind])
        colored |= behind
    # the rest: the nearest coloured vertex along the mesh's edges
    sources = np.flatnonzero(colored)
    rest = ~colored
    if rest.any():
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        lengths = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1) + 1e-12
        graph = coo_matrix((lengths, (edges[:, 0], edges[:, 1])), shape=(V, V)).tocsr()
        _, _, nearest = dijkstra(graph, directed=False, indices=sources, return_predecessors=True, min_only=True)
        reached = rest & (nearest >= 0)
        colors[reached] = colors[nearest[reached]]
        stranded = rest & (nearest < 0)
        if stranded.any():  # parts without any coloured vertex: the Euclidean-nearest coloured one
            _, idx = cKDTree(vertices[sources]).query(vertices[stranded])
            colors[stranded] = colors[sources[idx]]
    rgb = np.clip(np.rint(colors), 0, 255).astype(np.uint8)
    return VertexColors(rgb, seen)
