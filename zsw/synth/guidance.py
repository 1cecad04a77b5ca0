"""Image-side pieces of Algorithm 1, in numpy: guidance perturbation, the depth control image,
the silhouette filter and the exact object composite.

All images are ``uint8 [H, W, 3]``, masks ``bool [H, W]`` (True = object), depths
``float [H, W]`` with 0 = background (ZeroShape's convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zsw.errors import InputError

__all__ = [
    "GuidancePerturbation",
    "perturb_guidance",
    "depth_to_control",
    "silhouette",
    "silhouette_iou",
    "composite",
    "resize_image",
    "resize_mask",
    "unit_to_uint8",
    "check_batch",
]


@dataclass(frozen=True)
class GuidancePerturbation:
    """Jitter applied to a render before it is noised and injected as initial guidance.

    The render's flat shading would otherwise pin the colour of every synthesized image; small
    colour, blur and noise jitter (the paper's guidance perturbator) lets the prompt's colour and
    material win while keeping the silhouette. Colour and noise touch object pixels only, so the
    background stays pure white and the silhouette guidance stays clean.
    """

    # brightness/contrast/saturation factors drawn from [1 - x, 1 + x]
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.3
    # per-channel colour shift, drawn from [-x, x] (in [0, 1] units)
    channel_shift: float = 0.05
    # Gaussian blur sigma in pixels, drawn from [0, x]
    blur_sigma: float = 1.0
    # Gaussian noise standard deviation, drawn from [0, x] (in [0, 1] units)
    noise_std: float = 0.03


def perturb_guidance(
    image: np.ndarray,  # [H, W, 3] uint8
    mask: np.ndarray,  # [H, W] bool
    rng: np.random.Generator,
    cfg: GuidancePerturbation = GuidancePerturbation(),
) -> np.ndarray:  # [H, W, 3] uint8
    """The perturbed render: colour jitter and noise on the object, then a light blur."""
    from PIL import Image, ImageFilter

    x = image.astype(np.float32) / 255.0
    obj = x[mask]  # [P, 3]
    if obj.size:
        gray = obj @ np.array([0.299, 0.587, 0.114], np.float32)
        mean = gray.mean()
        sat = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
        obj = gray[:, None] + (obj - gray[:, None]) * sat
        obj = mean + (obj - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        obj = obj * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        obj = obj + rng.uniform(-cfg.channel_shift, cfg.channel_shift, size=3).astype(np.float32)
        obj = obj + rng.normal(0.0, rng.uniform(0.0, cfg.noise_std), size=obj.shape).astype(np.float32)
        x[mask] = obj
    out = Image.fromarray(np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8))
    sigma = float(rng.uniform(0.0, cfg.blur_sigma))
    if sigma > 0.05:
        out = out.filter(ImageFilter.GaussianBlur(radius=sigma))
    return np.asarray(out).copy()


def depth_to_control(
    depth: np.ndarray,  # [H, W] float, 0 = background
    floor: float = 0.2,
) -> np.ndarray:  # [H, W, 3] uint8
    """Depth ControlNet input: inverse depth, white = near, black = background.

    The object's inverse depth is min-max normalised to ``[floor, 1]`` so its farthest point stays
    distinguishable from the black background (the depth ControlNets were trained on MiDaS-style
    disparity, which is 0 only at infinity).
    """
    if depth.ndim != 2:
        raise InputError(f"depth must be [H, W], got shape {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros(depth.shape, np.float32)
    if valid.any():
        disp = 1.0 / depth[valid]
        lo, hi = float(disp.min()), float(disp.max())
        t = (disp - lo) / (hi - lo) if hi > lo else np.ones_like(disp)
        out[valid] = floor + (1.0 - floor) * t
    return np.repeat(np.round(out * 255).astype(np.uint8)[..., None], 3, axis=2)


def silhouette(image: np.ndarray, threshold: int = 250) -> np.ndarray:  # [H, W, 3] uint8 -> [H, W] bool
    """Foreground of an image on a white background: grayscale (ITU-R 601) below ``threshold``."""
    gray = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return gray < threshold


def silhouette_iou(
    image: np.ndarray,  # [H, W, 3] uint8
    mask: np.ndarray,  # [H, W] bool
    threshold: int = 250,
) -> float:
    """IoU of the image's silhouette (:func:`silhouette`) with ``mask``; 1.0 when both are empty."""
    if image.shape[:2] != mask.shape:
        raise InputError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    sil = silhouette(image, threshold)
    union = np.count_nonzero(sil | mask)
    return 1.0 if union == 0 else np.count_nonzero(sil & mask) / union


def composite(
    foreground: np.ndarray,  # [H, W, 3] uint8
    background: np.ndarray,  # [H, W, 3] uint8
    mask: np.ndarray,  # [H, W] bool
) -> np.ndarray:  # [H, W, 3] uint8
    """Object pixels from ``foreground`` exactly, everything else from ``background``."""
    if not (foreground.shape == background.shape and foreground.shape[:2] == mask.shape):
        raise InputError(f"composite of {foreground.shape}, {background.shape} and mask {mask.shape}")
    return np.where(mask[..., None], foreground, background)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:  # [H, W, 3] uint8 -> [size, size, 3]
    """Square resize: bicubic up, Lanczos down (anti-aliased)."""
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    up = size > max(image.shape[:2])
    method = Image.Resampling.BICUBIC if up else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(image).resize((size, size), method)).copy()


def unit_to_uint8(image: np.ndarray, size: int) -> np.ndarray:  # [r, r, 3] float in [0, 1] -> [size, size, 3] uint8
    """A diffusers ``output_type="np"`` image back to 8 bits at ``size``."""
    return resize_image(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), size)


def check_batch(what: str, *columns) -> int:
    """The common length of a batch's columns; unequal or zero lengths are an InputError."""
    lengths = [len(c) for c in columns]
    if len(set(lengths)) != 1 or lengths[0] == 0:
        raise InputError(f"{what} batch needs equal non-zero lengths, got {', '.join(map(str, lengths))}")
    return lengths[0]


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:  # [H, W] bool -> [size, size] bool
    """Square nearest-neighbour resize of a mask."""
    from PIL import Image

    if mask.shape == (size, size):
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(im) > 127
