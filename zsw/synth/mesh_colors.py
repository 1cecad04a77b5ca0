"""The colours of a mesh's own surface, for rendering it: textures, material colours, vertex and face
colours, as ``zsw synthesize meshes`` draws them (``--appearance mesh``).

:class:`SurfaceColors` holds, per triangle, a colour at each corner (linear RGB, interpolated over
the triangle) and optionally a texture with the corners' uv coordinates; the colour at a point is
the corners' colour times the texture's there, as glTF's base colour is its factor times its
texture. Where a mesh says nothing about a triangle's colour the sample is NaN, and the renderer
gives it the random material colour it gives every procedural shape.

What is read from each of a file's meshes (:func:`zsw.data.eval_sets.read_mesh_file` with
``parts``), by its trimesh visual:

* a texture (glTF ``baseColorTexture``, OBJ ``map_Kd``) with uv coordinates, times its material's
  colour (glTF ``baseColorFactor``, linear; OBJ ``Kd``); a material without a texture (or without
  uv coordinates) gives its colour alone;
* vertex colours (PLY, OBJ and glTF ``COLOR_0``) or face colours, read as sRGB (scanners and PLY
  writers store them so);
* a USD mesh's UsdPreviewSurface diffuse texture or colour, else its ``displayColor``, made into one
  of the above by :func:`zsw.data.usd.read_usd`;
* nothing (no material, no colours): NaN.

Textures are read as sRGB, their alpha ignored, kept as 8-bit and reduced to at most
:data:`MAX_TEXTURE` pixels on their longer side (a render is a few hundred pixels wide); sampled
bilinearly in sRGB, then made linear, wrapping around (glTF's default ``REPEAT``), with trimesh's
uv convention (v up).

Example::

    meshes = read_mesh_file(Path("chair.glb"), parts=True)
    colors = SurfaceColors.from_meshes(meshes)        # None when no mesh has colours
    rgb = colors.sample(face, barycentric)            # [N, 3] linear RGB (NaN: no colour)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SurfaceColors", "MAX_TEXTURE", "barycentric"]

#: textures are reduced to at most this many pixels on their longer side
MAX_TEXTURE = 1024


def _to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] to linear, with the renderer's gamma (2.2, :mod:`zsw.synth.render`)."""
    return np.clip(np.asarray(srgb, dtype=np.float32), 0.0, 1.0) ** np.float32(2.2)


def _texture(image) -> np.ndarray | None:  # -> [H, W, 3] uint8 sRGB
    """A PIL image as an 8-bit sRGB array no larger than :data:`MAX_TEXTURE` (a quarter of the
    memory of linear floats: a scene may carry dozens of textures); None if it cannot be read (a
    texture format PIL lacks leaves the triangles their material colour)."""
    from PIL import Image

    try:
        image = image.convert("RGB")  # alpha dropped, palettes and grey made RGB
        if max(image.size) > MAX_TEXTURE:
            scale = MAX_TEXTURE / max(image.size)
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BOX
            )
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    except (OSError, ValueError):
        return None


def barycentric(triangles: np.ndarray, points: np.ndarray) -> np.ndarray:  # [N, 3, 3], [N, 3] -> [N, 3]
    """Barycentric coordinates of ``points`` in the planes of ``triangles`` (trimesh's), clipped to
    the triangle and renormalised: a point beside a triangle takes the colour of its nearest edge;
    a degenerate triangle gives its centroid."""
    from trimesh.triangles import points_to_barycentric

    with np.errstate(divide="ignore", invalid="ignore"):
        bary = np.nan_to_num(points_to_barycentric(triangles, points), nan=1 / 3, posinf=1 / 3, neginf=1 / 3)
    bary = np.clip(bary, 0.0, None)
    total = bary.sum(-1, keepdims=True)
    return np.where(total > 1e-12, bary / np.maximum(total, 1e-12), 1 / 3)


@dataclass
class SurfaceColors:
    """Per-triangle colour of a mesh (see the module docstring)."""

    corners: np.ndarray  # [F, 3, 3] float32 linear RGB at each corner; NaN: the triangle has no colour
    uv: np.ndarray  # [F, 3, 2] float32 texture coordinates of the corners (0 where no texture)
    texture: np.ndarray  # [F] int32 index into ``textures``, -1: none
    textures: list[np.ndarray]  # [H, W, 3] uint8 sRGB

    @property
    def has_texture(self) -> bool:
        return bool((self.texture >= 0).any())

    @classmethod
    def from_meshes(cls, meshes: list) -> SurfaceColors | None:
        """The colours of ``meshes`` (trimesh ``Trimesh``, their faces concatenated in this order);
        None when none of them has any."""
        corners, uvs, index, textures = [], [], [], []
        cache: dict[int, int] = {}  # id(image) -> its index: a texture shared by meshes is read once
        for mesh in meshes:
            c, uv, t = _mesh_colors(mesh, textures, cache)
            corners.append(c)
            uvs.append(uv)
            index.append(t)
        if not corners:
            return None
        colors = cls(np.concatenate(corners), np.concatenate(uvs), np.concatenate(index), textures)
        return colors if np.isfinite(colors.corners).any() else None

    def select(self, keep: np.ndarray) -> SurfaceColors:
        """The colours of the triangles ``keep`` (a boolean mask or indices) selects."""
        return SurfaceColors(self.corners[keep], self.uv[keep], self.texture[keep], self.textures)

    def sample(self, face: np.ndarray, bary: np.ndarray) -> np.ndarray:  # [N], [N, 3] -> [N, 3] float32
        """Linear RGB at barycentric ``bary`` in triangles ``face``; NaN where a triangle has none."""
        from scipy import ndimage

        w = bary.astype(np.float32)[:, :, None]
        rgb = (self.corners[face] * w).sum(axis=1)  # NaN stays NaN
        tex = self.texture[face]
        for t in np.unique(tex[tex >= 0]):
            rows = np.nonzero(tex == t)[0]
            uv = (self.uv[face[rows]] * w[rows]).sum(axis=1)
            image = self.textures[t]
            h, wd = image.shape[:2]
            coords = [(1.0 - uv[:, 1]) * h - 0.5, uv[:, 0] * wd - 0.5]  # pixel centres; v up
            texel = np.stack(
                [
                    ndimage.map_coordinates(image[..., ch], coords, output=np.float32, order=1, mode="grid-wrap")
                    for ch in range(3)
                ],
                axis=-1,
            )
            rgb[rows] = rgb[rows] * _to_linear(texel / 255.0)
        return rgb


def _mesh_colors(mesh, textures: list[np.ndarray], cache: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(corners [F, 3, 3], uv [F, 3, 2], texture [F]) of one trimesh mesh; a new texture is
    appended to ``textures``."""
    faces = np.asarray(mesh.faces, dtype=np.int64)
    n = len(faces)
    corners = np.full((n, 3, 3), np.nan, dtype=np.float32)
    uv_out = np.zeros((n, 3, 2), dtype=np.float32)
    index = np.full(n, -1, dtype=np.int32)
    visual = getattr(mesh, "visual", None)
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        material = getattr(visual, "material", None)
        image, factor = _material(material)
        if factor is not None:
            corners[:] = factor
        uv = getattr(visual, "uv", None)
        if image is not None and uv is not None and len(uv) == len(mesh.vertices):
            key = id(image)
            if key not in cache:
                tex = _texture(image)
                cache[key] = -1 if tex is None else len(textures)
                if tex is not None:
                    textures.append(tex)
            if cache[key] >= 0:
                index[:] = cache[key]
                uv_out = np.asarray(uv, dtype=np.float32)[faces]
                uv_out = np.where(np.isfinite(uv_out), uv_out, 0.0).astype(np.float32)
                if factor is None:
                    corners[:] = 1.0
    elif kind == "vertex":
        vc = np.asarray(visual.vertex_colors)[:, :3].astype(np.float32) / 255.0
        corners = _to_linear(vc[faces])
    elif kind == "face":
        fc = np.asarray(visual.face_colors)[:, :3].astype(np.float32) / 255.0
        corners = np.repeat(_to_linear(fc)[:, None], 3, axis=1)
    return corners, uv_out, index


def _material(material) -> tuple[object | None, np.ndarray | None]:
    """(base-colour image or None, linear RGB factor [3] or None) of a trimesh material."""
    if material is None or _placeholder(material):
        return None, None
    image = getattr(material, "baseColorTexture", None)
    factor = getattr(material, "baseColorFactor", None)
    if not hasattr(material, "baseColorTexture"):  # SimpleMaterial (OBJ): map_Kd and Kd
        image = getattr(material, "image", None)
        factor = getattr(material, "diffuse", None)
    if factor is not None:  # trimesh's colour conventions (8-bit or floats in [0, 1]) as floats
        from trimesh.visual.color import to_rgba

        factor = to_rgba(np.asarray(factor).reshape(1, -1))[0, :3].astype(np.float32) / 255.0
    return image, factor


def _placeholder(material) -> bool:
    """Whether ``material`` is what trimesh gives a mesh that has uv coordinates and no material
    (``trimesh.visual.material.empty_material``: a grey 2 x 2 image): no colour of the mesh's."""
    from trimesh.visual.material import SimpleMaterial, empty_material

    if not isinstance(material, SimpleMaterial) or material.image is None or material.image.size != (2, 2):
        return False
    default = empty_material()
    return bool(
        np.array_equal(np.asarray(material.diffuse), np.asarray(default.diffuse))
        and np.array_equal(np.asarray(material.image.convert("RGBA")), np.asarray(default.image.convert("RGBA")))
    )
