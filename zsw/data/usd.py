"""USD meshes (``.usdz .usd .usda .usdc``): a phone's object scan (Apple's Object Capture and
Reality Composer write USDZ) as a true shape for ``zsw eval`` or an object for ``zsw synthesize
meshes``, read with Pixar's ``usd-core`` (the ``usd`` extra).

Every visible mesh at the stage's first time (its default values, or an animation's first frame)
and of the rendered purpose (not guides or proxies), instance proxies included, is placed by its
world transform, its polygons cut into triangle fans (left-handed meshes keep their outward side);
a Z-up stage is turned Y-up, ``(x, y, z) -> (x, z, -y)``, the frame glTF and zsw's meshes use.
Units are left as they are: every use of a true shape normalises it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zsw.errors import InputError

__all__ = ["USD_SUFFIXES", "read_usd"]

USD_SUFFIXES = (".usdz", ".usd", ".usda", ".usdc")


def read_usd(path: Path):
    """The visible meshes of the USD file ``path`` as one ``trimesh.Trimesh`` (see the module)."""
    import trimesh

    try:
        from pxr import Tf, Usd, UsdGeom
    except ImportError:
        raise InputError(
            f"cannot read the mesh {path}: a USD file, which needs usd-core: pip install 'zsw[usd]' "
            "(or export it as .glb, .obj or .ply)"
        ) from None
    try:
        stage = Usd.Stage.Open(str(path))
    except Tf.ErrorException as e:
        raise InputError(f"cannot read the mesh {path}: {_usd_reason(e)}") from None
    if stage is None:
        raise InputError(f"cannot read the mesh {path}: not a USD file")
    time = Usd.TimeCode.EarliestTime()  # the default value, or an animated stage's first frame
    cache = UsdGeom.XformCache(time)
    shown = (UsdGeom.Tokens.default_, UsdGeom.Tokens.render)
    vertices, faces, offset = [], [], 0
    for prim in Usd.PrimRange(stage.GetPseudoRoot(), Usd.TraverseInstanceProxies()):
        if not prim.IsA(UsdGeom.Mesh):
            continue
        look = UsdGeom.Imageable(prim)
        if look.ComputeVisibility(time) == UsdGeom.Tokens.invisible or look.ComputePurpose() not in shown:
            continue
        mesh = UsdGeom.Mesh(prim)
        points = np.asarray(mesh.GetPointsAttr().Get(time) or [], dtype=np.float64).reshape(-1, 3)
        counts = np.asarray(mesh.GetFaceVertexCountsAttr().Get(time) or [], dtype=np.int64)
        indices = np.asarray(mesh.GetFaceVertexIndicesAttr().Get(time) or [], dtype=np.int64)
        if not len(points) or not len(counts):
            continue
        named = len(indices) == 0 or 0 <= indices.min() <= indices.max() < len(points)
        if counts.min() < 0 or counts.sum() != len(indices) or not named:
            raise InputError(
                f"cannot read the mesh {path}: {prim.GetPath()} has faces that name vertices it does not have"
            )
        triangles = fan_triangles(counts, indices)
        if mesh.GetOrientationAttr().Get(time) == UsdGeom.Tokens.leftHanded:
            triangles = triangles[:, ::-1]
        world = np.asarray(cache.GetLocalToWorldTransform(prim), dtype=np.float64)  # row vectors: p M
        vertices.append(points @ world[:3, :3] + world[3, :3])
        faces.append(triangles + offset)
        offset += len(points)
    if not vertices:
        raise InputError(f"cannot read the mesh {path}: no visible mesh in it")
    v = np.concatenate(vertices)
    if UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z:
        v = np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)
    return trimesh.Trimesh(v, np.concatenate(faces), process=False)


def fan_triangles(counts: np.ndarray, indices: np.ndarray) -> np.ndarray:  # [P], [sum P] -> [T, 3]
    """Polygons of ``counts[p]`` vertices (listed one after another in ``indices``) as triangle
    fans from each polygon's first vertex; polygons of fewer than 3 vertices give none."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n = np.maximum(counts - 2, 0)  # triangles per polygon
    polygon = np.repeat(np.arange(len(counts)), n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + 1  # 1 .. count - 2 within each polygon
    first = starts[polygon]
    return np.stack([indices[first], indices[first + k], indices[first + k + 1]], axis=1)


def _usd_reason(e: Exception) -> str:
    """The quoted part of a USD error (``... : 'Failed to open layer @x.usdz@'``), without the C++
    location."""
    text = str(e).strip()
    quoted = text.rsplit(" : ", 1)[-1].strip().strip("'")
    return quoted.splitlines()[0] if quoted else "not a USD file"
