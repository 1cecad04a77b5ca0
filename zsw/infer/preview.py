"""Pictures of a reconstruction: a shaded mesh from any pinhole camera, colour-mapped depth.

No OpenGL: :func:`render_mesh` is a small z-buffer rasteriser in torch. Every pixel centre inside
a triangle's screen bounding box becomes a candidate (generated in flat chunks, no padding), is
tested with edge functions, the nearest hit per pixel wins through a scatter-max on inverse depth,
and the winners are shaded with interpolated vertex normals (two-sided Lambert plus ambient). A mesh of 10^5
triangles renders in a fraction of a second on a CPU.

Camera conventions are the model's: camera frame x right, y down, z forward; pixel (u, v) =
(column, row) with integer pixel centres, ``u = fx x / z + cx``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["render_mesh", "preview_image", "colorize_depth", "orbit_camera"]

_CLAY = (0.78, 0.74, 0.69)
_DT = torch.float32  # enough for pixel coordinates
_EPS = 1e-4  # barycentric slack: a pixel centre on a shared edge belongs to both triangles (z decides)
# a perceptually ordered ramp (dark violet -> blue -> teal -> green -> yellow) for depth maps
_RAMP = np.array(
    [
        [0.05, 0.03, 0.20],
        [0.23, 0.10, 0.45],
        [0.20, 0.27, 0.60],
        [0.13, 0.45, 0.60],
        [0.12, 0.60, 0.53],
        [0.35, 0.75, 0.35],
        [0.72, 0.85, 0.20],
        [0.99, 0.91, 0.15],
    ]
)


def render_mesh(
    vertices: np.ndarray | Tensor,  # [V, 3] camera frame
    faces: np.ndarray | Tensor,  # [F, 3]
    intrinsics: np.ndarray | Tensor,  # [3, 3] pixels of the output image
    size: tuple[int, int],  # (height, width)
    *,
    color=_CLAY,
    vertex_colors: np.ndarray | None = None,  # [V, 3] uint8 or floats in [0, 1]: instead of ``color``
    background=(1.0, 1.0, 1.0),
    light=(-0.4, -0.6, -1.0),  # direction towards the light, camera frame (up-left, towards the camera)
    supersample: int = 2,
    near: float = 1e-6,
) -> np.ndarray:  # [H, W, 3] uint8
    """Shade a triangle mesh seen by a pinhole camera at the origin looking along +z.

    Triangles with a vertex closer than ``near`` (z) are not drawn.
    """
    H, W = size
    s = supersample
    K = torch.as_tensor(np.asarray(intrinsics), dtype=_DT).clone()
    K[:2] *= s
    K[0, 2] += (s - 1) / 2  # integer pixel centres: output pixel c covers sub-pixels s*c .. s*c+s-1
    K[1, 2] += (s - 1) / 2
    v = torch.as_tensor(np.asarray(vertices), dtype=_DT)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    bg = torch.tensor(background, dtype=_DT)
    image = bg.expand(H * s, W * s, 3).clone()
    if len(f) and len(v):
        face_id, bary = _rasterize(v, f, K, H * s, W * s, near=near)
        hit = face_id >= 0
        if hit.any():
            normals = _vertex_normals(v, f)  # [V, 3]
            fid = face_id[hit]
            n = (bary[hit][:, :, None] * normals[f[fid]]).sum(1)  # [P, 3]
            p = (bary[hit][:, :, None] * v[f[fid]]).sum(1)  # [P, 3] surface point
            n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            n = torch.where(((n * p).sum(-1, keepdim=True) > 0), -n, n)  # two-sided: face the camera
            to_light = torch.tensor(light, dtype=_DT)
            to_light = to_light / to_light.norm()
            diffuse = (n @ to_light).clamp(min=0)
            fill = (n @ torch.tensor([0.0, 0.0, -1.0], dtype=_DT)).clamp(min=0)
            if vertex_colors is None:
                shade = 0.28 + 0.55 * diffuse + 0.22 * fill
                rgb = shade[:, None] * torch.tensor(color, dtype=_DT)
            else:  # the photo's colours: mostly albedo, a little shading for the form
                vc = torch.as_tensor(np.asarray(vertex_colors)[:, :3], dtype=_DT)
                vc = vc / 255.0 if np.asarray(vertex_colors).dtype == np.uint8 else vc
                albedo = (bary[hit][:, :, None] * vc[f[fid]]).sum(1)
                shade = 0.62 + 0.3 * diffuse + 0.12 * fill
                rgb = shade[:, None] * albedo
            image[hit] = rgb.clamp(0, 1)
    if s > 1:
        image = image.reshape(H, s, W, s, 3).mean(dim=(1, 3))
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def _vertex_normals(v: Tensor, f: Tensor) -> Tensor:  # [V, 3] area-weighted
    tri = v[f]  # [F, 3, 3]
    fn = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    vn = torch.zeros_like(v)
    for i in range(3):
        vn.index_add_(0, f[:, i], fn)
    return vn / vn.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _rasterize(
    v: Tensor, f: Tensor, K: Tensor, H: int, W: int, near: float = 1e-6, budget: int = 1 << 22
) -> tuple[Tensor, Tensor]:
    """Nearest face per pixel (-1 = none) ``[H, W]`` and its barycentric weights ``[H, W, 3]``.

    Every pixel centre inside a triangle's screen bounding box is a candidate; candidates are
    generated exactly (``w * h`` per box) in chunks of about ``budget``.
    """
    z = v[:, 2]
    uv = torch.stack([K[0, 0] * v[:, 0] / z + K[0, 2], K[1, 1] * v[:, 1] / z + K[1, 2]], dim=-1)
    keep = (z[f] > near).all(dim=1)
    tri = uv[f[keep]]  # [F, 3, 2]
    face_index = torch.nonzero(keep)[:, 0]
    lo = tri.amin(dim=1).ceil().clamp(min=0)
    hi = torch.minimum(tri.amax(dim=1).floor(), torch.tensor([W - 1.0, H - 1.0], dtype=tri.dtype))
    wh = (hi - lo + 1).clamp(min=0).long()  # [F, 2] box width and height in pixels
    count = wh[:, 0] * wh[:, 1]
    sel = torch.nonzero(count > 0)[:, 0]
    tri, lo, wh, count, face_index = tri[sel], lo[sel], wh[sel], count[sel], face_index[sel]
    zf = z[f[keep]][sel]  # [F, 3]
    ends = torch.cumsum(count, 0)
    pixels_all, faces_all, bary_all, inv_z_all = [], [], [], []
    first = 0
    while first < len(count):
        base = int(ends[first - 1]) if first else 0
        last = max(first + 1, int(torch.searchsorted(ends, base + budget, right=True)))
        fi = torch.arange(first, last)
        n = count[fi]
        owner = torch.repeat_interleave(fi, n)  # [P] face of each candidate
        local = torch.arange(int(n.sum())) - torch.repeat_interleave(ends[fi] - n - base, n)
        width = wh[owner, 0]
        px = lo[owner] + torch.stack([local % width, local // width], dim=-1).to(lo.dtype)  # [P, 2]
        a, b, c = tri[owner, 0], tri[owner, 1], tri[owner, 2]
        area = _edge(a, b, c)
        w0 = _edge(b, c, px) / area
        w1 = _edge(c, a, px) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 >= -_EPS) & (w1 >= -_EPS) & (w2 >= -_EPS) & (area.abs() > 1e-9)
        idx = torch.nonzero(inside)[:, 0]
        if len(idx):
            bary = torch.stack([w0[idx], w1[idx], w2[idx]], dim=-1)  # [P, 3] screen-space
            fz = zf[owner[idx]]
            inv_z = (bary / fz).sum(-1)  # 1/z is linear in screen space
            pix = px[idx].long()
            pixels_all.append(pix[:, 1] * W + pix[:, 0])
            faces_all.append(face_index[owner[idx]])
            bary_all.append(bary / fz / inv_z[:, None])  # perspective-correct barycentrics
            inv_z_all.append(inv_z)
        first = last
    face_id = torch.full((H * W,), -1, dtype=torch.int64)
    bary_out = torch.zeros(H * W, 3, dtype=_DT)
    if pixels_all:
        pixels, faces_c = torch.cat(pixels_all), torch.cat(faces_all)
        bary_c, inv_z = torch.cat(bary_all), torch.cat(inv_z_all)
        nearest = torch.zeros(H * W, dtype=_DT).scatter_reduce_(0, pixels, inv_z, reduce="amax", include_self=True)
        win = torch.nonzero(inv_z >= nearest[pixels])[:, 0]
        # a pixel on an edge two faces share can be won by both at the same depth: the lower face
        # index takes it, so no two writes below go to one pixel (their order is not defined)
        lowest = torch.full((H * W,), torch.iinfo(torch.int64).max, dtype=torch.int64)
        lowest.scatter_reduce_(0, pixels[win], faces_c[win], reduce="amin")
        win = win[faces_c[win] == lowest[pixels[win]]]
        face_id[pixels[win]] = faces_c[win]
        bary_out[pixels[win]] = bary_c[win]
    return face_id.view(H, W), bary_out.view(H, W, 3)


def _edge(a: Tensor, b: Tensor, p: Tensor) -> Tensor:  # [P, 2] x 3 -> [P]: twice the signed area of (a, b, p)
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def orbit_camera(
    vertices: np.ndarray,  # [V, 3] camera frame
    size: int,
    azimuth_deg: float = 40.0,
    elevation_deg: float = 25.0,
    fov_deg: float = 30.0,
) -> tuple[np.ndarray, np.ndarray]:  # vertices in the new camera frame [V, 3], intrinsics [3, 3]
    """Turn the mesh about its centre (``azimuth`` about the vertical, then ``elevation`` to look
    from above) and place a camera that frames its bounding sphere: a three-quarter view."""
    center = (vertices.min(0) + vertices.max(0)) / 2
    radius = float(np.linalg.norm(vertices - center, axis=1).max()) or 1.0
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    # camera y points down: turn about the vertical axis, then tip the top (-y) towards the camera (-z)
    r_up = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    r_tilt = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    half = math.radians(fov_deg) / 2
    distance = radius / math.sin(half) * 1.05
    moved = (vertices - center) @ (r_tilt @ r_up).T + np.array([0.0, 0.0, distance])
    focal = size / 2 / math.tan(half)
    K = np.array([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1]])
    return moved, K


def colorize_depth(depth: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:  # [H, W] -> [H, W, 3] uint8
    """Near = bright, far = dark, stretched over the 2nd..98th percentile (of the masked pixels
    when a non-empty mask is given)."""
    d = np.asarray(depth, dtype=np.float64)
    ref = d[mask] if mask is not None and mask.any() else d.reshape(-1)
    lo, hi = np.percentile(ref, [2, 98]) if ref.size else (0.0, 1.0)
    t = 1.0 - np.clip((d - lo) / max(hi - lo, 1e-9), 0, 1)
    x = t * (len(_RAMP) - 1)
    i = np.clip(np.floor(x).astype(int), 0, len(_RAMP) - 2)
    w = (x - i)[..., None]
    rgb = _RAMP[i] * (1 - w) + _RAMP[i + 1] * w
    return (rgb * 255 + 0.5).astype(np.uint8)


def preview_image(
    image: np.ndarray,  # [S, S, 3] uint8 model input
    vertices: np.ndarray,  # [V, 3] camera frame
    faces: np.ndarray,  # [F, 3]
    intrinsics: np.ndarray,  # [3, 3] pixels of the model input
    panel: int = 256,
    vertex_colors: np.ndarray | None = None,  # [V, 3] uint8
    photo_area: np.ndarray | None = None,  # [S, S] bool: the input pixels that show the photo
) -> np.ndarray:  # [panel, 3 * panel, 3] uint8
    """Input image | mesh seen from the input camera | mesh in a three-quarter view. The input's
    pixels off ``photo_area`` (its padding: the photo mirrored) are faded towards white, so the
    panel shows what is photo and what is not."""
    from PIL import Image

    S = image.shape[0]
    if photo_area is not None and not np.all(photo_area):
        faded = (np.asarray(image, np.float32) * 0.35 + 255 * 0.65).astype(np.uint8)
        image = np.where(np.asarray(photo_area, bool)[..., None], image, faded)
    scale = panel / S
    K = np.asarray(intrinsics, dtype=np.float64).copy()
    K[:2] *= scale
    K[0, 2] += (scale - 1) / 2
    K[1, 2] += (scale - 1) / 2
    photo = np.asarray(Image.fromarray(image).resize((panel, panel), Image.Resampling.BICUBIC))
    if len(faces):
        # geometry right at the lens (a failed prediction) would fill the panel: clip it
        near = 0.05 * max(float(np.median(np.asarray(vertices)[:, 2])), 1e-6)
        front = render_mesh(vertices, faces, K, (panel, panel), near=near, vertex_colors=vertex_colors)
        moved, K3 = orbit_camera(np.asarray(vertices, dtype=np.float64), panel)
        side = render_mesh(moved, faces, K3, (panel, panel), vertex_colors=vertex_colors)
    else:  # nothing reconstructed: grey panels
        front = side = np.full((panel, panel, 3), 235, np.uint8)
    return np.concatenate([photo, front, side], axis=1)
