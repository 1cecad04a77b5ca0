"""A texture atlas baked from the photo: ``--texture SIZE``.

Vertex colours (:mod:`zsw.infer.color`) hold one colour per vertex, so a decimated mesh of a few
thousand faces keeps the layout of the photo's colours but not its details (a toy's eyes, a
label's print). A texture keeps them whatever the face count:

1. the mesh is cut into charts and laid out in a ``SIZE x SIZE`` atlas by xatlas (a UV
   parametrisation; vertices on a chart seam are duplicated, the triangles stay the same, so the
   textured mesh is closed once its vertices are merged by position);
2. every texel a triangle covers gets its 3-D point (the triangle's barycentric blend, found by
   rasterising the atlas with :func:`zsw.infer.preview._rasterize`);
3. a texel whose triangle the photo sees (its vertices' ``seen`` flags, blended, at least 0.5)
   and which projects inside the visible mask shrunk by one pixel takes the photo's bilinear
   colour at its projection, from the mask's pixels only; every other texel -- the hidden back,
   the rim -- takes the blend of its triangle's vertex colours, which follow the colour rule of
   :mod:`zsw.infer.color` (blurred photo behind the object's image, nearest seen colour elsewhere);
4. the texels no triangle covers take the colour of the nearest covered texel, so that a viewer's
   bilinear and mipmapped sampling at a chart's border does not reach the atlas's black.

The atlas is a PNG in the GLB (glTF's base colour texture) and beside ``mesh.obj`` (``mesh.mtl``
names it); PLY keeps the vertex colours, STL has no colour. xatlas is an optional dependency:
``pip install "zsw[texture]"``. It takes ~0.6 s for a mesh decimated to 5,000 faces and ~20 s for
the 40,000 faces a 128 grid gives, so the option is meant for decimated meshes (``--faces``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zsw.errors import ConfigError, OptionError

__all__ = ["TexturedMesh", "bake_texture", "check_texture_size", "MIN_TEXTURE", "MAX_TEXTURE"]

#: the smallest and largest atlas side in texels
MIN_TEXTURE, MAX_TEXTURE = 64, 8192
#: texels between charts in the atlas (bilinear sampling at a border stays inside its chart)
_PADDING = 2


@dataclass
class TexturedMesh:
    """A mesh cut along its charts' seams: ``vertex_index`` picks each new vertex's original one."""

    vertex_index: np.ndarray  # [V'] int64: original vertex of each atlas vertex
    faces: np.ndarray  # [F, 3] int64 into the atlas vertices
    uv: np.ndarray  # [V', 2] float: (u, v) in [0, 1], v up (OpenGL / trimesh convention)
    image: np.ndarray  # [SIZE, SIZE, 3] uint8: row 0 is the top of the texture (v = 1)
    seen_texels: int  # texels coloured from the photo directly
    covered_texels: int  # texels some triangle covers


def check_texture_size(size: int, color: str = "photo") -> None:
    """An :class:`~zsw.errors.OptionError` naming ``--texture`` unless ``size`` is 0 (off) or in
    range, and, with a texture, ``color`` is ``photo`` (the atlas bakes the photo's colours)."""
    if (
        isinstance(size, bool)
        or not isinstance(size, (int, np.integer))
        or not (size == 0 or MIN_TEXTURE <= size <= MAX_TEXTURE)
    ):
        raise OptionError(f"--texture: {size!r} is not 0 (off) or an atlas size in [{MIN_TEXTURE}, {MAX_TEXTURE}]")
    if size and color != "photo":
        raise OptionError("--texture bakes the photo's colours: it needs --color photo")


def _parametrize(vertices: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        import xatlas
    except ModuleNotFoundError:
        raise ConfigError('--texture needs xatlas, which is not installed: pip install "zsw[texture]"') from None
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = _PADDING
    atlas.generate(xatlas.ChartOptions(), pack)
    vmap, tri, uv = atlas[0]  # uv in [0, 1] of the atlas, v growing down its rows
    return np.asarray(vmap, dtype=np.int64), np.asarray(tri, dtype=np.int64), np.asarray(uv, dtype=np.float64)


def bake_texture(
    vertices: np.ndarray,  # [V, 3] camera frame (x right, y down, z forward)
    faces: np.ndarray,  # [F, 3]
    image: np.ndarray,  # [S, S, 3] uint8: the model input
    intrinsics: np.ndarray,  # [3, 3] pixels of ``image``
    visible_mask: np.ndarray,  # [S, S] bool
    vertex_rgb: np.ndarray,  # [V, 3] uint8: the vertex colours (zsw.infer.color.photo_colors)
    seen: np.ndarray,  # [V] bool: the vertices coloured from the photo directly
    size: int = 1024,
) -> TexturedMesh:
    """The mesh's charts and its ``size x size`` texture atlas (module docstring)."""
    import torch
    from scipy.ndimage import distance_transform_edt

    from zsw.infer.color import _bilinear, project, shrunk_mask
    from zsw.infer.preview import _rasterize

    check_texture_size(size)
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    vmap, tri, uv = _parametrize(vertices, faces, size)
    # the atlas as a picture: texel (x, y) has its centre at uv * size - 0.5; z = 1 makes the
    # rasteriser's barycentrics the affine ones of the flat atlas
    flat = np.concatenate([uv * size - 0.5, np.ones((len(uv), 1))], axis=1)
    face_id, bary = _rasterize(
        torch.as_tensor(flat, dtype=torch.float32), torch.as_tensor(tri), torch.eye(3), size, size
    )  # fmt: skip
    face_id, bary = face_id.numpy(), bary.numpy().astype(np.float64)
    covered = face_id >= 0
    corners = tri[face_id[covered]]  # [T, 3] atlas vertices of each covered texel's triangle
    weights = bary[covered][..., None]  # [T, 3, 1]
    original = vmap[corners]  # [T, 3] original vertices
    points = (vertices[original] * weights).sum(axis=1)  # [T, 3] camera frame
    colors = (vertex_rgb[original].astype(np.float64) * weights).sum(axis=1)  # [T, 3]: the vertex colours' blend
    core = shrunk_mask(np.asarray(visible_mask, dtype=bool))
    seen_texels = 0
    if core.any():
        p = project(points, intrinsics, image.shape[:2])
        flags = (seen[original].astype(np.float64) * weights[..., 0]).sum(axis=1) >= 0.5
        direct = flags & p.inside & core[p.py, p.px]
        if direct.any():
            colors[direct] = _bilinear(image, p.u[direct], p.v[direct], core)
        seen_texels = int(direct.sum())
    atlas = np.zeros((size, size, 3), dtype=np.uint8)
    atlas[covered] = np.clip(np.rint(colors), 0, 255).astype(np.uint8)
    if covered.any() and not covered.all():  # the gaps between charts: the nearest covered texel
        _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
        atlas = atlas[rows, cols]
    uv_gl = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)  # image row 0 is v = 1
    return TexturedMesh(vmap, tri, uv_gl, atlas, seen_texels, int(covered.sum()))
