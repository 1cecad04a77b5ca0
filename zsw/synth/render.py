"""Cameras and a vectorised sphere tracer for analytic SDF shapes (:mod:`zsw.synth.sdf`).

Cameras follow ZeroShape-W's synthetic-data distribution: focal length 30-70 mm on a 35 mm sensor,
elevation 5-65 degrees, any azimuth, a random distance at which the object fits the frame and a
jittered look-at point. The image is then cropped around the object's silhouette (square, with a
margin) and resized to ``size`` pixels -- done exactly, by rendering the crop directly with the
cropped intrinsics ``K`` (pixels at ``size``; pixel x = column, y = row, no +0.5 offset, as
ZeroShape's unprojection). Depth is camera-frame z, 0 on the background, so
``unproject_depth(depth, K)`` gives the traced surface points exactly.

Conventions: object frame y up; camera frame x right, y down, z forward (OpenCV);
``[R|t]`` maps object to camera coordinates.

Shading: per-part base colours (or the shape's own, where its ``albedo`` gives them: a mesh's
textures and vertex colours, :mod:`zsw.synth.mesh_colors`), a hemisphere ambient term with
ambient occlusion, one directional key light with soft shadows and a Blinn-Phong highlight, gamma
2.2. Silhouette pixels are
supersampled 2x2, giving an antialiased image on white and a fractional coverage ``alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from zsw.errors import ConfigError

__all__ = [
    "SynthShape",
    "CameraConfig",
    "View",
    "Material",
    "RenderResult",
    "sample_view",
    "sample_material",
    "look_at",
    "render",
    "sphere_trace",
    "cone_march",
]


@runtime_checkable
class SynthShape(Protocol):
    """What the renderer and the dataset jobs (:func:`zsw.synth.procedural.render_object`) use of a
    shape, in its object frame (y up, centred on its bounding box, longest side 1). Implemented by
    the analytic :class:`zsw.synth.sdf.Shape` and the grid-based :class:`zsw.synth.mesh_sdf.MeshShape`.
    A shape may also have ``albedo(p) -> [N, 3] linear RGB | None`` (NaN where it has no colour):
    its own colours, used instead of the material's (:meth:`~zsw.synth.mesh_sdf.MeshShape.albedo`).
    """

    #: part labels are ``0 .. num_parts - 1`` (one colour each)
    num_parts: int

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """A box ([3], [3]) that contains the surface: rays are traced inside it only."""
        ...

    def sdf(self, p: Tensor) -> Tensor:
        """[N, 3] -> [N] signed distance, negative inside; never much above the true distance
        (sphere tracing steps by it)."""
        ...

    def sdf_part(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """[N, 3] -> ([N] signed distance, [N] long part label)."""
        ...

    def gradient(self, p: Tensor) -> Tensor:
        """[N, 3] -> [N, 3] unit outward normals."""
        ...

    def surface_points(self, count: int, rng: np.random.Generator, resolution: int = 128) -> np.ndarray:
        """[count, 3] points on the surface, uniform by area."""
        ...

    def sdf_samples(
        self,
        rng: np.random.Generator,
        near: int = 24576,
        uniform: int = 8192,
        sigmas: tuple[float, ...] = (0.005, 0.02),
        bound: float = 0.75,
        resolution: int = 128,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(points [near + uniform, 3], their signed distance): ``near`` around the surface with
        Gaussian offsets of ``sigmas`` in turn, ``uniform`` in ``[-bound, bound]^3``."""
        ...


@dataclass(frozen=True)
class CameraConfig:
    """The camera distribution (ZeroShape-W: 30-70 mm on 35 mm, elevation 5-65 degrees)."""

    focal_mm: tuple[float, float] = (30.0, 70.0)
    sensor_mm: float = 35.0
    elevation_deg: tuple[float, float] = (5.0, 65.0)
    # distance as a multiple of the distance at which the bounding sphere just fills the frame
    distance_factor: tuple[float, float] = (1.0, 1.6)
    # look-at point: uniform in a ball of this radius around the object centre (object units)
    lookat_jitter: float = 0.15
    # side of the square crop as a multiple of the silhouette's longer bbox side
    crop_margin: tuple[float, float] = (1.15, 1.35)
    # crop-centre jitter, as a fraction of the crop side
    crop_jitter: float = 0.05

    def __post_init__(self) -> None:
        lo, hi = self.elevation_deg
        if not -85.0 <= lo <= hi <= 85.0:  # at +-90 the camera's up vector is undefined
            raise ConfigError(f"camera elevation must satisfy -85 <= low <= high <= 85 degrees, got {lo:g}, {hi:g}")


@dataclass
class View:
    """One camera: intrinsics at the output size and the object-to-camera pose."""

    K: np.ndarray  # [3, 3] pixels at `size`
    Rt: np.ndarray  # [3, 4] object -> camera
    size: int
    meta: dict = field(default_factory=dict)

    @property
    def R(self) -> np.ndarray:  # [3, 3]
        return self.Rt[:, :3]

    @property
    def t(self) -> np.ndarray:  # [3]
        return self.Rt[:, 3]


@dataclass
class Material:
    """Per-part base colours (linear RGB) and a shared highlight, plus the lighting."""

    colors: np.ndarray  # [P, 3] linear RGB in [0, 1]
    specular: float
    shininess: float
    light_cam: np.ndarray  # [3] unit direction towards the key light, camera frame
    key: float
    ambient: float
    sky: np.ndarray  # [3] ambient colour from above
    ground: np.ndarray  # [3] ambient colour from below


@dataclass
class RenderResult:
    image: np.ndarray  # [S, S, 3] uint8, the object over white (antialiased)
    alpha: np.ndarray  # [S, S] float32 coverage in [0, 1]
    depth: np.ndarray  # [S, S] float32 camera z, 0 = background
    part: np.ndarray  # [S, S] int16 part label, -1 = background

    @property
    def mask(self) -> np.ndarray:  # [S, S] bool
        return self.depth > 0


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:  # [3, 4]
    """Object-to-camera ``[R|t]`` of a camera at ``eye`` looking at ``target`` (x right, y down)."""
    up = np.array([0.0, 1.0, 0.0]) if up is None else up
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return np.concatenate([R, (-R @ eye)[:, None]], axis=1)


def sample_view(
    rng: np.random.Generator,
    surface: np.ndarray,  # [M, 3] surface points of the (normalised) object
    cfg: CameraConfig = CameraConfig(),
    size: int = 224,
    focal_mm: float | None = None,
) -> View:
    """A random camera from ``cfg`` and the square crop around the object's silhouette.

    The silhouette's bounding box is that of the projected surface points. ``focal_mm`` fixes
    the lens (occluders are rendered with the focal length of the view they occlude).
    """
    f_mm = float(rng.uniform(*cfg.focal_mm)) if focal_mm is None else float(focal_mm)
    elev = math.radians(rng.uniform(*cfg.elevation_deg))
    azim = float(rng.uniform(0.0, 2 * math.pi))
    f_n = f_mm / cfg.sensor_mm  # focal length in sensor widths
    radius = float(np.linalg.norm(surface, axis=1).max())
    half_fov = math.atan(0.5 / f_n)
    distance = radius / math.sin(half_fov) * float(rng.uniform(*cfg.distance_factor))
    jitter = rng.normal(size=3)
    jitter *= cfg.lookat_jitter * rng.random() ** (1 / 3) / max(np.linalg.norm(jitter), 1e-9)
    eye = distance * np.array([math.cos(elev) * math.sin(azim), math.sin(elev), math.cos(elev) * math.cos(azim)])
    Rt = look_at(eye, jitter)
    cam = surface @ Rt[:, :3].T + Rt[:, 3]
    uv = cam[:, :2] / cam[:, 2:3]  # image plane at unit depth
    lo, hi = uv.min(0), uv.max(0)
    side = float((hi - lo).max() * rng.uniform(*cfg.crop_margin))
    center = (lo + hi) / 2 + rng.uniform(-1, 1, size=2) * cfg.crop_jitter * side
    # the crop [center - side/2, center + side/2] maps to pixels [0, size)
    f_px = size / side
    K = np.array(
        [[f_px, 0.0, (side / 2 - center[0]) * f_px], [0.0, f_px, (side / 2 - center[1]) * f_px], [0.0, 0.0, 1.0]]
    )
    # the crop in full-frame pixels of a sensor `size` pixels wide: (x0, y0, side)
    crop = [(c - side / 2) * f_n * size + size / 2 for c in center] + [side * f_n * size]
    meta = dict(
        focal_mm=f_mm,
        elevation_deg=math.degrees(elev),
        azimuth_deg=math.degrees(azim),
        distance=distance,
        lookat=[float(v) for v in jitter],
        crop=[float(c) for c in crop],
    )
    return View(K=K, Rt=Rt, size=size, meta=meta)


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.asarray(c, dtype=np.float64) ** 2.2


def sample_material(rng: np.random.Generator, num_parts: int) -> Material:
    """Random colours (one per part, or shared), highlight and lighting."""

    def color() -> np.ndarray:
        import colorsys

        h, s, v = rng.random(), rng.uniform(0.15, 0.9), rng.uniform(0.3, 0.95)
        return _srgb_to_linear(colorsys.hsv_to_rgb(h, s, v))

    base = color()
    colors = np.stack([base if (i > 0 and rng.random() < 0.35) else color() for i in range(num_parts)])
    light = np.array([rng.uniform(-1, 1), -rng.uniform(0.2, 1.0), -rng.uniform(0.2, 1.0)])
    tint = rng.uniform(0.85, 1.0, size=3)
    return Material(
        colors=colors,
        specular=float(rng.uniform(0.0, 0.5)),
        shininess=float(rng.uniform(8, 96)),
        light_cam=light / np.linalg.norm(light),
        key=float(rng.uniform(0.6, 1.0)),
        ambient=float(rng.uniform(0.25, 0.5)),
        sky=tint,
        ground=tint * rng.uniform(0.35, 0.6),
    )


# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------


def _ray_box(origin: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:  # [N], [N]
    """Entry and exit distances of rays against an axis-aligned box (exit < entry = miss)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (lo - origin) * inv, (hi - origin) * inv
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


def sphere_trace(
    shape: SynthShape,
    origin: Tensor,  # [3] camera centre, object frame
    dirs: Tensor,  # [N, 3] unit directions, object frame
    t_near: Tensor,  # [N]
    t_far: Tensor,  # [N]
    eps: float,  # convergence threshold per unit distance (angular size of a fraction of a pixel)
    max_steps: int = 96,
) -> tuple[Tensor, Tensor]:  # t [N], hit [N] bool
    """March each ray by the SDF until it is within ``eps * t`` of the surface or leaves the box.

    Only unfinished rays are evaluated at each step (the active set is compacted). Rays still
    marching after ``max_steps`` (grazing the silhouette) count as hits when within 4 ``eps``.
    Hits get two extra steps so the returned points lie on the surface to ~1e-6.
    """
    t = t_near.clone()
    hit = torch.zeros_like(t, dtype=torch.bool)
    idx = torch.nonzero(t_near < t_far).squeeze(1)
    d, tt, tf = dirs[idx], t[idx], t_far[idx]
    dist = torch.full_like(tt, float("inf"))
    for _ in range(max_steps):
        if idx.numel() == 0:
            break
        dist = shape.sdf(origin + d * tt[:, None])
        tt = tt + dist
        done_hit = dist < eps * tt
        finished = done_hit | (tt > tf)
        if finished.any():
            t[idx[finished]] = tt[finished]
            hit[idx[done_hit]] = True
            keep = ~finished
            idx, d, tt, tf, dist = idx[keep], d[keep], tt[keep], tf[keep], dist[keep]
    if idx.numel():
        grazing = dist < 4 * eps * tt
        t[idx] = tt
        hit[idx[grazing]] = True
    hi = torch.nonzero(hit).squeeze(1)
    for _ in range(2):
        t[hi] = t[hi] + shape.sdf(origin + dirs[hi] * t[hi, None])
    return t, hit


def cone_march(
    shape: SynthShape,
    origin: Tensor,  # [3]
    dirs: Tensor,  # [N, 3] unit axes of the cones
    t_near: Tensor,  # [N]
    t_far: Tensor,  # [N]
    k: float,  # cone half-width per unit distance (every ray to refine lies within it)
    max_steps: int = 96,
) -> Tensor:  # [N] distance up to which each whole cone is empty
    """Conservative start distances for bundles of rays (cone marching).

    Each step advances by ``(d - k t) / (1 + k)``: by the triangle inequality every point of the
    cone up to there lies inside the empty ball of radius ``d`` around the axis point, so the
    union of the balls covers the cone. Marching stops where the cone touches the surface (or
    leaves the box); any ray inside the cone can start there without skipping geometry.
    """
    t = t_near.clone()
    idx = torch.nonzero(t_near < t_far).squeeze(1)
    d, tt, tf = dirs[idx], t[idx], t_far[idx]
    for _ in range(max_steps):
        if idx.numel() == 0:
            break
        gap = shape.sdf(origin + d * tt[:, None]) - k * tt
        stop = gap < 0.25 * k * tt
        tt = torch.where(stop, tt, tt + gap / (1 + k))
        finished = stop | (tt > tf)
        if finished.any():
            t[idx[finished]] = tt[finished]
            keep = ~finished
            idx, d, tt, tf = idx[keep], d[keep], tt[keep], tf[keep]
    t[idx] = tt
    return t


def _soft_shadow(shape: SynthShape, points: Tensor, light: Tensor, steps: int = 16, k: float = 10.0) -> Tensor:  # [N]
    """Penumbra factor in [0, 1] towards a directional light (Quilez's soft-shadow march).

    The object fits the unit cube, so marching stops after 1.2 units."""
    res = torch.ones(points.shape[0])
    t = torch.full_like(res, 0.02)
    idx = torch.arange(points.shape[0])
    for _ in range(steps):
        if idx.numel() == 0:
            break
        h = shape.sdf(points[idx] + light * t[idx, None])
        res[idx] = torch.minimum(res[idx], (k * h / t[idx]).clamp(min=0))
        t[idx] = t[idx] + h.clamp(0.02, 0.25)
        res[idx[h <= 1e-4]] = 0.0
        idx = idx[(h > 1e-4) & (t[idx] < 1.2)]
    return res * res * (3 - 2 * res)


def _ambient_occlusion(shape: SynthShape, points: Tensor, normals: Tensor) -> Tensor:  # [N]
    occ = torch.zeros(points.shape[0])
    w = 1.0
    for i in range(1, 5):
        h = 0.015 * i
        occ = occ + w * (h - shape.sdf(points + normals * h))
        w *= 0.7
    return (1 - 4.0 * occ).clamp(0, 1)


def _shade(
    shape: SynthShape, points: Tensor, dirs: Tensor, parts: Tensor, mat: Material, R: Tensor
) -> Tensor:  # [N, 3]
    """sRGB colours in [0, 1] of surface points seen along ``dirs`` (object frame)."""
    if points.shape[0] == 0:
        return points.new_zeros(0, 3)
    n = shape.gradient(points)
    light = R.T @ torch.as_tensor(mat.light_cam, dtype=torch.float32)  # object frame
    ndl = (n @ light).clamp(min=0)
    shadow = torch.zeros_like(ndl)  # surfaces facing away from the light need no shadow ray
    lit = ndl > 0
    shadow[lit] = _soft_shadow(shape, points[lit] + n[lit] * 2e-3, light)
    hemi = (0.5 + 0.5 * n[:, 1])[:, None]
    sky, ground = (torch.as_tensor(c, dtype=torch.float32) for c in (mat.sky, mat.ground))
    ambient = mat.ambient * (ground + hemi * (sky - ground)) * _ambient_occlusion(shape, points, n)[:, None]
    base = torch.as_tensor(mat.colors, dtype=torch.float32)[parts.clamp(max=len(mat.colors) - 1)]
    albedo = getattr(shape, "albedo", None)  # a surface's own colours (a mesh's textures), where it has them
    own = albedo(points) if callable(albedo) else None
    if own is not None:
        base = torch.where(torch.isnan(own), base, own)
    half = light[None] - dirs
    half = half / half.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    spec = mat.specular * (n * half).sum(-1).clamp(min=0) ** mat.shininess * (ndl > 0)
    direct = (mat.key * ndl * shadow)[:, None]
    linear = base * (ambient + direct) + (mat.key * spec * shadow)[:, None]
    return linear.clamp(0, 1) ** (1 / 2.2)


def _rays(K: np.ndarray, Rt: np.ndarray, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unit ray directions in the object frame, their camera-frame z per unit length, the camera
    centre and R, for pixel coordinates ``xs``, ``ys`` [N]."""
    Kinv = torch.as_tensor(np.linalg.inv(K), dtype=torch.float32)
    R = torch.as_tensor(Rt[:, :3], dtype=torch.float32)
    t = torch.as_tensor(Rt[:, 3], dtype=torch.float32)
    pix = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)
    cam = pix @ Kinv.T  # [N, 3], z = 1
    norm = cam.norm(dim=-1)
    dirs = (cam / norm[:, None]) @ R  # R^T d for each row
    origin = -(R.T @ t)
    return dirs, 1.0 / norm, origin, R


def _trace_pixels(
    shape: SynthShape,
    view: View,
    xs: Tensor,  # [N] pixel columns
    ys: Tensor,  # [N] pixel rows
    start: Tensor,  # [N] distances the rays may safely start from (cone marching)
    mat: Material,
    box: tuple[Tensor, Tensor],
):
    dirs, z_per_t, origin, R = _rays(view.K, view.Rt, xs, ys)
    near, far = _ray_box(origin, dirs, *box)
    eps = 0.05 / float(view.K[0, 0])  # a twentieth of a pixel
    t, hit = sphere_trace(shape, origin, dirs, torch.maximum(near, start), far, eps)
    points = origin + dirs[hit] * t[hit, None]
    _, parts = shape.sdf_part(points)
    color = torch.ones(len(xs), 3)
    color[hit] = _shade(shape, points, dirs[hit], parts, mat, R)
    depth = torch.where(hit, t * z_per_t, torch.zeros_like(t))
    part = torch.full((len(xs),), -1, dtype=torch.long)
    part[hit] = parts
    return color, depth, hit, part


@torch.no_grad()
def render(shape: SynthShape, view: View, material: Material, antialias: bool = True, block: int = 4) -> RenderResult:
    """Render ``shape`` from ``view`` over white.

    A first pass marches one cone per ``block x block`` pixels (:func:`cone_march`); every pixel
    ray of the block, and its antialiasing sub-rays, then starts where its cone met the surface.
    """
    S = view.size
    lo, hi = shape.bounds()
    box = (torch.as_tensor(lo, dtype=torch.float32) - 1e-3, torch.as_tensor(hi, dtype=torch.float32) + 1e-3)
    nb = math.ceil(S / block)
    centers = torch.arange(nb, dtype=torch.float32) * block + (block - 1) / 2
    cy, cx = torch.meshgrid(centers, centers, indexing="ij")
    cdirs, _, origin, _ = _rays(view.K, view.Rt, cx.reshape(-1), cy.reshape(-1))
    cnear, cfar = _ray_box(origin, cdirs, *box)
    # angular radius of a block (plus antialiasing offsets) seen from the camera, with margin
    k = 1.1 * math.sqrt(2) * ((block - 1) / 2 + 0.25) / float(min(view.K[0, 0], view.K[1, 1]))
    cstart = cone_march(shape, origin, cdirs, cnear, cfar, k) * (1 - k)
    cstart = torch.where(cnear < cfar, cstart, torch.full_like(cstart, float("inf"))).reshape(nb, nb)

    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    start = cstart.repeat_interleave(block, 0).repeat_interleave(block, 1)[:S, :S]
    color, depth, hit, part = _trace_pixels(
        shape, view, xs.reshape(-1), ys.reshape(-1), start.reshape(-1), material, box
    )
    color, depth, hit, part = color.reshape(S, S, 3), depth.reshape(S, S), hit.reshape(S, S), part.reshape(S, S)
    alpha = hit.float()
    if antialias:
        # silhouette pixels: a 4-neighbour with the other hit status
        h = torch.nn.functional.pad(hit[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        edge = (h[1:-1, :-2] != h[1:-1, 1:-1]) | (h[1:-1, 2:] != h[1:-1, 1:-1])
        edge |= (h[:-2, 1:-1] != h[1:-1, 1:-1]) | (h[2:, 1:-1] != h[1:-1, 1:-1])
        ey, ex = torch.nonzero(edge, as_tuple=True)
        if len(ey):
            offsets = torch.tensor([[-0.25, -0.25], [0.25, -0.25], [-0.25, 0.25], [0.25, 0.25]])
            sx = (ex[:, None].float() + offsets[None, :, 0]).reshape(-1)
            sy = (ey[:, None].float() + offsets[None, :, 1]).reshape(-1)
            sstart = start[ey, ex].repeat_interleave(4)
            c, _, sh, _ = _trace_pixels(shape, view, sx, sy, sstart, material, box)
            color[ey, ex] = c.reshape(-1, 4, 3).mean(dim=1)
            alpha[ey, ex] = sh.reshape(-1, 4).float().mean(dim=1)
    image = (color.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    return RenderResult(
        image=image, alpha=alpha.numpy(), depth=depth.numpy().astype(np.float32), part=part.numpy().astype(np.int16)
    )
