"""Silhouette carving: no surface where the photo shows background.

A point whose projection lands on a pixel that neither mask claims -- inside the photo, where the
camera sees past the object to the background -- cannot be inside the object, whatever its depth.
The decoder learns this only softly: on real photos the packaged model fills the space under a
standing animal's belly, between its legs, which the photo shows empty
(``bench/results/carving/README.md``). Carving bounds each query point's occupancy logit by

    bound(p) = SLOPE * (d(p) + MARGIN)

where ``d`` is the signed distance in pixels of ``p``'s projection from the edge of the union of
the visible and occluder masks (positive inside, bilinear between pixel centres). Inside the masks
the bound is far above any logit; outside it falls by :data:`SLOPE` per pixel, so the surface
where the field is cut lies :data:`MARGIN` pixels outside the masks (at threshold 0.5) and is a
smooth level set that marching cubes interpolates like the decoder's own. Nothing is bounded where
the photo tells nothing: points behind the camera, off the model input, on its padding (the photo's
square reaches past the photo), or for an image whose masks are both empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zsw.model import SurfacePrediction
from zsw.model.decoder import camera_projection, project_points

__all__ = [
    "MARGIN", "SLOPE", "signed_distance", "mask_union", "silhouette_map", "host_masks", "SilhouetteBound", "carved",
]  # fmt: skip

#: pixels of the model input outside the masks' edge where the carved surface lies (threshold 0.5):
#: room for a mask edge that falls a pixel or two inside the object's
MARGIN = 2.0
#: logits per pixel by which the bound falls outside the masks
SLOPE = 2.0
#: the map's value where the photo tells nothing (far above any logit the bound could cut)
_UNKNOWN = 1e4


def signed_distance(mask: np.ndarray) -> np.ndarray:  # [S, S] bool -> [S, S] float32
    """Pixels from each pixel centre to the mask's edge, positive inside and negative outside (the
    edge halfway between a pixel of the mask and its neighbour outside it)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)


def mask_union(visible: np.ndarray, occluder: np.ndarray | None) -> np.ndarray:  # [S, S] bool
    """The pixels either mask claims (the object's, as carving reads them)."""
    return np.asarray(visible, dtype=bool) | (np.asarray(occluder, dtype=bool) if occluder is not None else False)


def silhouette_map(
    visible: np.ndarray,  # [S, S] bool
    occluder: np.ndarray | None,  # [S, S] bool
    photo_area: np.ndarray | None = None,  # [S, S] bool: the pixels that show the photo (None: all)
) -> np.ndarray:  # [S, S] float32
    """:func:`signed_distance` of the union of the two masks, and a value far above any logit where
    the photo tells nothing (off ``photo_area``; everywhere when both masks are empty)."""
    union = mask_union(visible, occluder)
    if not union.any():
        return np.full(union.shape, _UNKNOWN, np.float32)
    d = signed_distance(union)
    if photo_area is not None:
        d[~np.asarray(photo_area, dtype=bool)] = _UNKNOWN
    return d


def host_masks(pred: SurfacePrediction) -> tuple[np.ndarray, np.ndarray | None]:  # [B, S, S] bool each
    """A prediction's visible and occluder masks on the host (the occluder None without its head)."""
    visible = pred.visible_mask[:, 0].float().cpu().numpy() > 0.5
    occluder = pred.occluder_mask[:, 0].float().cpu().numpy() > 0.5 if pred.occluder_mask is not None else None
    return visible, occluder


class SilhouetteBound:
    """The carving bound of query points in a prediction's normalised frame (see the module docstring).
    ``masks``: :func:`host_masks` of ``pred`` where the caller has them already (one copy, not two)."""

    def __init__(
        self,
        pred: SurfacePrediction,
        photo_areas: Sequence[np.ndarray | None] | None = None,
        masks: tuple[np.ndarray, np.ndarray | None] | None = None,
    ):
        visible, occluder = masks if masks is not None else host_masks(pred)
        areas = photo_areas if photo_areas is not None else [None] * len(visible)
        occluders = occluder if occluder is not None else [None] * len(visible)
        maps = [silhouette_map(v, o, a) for v, o, a in zip(visible, occluders, areas)]
        self.distance = torch.from_numpy(np.stack(maps))[:, None].to(pred.visible_mask.device)  # [B, 1, S, S]
        self.projection = camera_projection(pred.intrinsics, pred.center, pred.scale)  # [B, 3, 4]

    def __call__(self, points: Tensor) -> Tensor:  # [B, N, 3] normalised -> [B, N] logit bounds
        S = self.distance.shape[-1]
        uv, front = project_points(points, self.projection)  # pixels, centres at integers
        seen = front[..., 0] & (uv >= 0).all(-1) & (uv <= S - 1).all(-1)
        grid = torch.where(front, uv * (2.0 / (S - 1)) - 1.0, torch.zeros_like(uv))[:, :, None, :]
        d = F.grid_sample(self.distance, grid, align_corners=True)[:, 0, :, 0]  # [B, N]
        return torch.where(seen, SLOPE * (d + MARGIN), torch.full_like(d, float("inf")))


def carved(decode: Callable[[Tensor], Tensor], bound: SilhouetteBound) -> Callable[[Tensor], Tensor]:
    """``decode`` (points ``[B, N, 3]`` -> logits ``[B, N]``) with each logit at most its point's bound."""

    def decode_carved(points: Tensor) -> Tensor:
        logits = decode(points)
        return torch.minimum(logits, bound(points).to(logits.dtype))

    return decode_carved
