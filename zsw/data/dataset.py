"""Training data in ZeroShape's layout: released ZeroShape data and zsw's procedural data alike.

:class:`ShapeDataset` reads one or more dataset roots (a root holds ``lists/``; a folder of such
roots, like ZeroShape's ``train_data/`` with ``objaverse_LVIS`` and ``ShapeNet55``, is expanded)
and returns, per view, a dict of tensors:

==================  ================  =======================================================
key                 shape             content
==================  ================  =======================================================
``image``           [3, S, S] float   RGB in [0, 1] as the model sees it (after augmentation;
                                      the view as read when ``with_appearance`` is off)
``depth``           [1, S, S] float   camera z of the *visible* object, 0 elsewhere
``intrinsics``      [3, 3]            K in pixels at S
``extrinsics``      [3, 4]            [R|t], object -> camera
``visible_mask``    [1, S, S] float   1 where the object is visible
``occluder_mask``   [1, S, S] float   1 on occluders in front of it
``points``          [P, 3]            query points, object frame (P = 4096 by default)
``sdf``             [P]               their SDF
``occupancy``       [P] float         ``sdf - 0.003 < 0`` (ZeroShape's label), or soft targets (``label_softness``)
``pseudo_depth``    [1, S, S] float   relative inverse depth (Depth Anything V2), 0 if absent
``pseudo_valid``    [1, S, S] float   1 where ``pseudo_depth`` applies to the image
``category``        str               the sample's category (for ``prompts: category``)
``index``           int               dataset index of the sample
``skipped``         int               unreadable samples passed over to produce this one
==================  ================  =======================================================

Augmentation (training): a random background (solid, gradient, noise, photos from a folder)
for images that have none (white around the object), then 0-2 copy-paste occluders cut from other
samples with a similar focal length (:mod:`zsw.data.occluders`), the object's texture and the
photometric jitter as configured. ``with_appearance=False`` (the trainer's stage ``shape``, whose
model never looks at the image) leaves out everything that only changes colours -- backgrounds,
textures, jitter, the occluders' colours -- and keeps what changes the geometry: the same zoom-out
and the same occluder silhouettes in the masks and the depth. All randomness of item ``i`` in
epoch ``e`` comes from ``SeedSequence([seed, e, i])``: the data are the same for any number of
DataLoader workers and after resuming a run.

Unreadable or inconsistent samples (missing or corrupt files, wrong shapes, non-finite values) are
skipped with a logged warning: the item is replaced by the next readable one, and its ``skipped``
field counts the replacements so the trainer can report them. An epoch never crashes on bad data.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsw.data.layout import SampleId, ZeroShapeLayout, load_npy
from zsw.errors import ConfigError, InputError, ZswError

__all__ = ["AugmentConfig", "ShapeDataset", "expand_roots", "zoom_out", "READ_ERRORS"]

log = logging.getLogger(__name__)

#: exceptions that mean "this sample's files are unusable" (skip it, never crash the epoch)
READ_ERRORS = (InputError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly augmentation of training samples (ZeroShape-W's occlusion simulation)."""

    # number of copy-paste occluders per sample, uniform in [min, max]
    occluders: tuple[int, int] = (0, 2)
    # occluder size: its longer side as a fraction of the image side
    occluder_scale: tuple[float, float] = (0.4, 0.6)
    # occluder sources: |log(f_source / f_target)| at most this (focal lengths from K)
    focal_tolerance: float = 0.25
    # candidates tried before taking the closest focal length
    focal_tries: int = 8
    # a paste may not hide more than 1 - min_visible of the object
    min_visible: float = 0.3
    # "auto": composite a background only when the image has none (white around the object)
    backgrounds: str = "auto"
    background_kinds: tuple[str, ...] = ("solid", "gradient", "noise")
    background_dir: str | None = None
    # photometric jitter of the final image, 0 = off: brightness, contrast, saturation and
    # per-channel gains within +-strength, plus (each with probability 1/3) a Gaussian blur and
    # sensor noise, so that a model trained on one renderer meets other renderers and cameras
    color_jitter: float = 0.0
    # probability that the object (and, independently, each pasted occluder) is printed with a
    # texture (fractal noise or a photo crop, see zsw.data.backgrounds.texture_object): renders are
    # flat-coloured, real objects are not
    object_texture: float = 0.0
    # probability that a sample rendered on white is shown smaller: the whole render shrunk by a
    # factor drawn from zoom_range and put at a random place of the frame (K, depth and masks
    # follow; pasted occluders shrink alike), so that the pixel model also meets objects that do
    # not fill the photo -- renders are cropped tightly around the object, photos are not
    zoom_out: float = 0.0
    zoom_range: tuple[float, float] = (0.45, 1.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.color_jitter <= 1.0:
            raise ConfigError(f"augment.color_jitter must be in [0, 1], got {self.color_jitter}")
        if not 0.0 <= self.object_texture <= 1.0:
            raise ConfigError(f"augment.object_texture must be in [0, 1], got {self.object_texture}")
        if not 0.0 <= self.zoom_out <= 1.0:
            raise ConfigError(f"augment.zoom_out must be in [0, 1], got {self.zoom_out}")
        z0, z1 = self.zoom_range
        if not 0.1 <= z0 <= z1 <= 1.0:
            raise ConfigError(f"augment.zoom_range must be 0.1 <= min <= max <= 1, got {list(self.zoom_range)}")
        if self.backgrounds not in ("auto", "always", "never"):
            raise ConfigError(f"augment.backgrounds must be auto, always or never, got {self.backgrounds!r}")
        lo, hi = self.occluders
        if not 0 <= lo <= hi:
            raise ConfigError(f"augment.occluders must be [min, max] with 0 <= min <= max, got {list(self.occluders)}")
        a, b = self.occluder_scale
        if not 0 < a <= b <= 1.5:
            raise ConfigError(f"augment.occluder_scale must be 0 < min <= max <= 1.5, got {list(self.occluder_scale)}")


def expand_roots(roots: str | os.PathLike | list | tuple) -> list[Path]:
    """Dataset roots: each given folder if it has ``lists/``, else its subfolders that do."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    out = []
    for r in roots:
        r = Path(r)
        if not r.is_dir():
            raise ConfigError(f"dataset folder {r} {'is a file' if r.exists() else 'does not exist'}")
        if (r / "lists").is_dir():
            out.append(r)
            continue
        subs = sorted(p for p in r.iterdir() if (p / "lists").is_dir())
        if not subs:
            raise ConfigError(f"{r} is not a dataset in ZeroShape's layout (no lists/ folder in it or its subfolders)")
        out.extend(subs)
    seen: dict[Path, Path] = {}
    for r in out:  # `--data d --data d`, or a folder and one of its datasets: each sample would count twice
        if (key := r.resolve()) in seen:
            raise ConfigError(f"dataset {r} is given twice (also as {seen[key]}): its samples would count twice")
        seen[key] = r
    return out


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(message)


def _resized(a: np.ndarray, size: int, smooth: bool = False) -> np.ndarray:  # [N, N] -> [size, size]
    """A view's per-pixel map at the model's size: nearest neighbour (depth, masks: no values
    between the object and the background), bilinear for ``smooth`` coverage. As is when it fits."""
    if a.shape == (size, size):
        return a
    from PIL import Image

    dtype = a.dtype
    plane = Image.fromarray(a.astype(np.float32))  # mode F
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    out = np.array(plane.resize((size, size), resample))  # writable: augmentation edits it
    return out > 0.5 if dtype == np.bool_ else out.astype(dtype)


@dataclass
class _Sample:
    image: np.ndarray  # [S, S, 3] uint8
    alpha: np.ndarray  # [S, S] float coverage of the whole object
    depth: np.ndarray  # [S, S] float32
    K: np.ndarray  # [3, 3]
    Rt: np.ndarray  # [3, 4]
    visible: np.ndarray  # [S, S] bool
    occluder: np.ndarray  # [S, S] bool
    pseudo: np.ndarray | None = None  # [S, S] float32
    extra: dict[str, Any] = field(default_factory=dict)


def zoom_out(s: _Sample, zoom: float, rng: np.random.Generator) -> _Sample:
    """``s`` shrunk by ``zoom`` into a white frame of the same size at a random place.

    The camera is unchanged: a pixel ``u`` of the render moves to ``zoom * (u + 0.5) - 0.5 +
    offset`` (pixel centres at integers, as the intrinsics use them), so ``fx, fy`` scale by
    ``zoom`` and ``cx, cy`` move alike; depth values, extrinsics and the shape stay. Depth and the
    masks are resampled by nearest neighbour (no depth is mixed across the silhouette), the image
    by Lanczos and the coverage alpha bilinearly. The pseudo-depth is dropped.
    """
    from PIL import Image

    S = s.image.shape[0]
    n = max(8, int(round(zoom * S)))
    zoom = n / S
    ox, oy = (int(v) for v in rng.integers(0, S - n + 1, size=2))

    def place(a: np.ndarray, fill, resample) -> np.ndarray:
        out = np.full(a.shape, fill, dtype=a.dtype)
        small = np.asarray(Image.fromarray(a).resize((n, n), resample))
        out[oy : oy + n, ox : ox + n] = small.astype(a.dtype)
        return out

    nearest, bilinear = Image.Resampling.NEAREST, Image.Resampling.BILINEAR
    K = s.K.copy()
    K[0, 0], K[1, 1] = s.K[0, 0] * zoom, s.K[1, 1] * zoom
    K[0, 2] = zoom * (s.K[0, 2] + 0.5) - 0.5 + ox
    K[1, 2] = zoom * (s.K[1, 2] + 0.5) - 0.5 + oy

    def mask(m: np.ndarray) -> np.ndarray:
        return place(m.astype(np.uint8), 0, nearest).astype(bool)

    depth = place(s.depth.astype(np.float32), 0.0, nearest)
    visible = mask(s.visible) & (depth > 0)
    return _Sample(
        place(s.image, 255, Image.Resampling.LANCZOS), place(s.alpha.astype(np.float32), 0.0, bilinear),
        np.where(visible, depth, 0).astype(np.float32), K, s.Rt, visible, mask(s.occluder), None,
        {**s.extra, "zoom": zoom},
    )  # fmt: skip


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Photometric jitter of an ``[H, W, 3]`` uint8 image (see ``AugmentConfig.color_jitter``)."""
    from scipy.ndimage import gaussian_filter

    def amount() -> float:
        return float(rng.uniform(1 - strength, 1 + strength))

    # brightness b, contrast c (around the image's mean), saturation s (around each pixel's grey)
    # and per-channel gains w, in this order on x = image / 255, are one affine map of each
    # pixel's colour: w * (c b (s x + (1 - s) grey(x)) + (1 - c) b mean(x)). It runs as one
    # map of the image's channel planes, in units of 255 (numpy is slow on a last axis of 3)
    b, c, s = amount(), amount(), amount()
    w = rng.uniform(1 - strength / 2, 1 + strength / 2, size=3)
    H, W, C = image.shape
    mean = float(image.sum(dtype=np.int64)) / image.size
    M = (w[:, None] * (c * b)) * (s * np.eye(C) + (1 - s) / C)
    offset = w * ((1 - c) * b * mean)
    planes = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)  # [C, H, W]
    M, offset = M.astype(np.float32), offset.astype(np.float32)
    y = np.empty_like(planes)
    for k in range(C):  # not `M @ planes`: numpy's BLAS threads, and sums whose order depends on them
        np.multiply(planes[0], M[k, 0], out=y[k])
        for j in range(1, C):
            y[k] += planes[j] * M[k, j]
        y[k] += offset[k]
    if rng.random() < 1 / 3:
        y = gaussian_filter(y, sigma=(0, rng.uniform(0.3, 1.2), rng.uniform(0.3, 1.2)))
    if rng.random() < 1 / 3:
        y += rng.normal(0, 255 * rng.uniform(0.005, 0.03), size=(H, W, C)).transpose(2, 0, 1)
    np.clip(y, 0, 255, out=y)
    np.rint(y, out=y)
    return np.ascontiguousarray(y.astype(np.uint8).transpose(1, 2, 0))


def _draw(indices: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``indices`` in random order: without replacement when there are enough, else with."""
    if len(indices) >= k:  # the first k of a random permutation, without permuting all of them
        return indices[rng.choice(len(indices), k, replace=False)]
    return indices[rng.integers(0, len(indices), k)]


class ShapeDataset:
    """Views of one split over dataset roots in ZeroShape's layout (a map-style torch Dataset).

    Args:
        roots: dataset folder(s), see :func:`expand_roots`.
        split: ``train``, ``val`` or ``test``.
        points: query points per sample (ZeroShape: 4096), drawn without replacement from the
            object's SDF samples (with replacement if it has fewer).
        augment: augmentation config; None disables it (validation).
        seed: base seed of all per-item randomness.
        size: image size the model expects (images are resized; depth and masks must match).
        sdf_offset: occupancy label ``sdf - sdf_offset < 0`` (ZeroShape: 0.003).
        label_softness: 0 for those hard labels; ``w > 0`` gives ``sigmoid(-(sdf - sdf_offset) / w)``,
            the same 0.5 level set with a field that changes smoothly within a few ``w`` of it.
        max_per_category: keep at most this many views per category (ZeroShape's val: 10).
        with_shape: load SDF samples (False for pixel-only use).
        with_appearance: False leaves the image as read and skips the augmentation of its colours
            (backgrounds, textures, jitter, occluders' colours: two thirds of an item's time);
            depth, masks and points are augmented as with True, from other random numbers (the
            colour draws are not made). For models that do not look at the image (stage shape).
        far_fraction: None draws the query points uniformly from the object's SDF samples (as
            ZeroShape). A number draws this fraction from the samples farther than ``near_band``
            from the surface and the rest from the nearer ones. SDF files hold mostly
            near-surface samples (ZeroShape's and zsw's: 3/4 within ~1 % of the object's size),
            so uniform draws spend most of the loss on sub-percent surface precision and little on
            the coarse shape (holes, legs, the far side).
        near_band: the near/far boundary, as a fraction of the extent of the object's samples
            (the largest side of their bounding box).
    """

    def __init__(
        self,
        roots,
        split: str = "train",
        *,
        points: int = 4096,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        size: int = 224,
        sdf_offset: float = 0.003,
        label_softness: float = 0.0,
        max_per_category: int | None = None,
        with_shape: bool = True,
        with_appearance: bool = True,
        far_fraction: float | None = None,
        near_band: float = 0.02,
    ):
        if far_fraction is not None and not 0.0 <= far_fraction <= 1.0:
            raise ConfigError(f"far_fraction must be in [0, 1], got {far_fraction}")
        if not near_band > 0.0:
            raise ConfigError(f"near_band must be > 0, got {near_band}")
        self.far_fraction = far_fraction
        self.near_band = near_band
        self.layouts = [ZeroShapeLayout(r) for r in expand_roots(roots)]
        self.items: list[tuple[int, SampleId]] = []
        for li, layout in enumerate(self.layouts):
            for cat in layout.categories():
                try:
                    sids = layout.read_list(cat, split)
                except InputError as e:
                    raise ConfigError(f"{layout.list_file(cat, split)}: {e}") from None
                if max_per_category is not None:
                    sids = sids[:max_per_category]
                self.items.extend((li, sid) for sid in sids)
        if not self.items:
            raise ConfigError(f"no {split} samples in {', '.join(str(x.root) for x in self.layouts)}")
        self.split = split
        self.points = points
        self.augment = augment
        self.seed = seed
        self.size = size
        self.sdf_offset = sdf_offset
        if not (math.isfinite(label_softness) and label_softness >= 0):
            raise ConfigError(f"label_softness must be a finite number >= 0, got {label_softness}")
        self.label_softness = label_softness
        self.with_shape = with_shape
        self.with_appearance = with_appearance
        self.epoch = 0
        self.skipped = 0  # in this process
        self._focal: dict[int, float] = {}
        self._backgrounds = None
        if augment is not None and augment.backgrounds != "never":
            from zsw.data.backgrounds import Backgrounds

            self._backgrounds = Backgrounds(augment.background_kinds, augment.background_dir)
        self._textures = None
        if augment is not None and augment.object_texture > 0:
            from zsw.data.backgrounds import Backgrounds

            self._textures = Backgrounds(("noise", "photo"))

    def _texture(self, image: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``image`` (an object over white) printed with a random texture with probability
        ``augment.object_texture``; the rng is untouched when the option is off."""
        from zsw.data.backgrounds import texture_object

        if self._textures is None or rng.random() >= self.augment.object_texture:
            return image
        texture = self._textures.sample(rng, image.shape[0])
        return texture_object(image, alpha, texture, float(rng.uniform(0.4, 1.0)))

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of ``epoch`` (call before iterating, in every process)."""
        self.epoch = int(epoch)

    def name(self, index: int) -> str:
        li, sid = self.items[index]
        return f"{self.layouts[li].root.name}/{sid.name}"

    def sample_id(self, index: int) -> tuple[ZeroShapeLayout, SampleId]:
        li, sid = self.items[index]
        return self.layouts[li], sid

    # ---- reading ------------------------------------------------------------------------------

    def _read(self, index: int) -> _Sample:
        from PIL import Image

        layout, sid = self.sample_id(index)
        S = self.size
        image = layout.read_image(sid)
        if image.shape[:2] != (S, S):  # ZeroShape resizes images that are not at the model size
            image = np.array(Image.fromarray(image).resize((S, S), Image.Resampling.BILINEAR))  # writable
        # each path once (the messages below are formatted whether or not they are raised)
        depth_path, intr_path, extr_path = layout.depth(sid), layout.intrinsics(sid), layout.extrinsics(sid)
        mask_path, visible_path = layout.mask(sid), layout.visible_mask(sid)
        occluder_path, pseudo_path = layout.occluder_mask(sid), layout.pseudo_depth(sid)
        depth = load_npy(depth_path)
        N = depth.shape[0] if depth.ndim == 2 and depth.shape[0] == depth.shape[1] else 0
        _check(N > 0, f"depth {depth_path} has shape {depth.shape}, expected a square ({S}, {S})")
        depth = _resized(depth.astype(np.float32, copy=False), S)  # data at another size than the model's: resampled
        _check(bool(np.isfinite(depth).all()), f"depth {depth_path} holds non-finite values")
        K = load_npy(intr_path).astype(np.float32)
        good_k = K.shape == (3, 3) and bool(np.isfinite(K).all()) and K[0, 0] > 0
        _check(good_k, f"bad intrinsics {intr_path}")
        if N != S:  # K in pixels of the resized views: u' = s u + (s - 1) / 2 with integer pixel centres
            s = S / N
            K = K.copy()
            K[:2] *= s
            K[:2, 2] += (s - 1) / 2
        Rt = load_npy(extr_path).astype(np.float32)
        _check(Rt.ndim == 2 and Rt.shape[0] >= 3 and Rt.shape[1] >= 4, f"bad extrinsics {extr_path}")
        Rt = Rt[:3, :4]
        _check(bool(np.isfinite(Rt).all()), f"extrinsics {extr_path} hold non-finite values")
        obj = depth > 0
        alpha = layout.read_alpha(sid) if mask_path.is_file() else obj.astype(np.float32)
        _check(alpha.shape == (S, S) or alpha.shape == (N, N),
               f"mask {mask_path} has shape {alpha.shape}, expected ({N}, {N}) as its depth")  # fmt: skip
        alpha = _resized(alpha, S, smooth=True)
        visible = obj
        if visible_path.is_file():
            visible = layout.read_mask(visible_path)
            _check(visible.shape in ((N, N), (S, S)), f"visible mask of {sid.name} has shape {visible.shape}")
            visible = _resized(visible, S) & obj
        occluder = np.zeros((S, S), dtype=bool)
        if occluder_path.is_file():
            occluder = layout.read_mask(occluder_path)
            _check(occluder.shape == (N, N), f"occluder mask of {sid.name} has shape {occluder.shape}")
            occluder = _resized(occluder, S)
        _check(bool(visible.any()), f"{sid.name} has no visible object pixel (empty depth)")
        pseudo = None
        if pseudo_path.is_file():
            pseudo = load_npy(pseudo_path).astype(np.float32)
            _check(pseudo.shape == (N, N) and bool(np.isfinite(pseudo).all()), f"bad pseudo-depth of {sid.name}")
            pseudo = _resized(pseudo, S)
        return _Sample(image, alpha, np.where(visible, depth, 0).astype(np.float32), K, Rt, visible, occluder, pseudo)

    def _read_points(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        layout, sid = self.sample_id(index)
        pts, sdf = layout.read_gt_sdf(sid)
        good = pts.ndim == 2 and pts.shape[1] == 3 and len(pts) == len(sdf) and len(pts) > 0
        _check(good, f"{layout.gt_sdf(sid)} holds points {pts.shape} and sdf {sdf.shape}")
        _check(bool(np.isfinite(pts).all() and np.isfinite(sdf).all()), f"{layout.gt_sdf(sid)} holds non-finite values")
        if self.far_fraction is None:
            pick = _draw(np.arange(len(pts)), self.points, rng)
            return pts[pick], sdf[pick]
        # column by column: numpy's reductions over axis 0 of [N, 3] are many times slower
        extent = max(float(pts[:, k].max() - pts[:, k].min()) for k in range(3))
        far = np.abs(sdf) >= self.near_band * extent
        n_far = int(round(self.points * self.far_fraction))
        far_idx, near_idx = np.flatnonzero(far), np.flatnonzero(~far)
        if not len(far_idx):  # one side empty: take everything from the other
            far_idx, n_far = near_idx, n_far
        if not len(near_idx):
            near_idx = far_idx
        pick = np.concatenate([_draw(far_idx, n_far, rng), _draw(near_idx, self.points - n_far, rng)])
        return pts[pick], sdf[pick]

    def occupancy_labels(self, sdf: np.ndarray) -> np.ndarray:
        """The occupancy targets of SDF values: 0/1, or soft within ``label_softness`` of the surface."""
        inside = self.sdf_offset - np.asarray(sdf, dtype=np.float64)
        if self.label_softness == 0:
            return (inside > 0).astype(np.float32)
        return (0.5 * (1.0 + np.tanh(0.5 * inside / self.label_softness))).astype(np.float32)  # sigmoid, no overflow

    def focal(self, index: int) -> float:
        """K[0, 0] of a sample (cached), used to match occluders to targets."""
        if index not in self._focal:
            layout, sid = self.sample_id(index)
            self._focal[index] = float(np.load(layout.intrinsics(sid), allow_pickle=False).reshape(-1)[0])
        return self._focal[index]

    # ---- augmentation -------------------------------------------------------------------------

    def _occluder(self, index: int, rng: np.random.Generator):
        """An occluder cut from another object with a similar focal length (None if none found)."""
        from zsw.data.backgrounds import is_plain_white
        from zsw.data.occluders import Occluder

        aug = self.augment
        _, target = self.sample_id(index)
        f0 = self.focal(index)
        best, best_gap = None, math.inf
        for _ in range(aug.focal_tries):
            j = int(rng.integers(len(self)))
            _, sid = self.sample_id(j)
            if (sid.category, sid.object) == (target.category, target.object):
                continue
            try:
                gap = abs(math.log(max(self.focal(j), 1e-6) / max(f0, 1e-6)))
            except READ_ERRORS:
                continue
            if gap < best_gap:
                best, best_gap = j, gap
            if gap <= aug.focal_tolerance:
                break
        if best is None:
            return None
        try:
            src = self._read(best)
        except READ_ERRORS as e:
            self.skipped += 1
            log.warning("skipping occluder source %s: %s", self.name(best), e)
            return None
        alpha = src.alpha * src.visible  # only what is visible of the source object
        if not self.with_appearance:
            return Occluder.from_render(None, alpha)
        over_white = is_plain_white(src.image, src.alpha > 0)
        image = self._texture(src.image, src.alpha, rng) if over_white else src.image
        return Occluder.from_render(image, alpha, over_white=over_white)

    def _augment(self, index: int, s: _Sample, rng: np.random.Generator) -> _Sample:
        from zsw.data.backgrounds import composite, is_plain_white
        from zsw.data.occluders import paste_occluders

        aug = self.augment
        occluder_scale = aug.occluder_scale
        if aug.zoom_out > 0 and rng.random() < aug.zoom_out and is_plain_white(s.image, s.alpha > 0):
            s = zoom_out(s, float(rng.uniform(*aug.zoom_range)), rng)
            occluder_scale = tuple(v * s.extra["zoom"] for v in occluder_scale)
        if self.with_appearance and (self._backgrounds is not None or self._textures is not None):
            plain = is_plain_white(s.image, s.alpha > 0) or is_plain_white(s.image, s.depth > 0)
            if plain:  # a texture changes the albedo, not the geometry the pseudo-depth labels
                s.image = self._texture(s.image, s.alpha, rng)
            if self._backgrounds is not None and (aug.backgrounds == "always" or plain):
                s.image = composite(s.image, s.alpha, self._backgrounds.sample(rng, self.size))
                s.pseudo = None  # computed for another image
                s.extra["background"] = True
        n = int(rng.integers(aug.occluders[0], aug.occluders[1] + 1))
        occs = [o for o in (self._occluder(index, rng) for _ in range(n)) if o is not None]
        if occs:
            before = s.occluder
            image = s.image if self.with_appearance else None
            p = paste_occluders(
                image, s.visible, s.depth, occs, rng, occluder_scale, aug.min_visible, occluder=s.occluder
            )
            s.visible, s.occluder, s.depth = p.visible, p.occluder, p.depth
            if p.image is not None:
                s.image = p.image
            s.extra["pasted"] = p.occluder & ~before
        if aug.color_jitter > 0 and self.with_appearance:
            s.image = color_jitter(s.image, aug.color_jitter, rng)
        return s

    # ---- items --------------------------------------------------------------------------------

    def _rng(self, index: int, attempt: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index, attempt]))

    def _item(self, index: int, attempt: int) -> dict:
        import torch

        rng = self._rng(index, attempt)
        s = self._read(index)
        pts, sdf = self._read_points(index, rng) if self.with_shape else (np.zeros((0, 3)), np.zeros(0))
        if self.augment is not None:
            s = self._augment(index, s, rng)
        S = self.size
        pseudo_valid = np.zeros((S, S), dtype=bool)
        pseudo = np.zeros((S, S), dtype=np.float32)
        if s.pseudo is not None:
            pseudo = s.pseudo
            pseudo_valid = ~s.extra.get("pasted", np.zeros((S, S), dtype=bool))

        def img(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]

        return {
            "image": torch.from_numpy(np.ascontiguousarray(s.image.transpose(2, 0, 1))).float() / 255.0,
            "depth": img(s.depth),
            "intrinsics": torch.from_numpy(s.K),
            "extrinsics": torch.from_numpy(np.ascontiguousarray(s.Rt)),
            "visible_mask": img(s.visible),
            "occluder_mask": img(s.occluder),
            "points": torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32)),
            "sdf": torch.from_numpy(np.ascontiguousarray(sdf, dtype=np.float32)),
            "occupancy": torch.from_numpy(self.occupancy_labels(sdf)),
            "pseudo_depth": img(pseudo),
            "pseudo_valid": img(pseudo_valid),
            "category": self.sample_id(index)[1].category,
            "index": index,
            "skipped": attempt,
        }

    def __getitem__(self, index: int) -> dict:
        """Sample ``index``, or the next readable one (see the module docstring)."""
        last = None
        for attempt in range(min(len(self), 32)):
            j = (index + attempt) % len(self)
            try:
                return self._item(j, attempt)
            except READ_ERRORS as e:
                self.skipped += 1
                last = e
                log.warning("skipping unreadable sample %s: %s (%d skipped so far)", self.name(j), e, self.skipped)
        n = min(len(self), 32)
        raise ZswError(f"{n} consecutive samples from {self.name(index)} on are unreadable; last: {last}")
