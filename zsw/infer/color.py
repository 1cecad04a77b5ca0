"""Vertex colours from the photo.

A vertex is *seen* when, from the input camera, it projects inside the image and inside the
predicted visible mask, and nothing of the mesh lies in front of it (its depth is within ``tol`` of
the mesh's own z-buffer at its pixel, rendered with :func:`zsw.infer.preview._rasterize`). Seen
vertices take the photo's bilinear colour there. Every other vertex takes the colour of the seen
vertex nearest to it *over the mesh surface* (multi-source Dijkstra along the mesh edges, so the
back of a mug takes the colour of the mug's visible side, not of the handle seen through it);
vertices of parts with no seen vertex take the Euclidean-nearest seen colour. No seen vertex at all
leaves the mesh uniformly clay-coloured.
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


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:  # [H, W, 3] -> [P, 3] float
    H, W = image.shape[:2]
    u = np.clip(u, 0, W - 1)
    v = np.clip(v, 0, H - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    u1, v1 = np.minimum(u0 + 1, W - 1), np.minimum(v0 + 1, H - 1)
    a, b = (u - u0)[:, None], (v - v0)[:, None]
    img = image.astype(np.float32)
    top = img[v0, u0] * (1 - a) + img[v0, u1] * a
    bottom = img[v1, u0] * (1 - a) + img[v1, u1] * a
    return top * (1 - b) + bottom * b


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


def photo_colors(
    vertices: np.ndarray,  # [V, 3] camera frame (x right, y down, z forward)
    faces: np.ndarray,  # [F, 3]
    image: np.ndarray,  # [S, S, 3] uint8: the model input
    intrinsics: np.ndarray,  # [3, 3] pixels of ``image``
    visible_mask: np.ndarray,  # [S, S] bool
    tol: float = 0.02,  # visibility slack, as a fraction of the mesh's bounding-box diagonal
) -> VertexColors:
    """Colours of a mesh's vertices from the photo it was reconstructed from (module docstring)."""
    from scipy.ndimage import minimum_filter
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from scipy.spatial import cKDTree

    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    V = len(vertices)
    rgb = np.tile(CLAY, (V, 1))
    seen = np.zeros(V, dtype=bool)
    if V == 0 or len(faces) == 0:
        return VertexColors(rgb, seen)
    H, W = image.shape[:2]
    z = vertices[:, 2]
    front = z > 1e-9
    zs = np.where(front, z, 1.0)
    u = intrinsics[0, 0] * vertices[:, 0] / zs + intrinsics[0, 2]
    v = intrinsics[1, 1] * vertices[:, 1] / zs + intrinsics[1, 2]
    px, py = np.rint(u).astype(np.int64), np.rint(v).astype(np.int64)
    inside = front & (px >= 0) & (px < W) & (py >= 0) & (py < H)
    pxc, pyc = np.clip(px, 0, W - 1), np.clip(py, 0, H - 1)
    zbuf = minimum_filter(_zbuffer(vertices, faces, intrinsics, (H, W)), size=3, mode="nearest")
    diag = float(np.linalg.norm(vertices.max(0) - vertices.min(0))) or 1.0
    seen = inside & visible_mask[pyc, pxc] & (z <= zbuf[pyc, pxc] + tol * diag)
    if not seen.any():
        return VertexColors(rgb, seen)
    colors = np.zeros((V, 3), dtype=np.float32)
    colors[seen] = _bilinear(image, u[seen], v[seen])
    # the rest: nearest seen vertex along the mesh's edges
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    lengths = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1) + 1e-12
    graph = coo_matrix((lengths, (edges[:, 0], edges[:, 1])), shape=(V, V)).tocsr()
    sources = np.flatnonzero(seen)
    _, _, nearest = dijkstra(graph, directed=False, indices=sources, return_predecessors=True, min_only=True)
    reached = nearest >= 0
    colors[reached & ~seen] = colors[nearest[reached & ~seen]]
    stranded = ~reached & ~seen
    if stranded.any():  # parts without any seen vertex: the Euclidean-nearest seen colour
        _, idx = cKDTree(vertices[sources]).query(vertices[stranded])
        colors[stranded] = colors[sources[idx]]
    rgb = np.clip(np.rint(colors), 0, 255).astype(np.uint8)
    return VertexColors(rgb, seen)
