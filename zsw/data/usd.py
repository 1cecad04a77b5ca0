"""USD meshes (``.usdz .usd .usda .usdc``): a phone's object scan (Apple's Object Capture and
Reality Composer write USDZ) as a true shape for ``zsw eval`` or an object for ``zsw synthesize
meshes``, read with Pixar's ``usd-core`` (the ``usd`` extra).

Every visible mesh at the stage's first time (its default values, or an animation's first frame)
and of the rendered purpose (not guides or proxies), instance proxies included, is placed by its
world transform, its polygons cut into triangle fans (left-handed meshes keep their outward side);
a Z-up stage is turned Y-up, ``(x, y, z) -> (x, z, -y)``, the frame glTF and zsw's meshes use.
Units are left as they are: every use of a true shape normalises it. For ``zsw synthesize
meshes`` each mesh also brings its colours (``read_usd(path, parts=True)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zsw.errors import InputError

__all__ = ["USD_SUFFIXES", "read_usd"]

USD_SUFFIXES = (".usdz", ".usd", ".usda", ".usdc")


def read_usd(path: Path, parts: bool = False):
    """The visible meshes of the USD file ``path`` as one ``trimesh.Trimesh`` (see the module), or
    with ``parts`` a list of them, one per mesh prim, each with its colours as a trimesh visual
    (:func:`_colored_part`: a UsdPreviewSurface's diffuse texture or colour, else the
    ``displayColor`` primvar) for ``zsw synthesize meshes``."""
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
    z_up = UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z
    meshes = []
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
        left = mesh.GetOrientationAttr().Get(time) == UsdGeom.Tokens.leftHanded
        world = np.asarray(cache.GetLocalToWorldTransform(prim), dtype=np.float64)  # row vectors: p M
        placed = points @ world[:3, :3] + world[3, :3]
        if z_up:
            placed = np.stack([placed[:, 0], placed[:, 2], -placed[:, 1]], axis=1)
        polygons = _Polygons(counts, indices, left)
        part = None
        if parts:
            try:
                part = _colored_part(path, mesh, time, placed, polygons)
            except Exception:  # colours are never worth failing the mesh: drawn without them
                part = None
        meshes.append(part or trimesh.Trimesh(placed, polygons.triangles(indices), process=False))
    if not meshes:
        raise InputError(f"cannot read the mesh {path}: no visible mesh in it")
    return meshes if parts else trimesh.util.concatenate(meshes)


class _Polygons:
    """A mesh prim's polygons (``counts`` vertices each, listed in ``indices``) as triangles, their
    winding turned for a left-handed prim (so that its outward side stays outward)."""

    def __init__(self, counts: np.ndarray, indices: np.ndarray, left: bool):
        self.counts, self.indices, self.left = counts, indices, left

    def triangles(self, corners: np.ndarray) -> np.ndarray:  # [sum counts] vertex of each corner -> [T, 3]
        fans = fan_triangles(self.counts, corners)
        return fans[:, ::-1] if self.left else fans


def _colored_part(path: Path, mesh, time, points: np.ndarray, polygons: _Polygons):
    """One mesh prim (``points`` placed) as a ``trimesh.Trimesh`` with its colours: the diffuse
    colour of its bound UsdPreviewSurface -- a ``UsdUVTexture`` read at the primvar its
    ``UsdPrimvarReader_float2`` names (the image read from the USDZ package or beside the file), or
    a constant colour -- else its ``displayColor`` primvar. Per-corner values (``faceVarying``)
    give each polygon corner its own vertex. Nothing readable: no colours."""
    import trimesh
    from pxr import UsdGeom

    diffuse, texture, varname = _diffuse(path, mesh)
    values, how = None, None
    name, width = (varname or "st", 2) if texture is not None else ("displayColor", 3)
    primvar = UsdGeom.PrimvarsAPI(mesh).GetPrimvar(name)
    if diffuse is None and primvar and primvar.HasValue():
        values = np.asarray(primvar.ComputeFlattened(time) or [], dtype=np.float64).reshape(-1, width)
        how = primvar.GetInterpolation()
    indices, counts = polygons.indices, polygons.counts
    corner = how == UsdGeom.Tokens.faceVarying and len(values) == len(indices)
    if corner:  # a vertex per polygon corner
        part = trimesh.Trimesh(points[indices], polygons.triangles(np.arange(len(indices))), process=False)
    else:
        part = trimesh.Trimesh(points, polygons.triangles(indices), process=False)
    per_vertex = corner or (how == UsdGeom.Tokens.vertex and len(values) == len(points))
    if texture is not None:
        if per_vertex:  # else: a texture without usable uv gives no colours
            from trimesh.visual.material import PBRMaterial

            part.visual = trimesh.visual.TextureVisuals(uv=values, material=PBRMaterial(baseColorTexture=texture))
    elif diffuse is not None:
        part.visual.face_colors = np.append(_srgb8(diffuse), 255)
    elif per_vertex:
        part.visual.vertex_colors = np.concatenate([_srgb8(values), np.full((len(values), 1), 255, np.uint8)], 1)
    elif how == UsdGeom.Tokens.constant and len(values):
        part.visual.face_colors = np.append(_srgb8(values[0]), 255)
    elif how == UsdGeom.Tokens.uniform and len(values) == len(counts):
        per_face = np.repeat(_srgb8(values), np.maximum(counts - 2, 0), axis=0)
        part.visual.face_colors = np.concatenate([per_face, np.full((len(per_face), 1), 255, np.uint8)], 1)
    return part


def _srgb8(linear: np.ndarray) -> np.ndarray:
    """USD's linear colours as the 8-bit sRGB that trimesh visuals hold, with the 2.2 gamma zsw's
    mesh colours read them back with (:mod:`zsw.synth.mesh_colors`), so a colour survives both."""
    return (np.clip(np.asarray(linear, dtype=np.float64), 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)


def _diffuse(path: Path, mesh) -> tuple[np.ndarray | None, object | None, str | None]:
    """(constant diffuse colour [3] linear or None, the diffuse texture as a PIL image or None, the
    texture's uv primvar name or None) of the UsdPreviewSurface bound to ``mesh``; anything it cannot
    follow (another shader, a missing image) is None."""
    from pxr import UsdShade

    material = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()[0]
    if not material:
        return None, None, None
    surface = material.ComputeSurfaceSource()[0]
    if not surface or surface.GetIdAttr().Get() != "UsdPreviewSurface" or not surface.GetInput("diffuseColor"):
        return None, None, None
    diffuse = surface.GetInput("diffuseColor")
    source = diffuse.GetConnectedSource() if diffuse.HasConnectedSource() else None
    if source is None:
        value = diffuse.Get()
        return (None if value is None else np.asarray(value, dtype=np.float64)[:3]), None, None
    texture = UsdShade.Shader(source[0].GetPrim())
    if texture.GetIdAttr().Get() != "UsdUVTexture" or not texture.GetInput("file"):
        return None, None, None
    asset = texture.GetInput("file").Get()
    image = _image(path, asset.resolvedPath or asset.path) if asset is not None else None
    varname = None
    st = texture.GetInput("st")
    if st and st.HasConnectedSource():
        reader = UsdShade.Shader(st.GetConnectedSource()[0].GetPrim())
        name = reader.GetInput("varname").Get() if reader.GetInput("varname") else None
        varname = str(name) if name else None
    return None, image, varname


def _image(path: Path, resolved: str):
    """The image a texture's asset path names: inside a USDZ package (``pkg.usdz[name.png]``) or a
    file; None when it cannot be read."""
    import io
    import re
    import zipfile

    from PIL import Image

    try:
        packaged = re.fullmatch(r"(.*\.usdz)\[(.*)\]", resolved or "", flags=re.IGNORECASE)
        if packaged:
            with zipfile.ZipFile(packaged.group(1)) as package:
                data = package.read(packaged.group(2))
        else:
            file = Path(resolved)
            data = (file if file.is_absolute() else path.parent / file).read_bytes()
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, Image.DecompressionBombError):
        return None


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
