"""Copy-paste occluders (ZeroShape-W's occlusion simulation).

An occluder is another object's image cut out by its mask (or antialiased coverage), resized so its
longer side is ``scale`` (0.4-0.6 by default) times the image side, and pasted in front of the
target so that it overlaps it. Every paste updates, consistently:

* the image (occluder composited with its coverage);
* the visible mask: ``visible & ~occluder``;
* the occluder mask: the union of the pasted silhouettes (coverage >= 0.5);
* the visible depth: the target's depth where it stays visible, 0 elsewhere.

A paste that would leave less than ``min_visible`` of the target's pixels visible is dropped.

Without an image (``image=None``, occluders cut without colours) the same pastes land in the same
places and only the masks and the depth change: for training data whose colours nothing reads.

Example::

    occ = Occluder.from_render(other_image, other_alpha)
    out = paste_occluders(image, visible, depth, [occ], rng)
    out.image, out.visible, out.occluder, out.depth
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Occluder", "Pasted", "paste_occluders"]


@dataclass
class Occluder:
    """An object cut out of its image: colours (not premultiplied) and coverage, cropped tight.
    ``rgb`` is None for a silhouette cut without its colours."""

    rgb: np.ndarray | None  # [h, w, 3] float32 in [0, 255]
    alpha: np.ndarray  # [h, w] float32 in [0, 1]

    @classmethod
    def from_render(
        cls,
        image: np.ndarray | None,  # [H, W, 3] uint8
        alpha: np.ndarray,  # [H, W] float in [0, 1] (or a binary mask)
        over_white: bool = True,
    ) -> Occluder | None:
        """Cut the object out; ``over_white`` images are un-premultiplied from white on their
        antialiased edge; ``image`` None cuts the silhouette alone. None when the mask is empty."""
        a = np.clip(np.asarray(alpha, dtype=np.float32), 0, 1)
        covered = a > 0
        ys, xs = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
        if len(ys) == 0:
            return None
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        a = a[y0:y1, x0:x1]
        if image is None:
            return cls(rgb=None, alpha=a)
        rgb = image[y0:y1, x0:x1].astype(np.float32)
        if over_white:
            safe = np.maximum(a, 1e-3)[..., None]
            rgb = np.clip((rgb - (1 - a[..., None]) * 255.0) / safe, 0, 255)
        return cls(rgb=rgb, alpha=a)

    def resized(self, longer_side: int) -> Occluder:
        from PIL import Image

        h, w = self.alpha.shape
        s = longer_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))

        def plane(a: np.ndarray) -> np.ndarray:  # float32 [h, w] resized
            return np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize(size, Image.Resampling.BILINEAR))

        rgb = None
        if self.rgb is not None:
            rgb = np.clip(np.stack([plane(self.rgb[..., c]) for c in range(3)], axis=-1), 0, 255)
        return Occluder(rgb=rgb, alpha=np.clip(plane(self.alpha), 0, 1))


@dataclass
class Pasted:
    image: np.ndarray | None  # [H, W, 3] uint8 (None when pasted without an image)
    visible: np.ndarray  # [H, W] bool
    occluder: np.ndarray  # [H, W] bool
    depth: np.ndarray  # [H, W] float32, 0 outside the visible object
    placements: list[dict] = field(default_factory=list)  # scale and position of each paste


def paste_occluders(
    image: np.ndarray | None,  # [H, W, 3] uint8, or None: the masks and depth only
    visible: np.ndarray,  # [H, W] bool
    depth: np.ndarray,  # [H, W] float32
    occluders: Sequence[Occluder],
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.4, 0.6),
    min_visible: float = 0.3,
    occluder: np.ndarray | None = None,  # [H, W] bool: occluders already in the image
) -> Pasted:
    """Paste ``occluders`` over the target object so each overlaps it (see the module docstring)."""
    H, W = visible.shape
    out = None if image is None else image.astype(np.float32)
    vis = np.asarray(visible, dtype=bool).copy()
    occ_mask = np.zeros((H, W), dtype=bool) if occluder is None else np.asarray(occluder, dtype=bool).copy()
    initial = vis_count = int(np.count_nonzero(vis))
    placements = []
    for occ in occluders:
        if out is not None and occ.rgb is None:
            raise ValueError("paste_occluders: an occluder cut without colours cannot be pasted onto an image")
        if vis_count == 0:
            break
        s = float(rng.uniform(*scale))
        piece = occ.resized(max(2, round(s * max(H, W))))
        h, w = piece.alpha.shape
        # anchor: a random visible pixel of the target; the occluder's centre lands near it
        ys, xs = np.nonzero(vis)
        k = int(rng.integers(len(ys)))
        cy = ys[k] + rng.uniform(-0.35, 0.35) * h
        cx = xs[k] + rng.uniform(-0.35, 0.35) * w
        y0, x0 = round(cy - h / 2), round(cx - w / 2)
        # clip the occluder to the image
        sy0, sx0 = max(0, -y0), max(0, -x0)
        dy0, dx0 = max(0, y0), max(0, x0)
        dy1, dx1 = min(H, y0 + h), min(W, x0 + w)
        if dy1 <= dy0 or dx1 <= dx0:
            continue
        # everything within the pasted box (the occluder's coverage is 0 outside it)
        box = (slice(dy0, dy1), slice(dx0, dx1))
        a = piece.alpha[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
        solid = a >= 0.5
        hidden = np.count_nonzero(vis[box] & solid)
        if vis_count - hidden < min_visible * initial or not hidden:
            continue  # hides too much of the target, or misses it
        if out is not None:
            rgb = piece.rgb[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
            out[box] = out[box] * (1 - a[..., None]) + rgb * a[..., None]
        vis[box] &= ~solid
        vis_count -= hidden
        occ_mask[box] |= solid
        placements.append(dict(scale=s, y0=int(y0), x0=int(x0), height=int(h), width=int(w)))
    return Pasted(
        image=None if out is None else np.clip(out, 0, 255).round().astype(np.uint8),
        visible=vis,
        occluder=occ_mask,
        depth=np.where(vis, depth, 0).astype(np.float32),
        placements=placements,
    )
