"""Random backgrounds for object images that have none, and alpha compositing.

ZeroShape's training renders (and zsw's procedural renders) show the object over white. ZeroShape-W
trains on objects in context, so images without a background get one on the fly: a solid colour,
a two-colour gradient, fractal value noise, a random crop of one of the photos that ship with
scikit-image (``photo``: street, space, cat, coffee, astronaut, textures; offline, no folder
needed), or a random crop of a photo from a folder.

Example::

    bg = Backgrounds(kinds=("solid", "gradient", "noise"), folder="photos/")
    rgb = composite(image_on_white, alpha, bg.sample(np.random.default_rng(0), 224))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zsw.errors import ConfigError

__all__ = ["Backgrounds", "composite", "is_plain_white", "BACKGROUND_KINDS", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)

#: kinds :class:`Backgrounds` can draw ("image" needs a folder)
BACKGROUND_KINDS = ("solid", "gradient", "noise", "photo", "image")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _random_color(rng: np.random.Generator) -> np.ndarray:  # [3] float in [0, 255]
    return rng.uniform(0, 255, size=3)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """``np.clip(x, 0, 255).round().astype(np.uint8)`` (overwrites ``x``, a float array)."""
    np.clip(x, 0, 255, out=x)
    np.rint(x, out=x)
    return x.astype(np.uint8)


def _stack_channels(planes: list[np.ndarray], dtype=np.uint8) -> np.ndarray:  # 3 x [H, W] -> [H, W, 3]
    out = np.empty((*planes[0].shape, len(planes)), dtype=dtype)
    for c, plane in enumerate(planes):
        out[..., c] = plane
    return out


def _resize(array: np.ndarray, size: int, resample: str = "bicubic") -> np.ndarray:
    from PIL import Image

    mode = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[resample]
    return np.asarray(Image.fromarray(np.ascontiguousarray(array, dtype=np.float32)).resize((size, size), mode))


class Backgrounds:
    """Draws ``[size, size, 3]`` uint8 backgrounds of the given kinds, uniformly over kinds."""

    def __init__(self, kinds: Sequence[str] = ("solid", "gradient", "noise"), folder: str | os.PathLike | None = None):
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in BACKGROUND_KINDS]
        if unknown or not kinds:
            raise ConfigError(f"background kinds must be among {BACKGROUND_KINDS}, got {list(kinds)}")
        self.files: list[Path] = []
        if folder is not None:
            folder = Path(folder)
            if not folder.is_dir():
                what = "is a file, not a folder of images" if folder.exists() else "does not exist"
                raise ConfigError(f"background folder {folder} {what}")
            self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise ConfigError(f"background folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            if "image" not in kinds:
                kinds = (*kinds, "image")
        elif "image" in kinds:
            raise ConfigError("background kind 'image' needs a folder of images")
        self.kinds = kinds
        self.skipped = 0  # unreadable background images met so far
        self._photos: list[np.ndarray] | None = None  # scikit-image's sample photos, loaded once

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:  # [size, size, 3] uint8
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        if kind == "image":
            out = self._image(rng, size)
            if out is not None:
                return out
            kind = "noise"
        return getattr(self, f"_{kind}")(rng, size)

    # ---- kinds ------------------------------------------------------------------------------

    def _solid(self, rng: np.random.Generator, size: int) -> np.ndarray:
        from PIL import Image

        color = tuple(int(v) for v in _random_color(rng).round())
        return np.array(Image.new("RGB", (size, size), color))

    def _gradient(self, rng: np.random.Generator, size: int) -> np.ndarray:
        a, b = _random_color(rng), _random_color(rng)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.arange(size) / max(size - 1, 1) - 0.5  # the pixel rows' and columns' coordinates
        s = np.clip(t[None, :] * np.cos(angle) + t[:, None] * np.sin(angle) + 0.5, 0, 1)  # [size, size]
        # channel by channel: numpy is slow on a last axis of 3
        return _stack_channels([(a[c] + (b[c] - a[c]) * s).round() for c in range(3)])

    def _noise(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Fractal value noise (4 octaves) through a random three-colour ramp, plus grain."""
        base = int(rng.integers(2, 6))
        field = np.zeros((size, size), dtype=np.float32)
        amp, total = 1.0, 0.0
        for octave in range(4):
            cells = base * 2**octave
            field += amp * _resize(rng.random((cells + 1, cells + 1)), size)
            total += amp
            amp *= float(rng.uniform(0.4, 0.65))
        field = (field / total - field.mean() / total) * np.float32(rng.uniform(1.5, 3.0)) + np.float32(0.5)
        s2 = 2 * np.clip(field, 0, 1)  # [size, size] float32 in [0, 2]
        low = s2 < 1
        c0, c1, c2 = (_random_color(rng).astype(np.float32) for _ in range(3))
        # the ramp c0 -> c1 -> c2 channel by channel (numpy is slow on a last axis of 3), in float32
        ramp = _stack_channels([np.where(low, c0[c] + (c1[c] - c0[c]) * s2, c1[c] + (c2[c] - c1[c]) * (s2 - 1))
                                for c in range(3)], dtype=np.float32)  # fmt: skip
        ramp += rng.normal(0, rng.uniform(0, 6), size=ramp.shape).astype(np.float32)
        return _to_uint8(ramp)

    def _photo(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A random crop (30-100 % of the short side, mirrored half the time, colours jittered)
        of one of scikit-image's bundled sample photos."""
        from PIL import Image

        if self._photos is None:
            self._photos = sample_photos()
        photo = self._photos[int(rng.integers(len(self._photos)))]
        h, w = photo.shape[:2]
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = Image.fromarray(photo[y0 : y0 + side, x0 : x0 + side]).resize((size, size), Image.Resampling.BILINEAR)
        gain, offset = rng.uniform(0.7, 1.3, size=3), rng.uniform(-30, 30)  # per channel, for all
        # a function of each uint8 value: a lookup table, the same numbers as computing every pixel
        levels = np.arange(256, dtype=np.float32)[:, None]
        lut = np.clip(levels * gain + offset, 0, 255).round().astype(np.uint8)  # [256, 3]
        crop = crop.point(lut.T.reshape(-1).tolist())
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.array(crop)

    def _image(self, rng: np.random.Generator, size: int) -> np.ndarray | None:
        from PIL import Image, UnidentifiedImageError

        path = self.files[int(rng.integers(len(self.files)))]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                side = int(min(w, h) * rng.uniform(0.3, 1.0))
                x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
                crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BILINEAR)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            self.skipped += 1
            log.warning("skipping unreadable background image %s (%s); %d skipped so far", path, e, self.skipped)
            return None
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.array(crop)


def composite(
    image: np.ndarray,  # [H, W, 3] uint8, the object premultiplied over white
    alpha: np.ndarray,  # [H, W] float coverage in [0, 1]
    background: np.ndarray,  # [H, W, 3] uint8
) -> np.ndarray:  # [H, W, 3] uint8
    """Replace the white around (and under the antialiased edge of) an object by ``background``.

    ``image = alpha * c + (1 - alpha) * 255`` over white, so over a background it is
    ``image - (1 - alpha) * (255 - background)``.
    """
    a = np.clip(alpha, 0, 1)[..., None].astype(np.float32)
    out = image.astype(np.float32) - (1 - a) * (255 - background.astype(np.float32))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def texture_object(
    image: np.ndarray,  # [H, W, 3] uint8, the object premultiplied over white
    alpha: np.ndarray,  # [H, W] float coverage in [0, 1]
    texture: np.ndarray,  # [H, W, 3] uint8
    strength: float,  # 0 = unchanged, 1 = the object's colour times the texture normalised to mean 1
) -> np.ndarray:  # [H, W, 3] uint8, still over white
    """Print ``texture`` on an object rendered over white: each pixel's colour is multiplied by the
    texture divided by its mean over the object (per channel), blended by ``strength``.

    Procedural objects are flat-coloured and backgrounds textured, so a model learns that texture
    means background and loses a patterned sofa against a white wall. The product keeps the
    render's shading (it multiplies the albedo) and leaves the white around the object as it was.
    """
    white = (1 - np.clip(alpha, 0, 1).astype(np.float32)) * np.float32(255)  # [H, W]: (1 - alpha) * 255
    inside = np.asarray(alpha > 0.5).reshape(-1)
    channels = texture.shape[2]
    picked = texture.reshape(len(inside), channels)
    if inside.any():
        picked = np.compress(inside, picked, axis=0)
    # the mean of texture + 1 over the object per channel, from exact integer sums
    mean = np.array([p.sum(dtype=np.int64) for p in picked.T]) / len(picked) + 1.0
    # gain = 1 + strength * ((texture + 1) / mean - 1) = texture * k + d
    k = (float(strength) / mean).astype(np.float32)
    d = (1.0 + float(strength) * (1.0 / mean - 1.0)).astype(np.float32)
    out = np.empty(image.shape, dtype=np.float32)
    for c in range(image.shape[2]):  # channel by channel: numpy is slow on a last axis of 3
        o = out[..., c]
        np.subtract(image[..., c], white, out=o)  # alpha * colour
        o *= texture[..., c] * k[c] + d[c]
        o += white
    return _to_uint8(out)


def is_plain_white(image: np.ndarray, mask: np.ndarray, tol: float = 3.0) -> bool:
    """True when the pixels outside ``mask`` are white (an object render without a background)."""
    obj = np.asarray(mask, dtype=bool)
    if obj.size - np.count_nonzero(obj) < 16:
        return False
    # ignore a 1-pixel ring around the object (antialiased edge): scipy's binary_dilation with its
    # default cross, once, written out with slices (a few times faster on a 224 px mask)
    near = obj.copy()
    for axis in range(obj.ndim):
        lo, hi = [slice(None)] * obj.ndim, [slice(None)] * obj.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        near[tuple(lo)] |= obj[tuple(hi)]
        near[tuple(hi)] |= obj[tuple(lo)]
    outside = ~near.reshape(-1)
    n = np.count_nonzero(outside)
    if n < 16:
        return False
    # the mean of the outside pixels' channels, from an exact integer sum
    values = np.compress(outside, image.reshape(len(outside), -1), axis=0)
    return 255.0 - float(values.sum(dtype=np.int64)) / values.size < tol


#: scikit-image's bundled sample images that are photographs or photographic textures
_SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
    "hubble_deep_field.jpg", "brick.png", "grass.png", "gravel.png", "camera.png", "moon.png", "coins.png",
    "horse.png", "page.png", "text.png",
)  # fmt: skip


def sample_photos() -> list[np.ndarray]:
    """scikit-image's bundled sample photos as ``[H, W, 3]`` uint8 arrays (grey ones replicated)."""
    from PIL import Image
    from skimage import data

    folder = Path(data.__file__).parent
    out = []
    for name in _SKIMAGE_PHOTOS:
        path = folder / name
        if not path.is_file():
            continue
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB")))
    if not out:
        raise ConfigError(f"background kind 'photo' found none of scikit-image's sample photos in {folder}")
    return out
