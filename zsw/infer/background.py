"""Plain backgrounds: where the photo itself says which pixels are background.

The pixel model learnt its visible mask on procedural renders; on real photos it leaves holes in
textured or pale objects (a floral armchair, a spotted tiger, a white hat) that become holes in
the mesh. Many photos people reconstruct -- product shots, cutouts on white, RGBA files -- have a
background that needs no model:

* an RGBA image's transparent pixels are background;
* otherwise, when at least ``share`` of the photo's border (the outermost pixels that come from
  the photo, not from padding) lies within ``tol`` RGB units of one smooth colour field fitted to
  it -- a plain colour, a studio sweep's gradient, a vignette (a quadratic in x and y per
  channel) -- the pixels of that colour connected to the border are background (padding counts
  as background).

:func:`refine_visible_mask` then removes from the model's mask what lies on that background, and
adds the pixels the model missed that are not of the background's colour and not its predicted
occluder, where they lie inside the model's mask (its holes) or within ``reach`` pixels of it --
there not the background's colour in shade either (a contact shadow on a white table); then up to
``along`` pixels further through such pixels connected to the mask, away from any predicted
occluder (an outstretched arm whose middle the model missed). A second
object away from the object is not taken in, nor specks under ``speck`` of the image's area, nor
the background seen through the object (a torus's hole, a mug's handle).

Busy backgrounds, without a plain or graded border (a table top, a floor, a room):
:func:`refine_by_colours` learns the colours of the object and of what surrounds it from the
model's own mask (OpenCV's GrabCut: a Gaussian mixture of colours for each, and a graph cut that
keeps the outline on the photo's edges), with the model's mask as "probably the object", its box
widened as "probably background" (a part the model missed lies there), the rest of the photo and
the predicted occluder as background. The cut is kept only where it agrees with the model's mask
(IoU >= ``agree``): where the object wears the background's colours (a spotted tiger on gravel, a
floral armchair) the cut strays or collapses, and the model's mask stays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["plain_background", "refine_visible_mask", "refine_by_colours", "correct_visible_mask"]


def _colour_field(rgb: np.ndarray, rim: np.ndarray, tol: float) -> np.ndarray:  # [H, W, 3]
    """The border's colour as a smooth field over the image: a quadratic in x and y per channel,
    fitted to the rim's pixels by least squares, then again without the rim pixels the first fit
    misses by more than ``tol`` (the object where it touches the border). A plain colour gives a
    constant, a studio sweep or a vignette its gradient."""
    H, W = rgb.shape[:2]
    y, x = np.mgrid[0:H, 0:W]
    u, v = x / max(W - 1, 1) - 0.5, y / max(H - 1, 1) - 0.5
    basis = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1)  # [H, W, 6]
    A, target = basis[rim], rgb[rim]
    keep = np.ones(len(A), bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(A[keep], target[keep], rcond=None)
        residual = np.linalg.norm(A @ coef - target, axis=1)
        if (residual < tol).sum() < 7:
            break
        keep = residual < tol
    return basis @ coef


class _Background(NamedTuple):
    colour: np.ndarray  # [S, S] bool: the border's colour anywhere (padding included)
    connected: np.ndarray  # [S, S] bool: the part of it connected to the border: the background
    field: np.ndarray  # [S, S, 3] float32: the border's colour field (:func:`_colour_field`)


def _find_background(image: np.ndarray, photo: np.ndarray | None, tol: float, share: float) -> _Background | None:
    """The photo's plain or smoothly graded background, or None when its border is neither."""
    from scipy import ndimage as ndi

    photo = np.ones(image.shape[:2], bool) if photo is None else np.asarray(photo, bool)
    if photo.sum() < 16:
        return None
    rgb = image.astype(np.float32)
    # the photo's outer pixels: its region's own rim, or the image border where the photo reaches it
    rim = photo & ~ndi.binary_erosion(photo, border_value=0)
    field = _colour_field(rgb, rim, tol).astype(np.float32)
    if (np.linalg.norm(rgb[rim] - field[rim], axis=1) < tol).mean() < share:
        return None
    # a pixel is background when its colour is near the border's, or when its neighbourhood's is
    # (nearer still): sensor and JPEG noise do not punch holes, the object's outline stays sharp
    smooth = ndi.gaussian_filter(np.where(photo[..., None], rgb, field), sigma=(1, 1, 0), mode="nearest")
    close = (np.linalg.norm(rgb - field, axis=-1) < tol) | (np.linalg.norm(smooth - field, axis=-1) < tol / 2)
    close |= ~photo
    # the parts of it that touch the image's border or the photo's rim
    labels, _ = ndi.label(close)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[rim]]))
    return _Background(close, np.isin(labels, edge[edge > 0]), field)


def _shadow_like(image: np.ndarray, field: np.ndarray, tol: float) -> np.ndarray:  # [S, S] bool
    """Pixels that look like the background's colour darkened: ``k * field`` for some k in
    [0.35, 1] within ``tol`` RGB units (a shadow keeps the colour of the surface it falls on)."""
    rgb = image.astype(np.float32)
    k = np.clip((rgb * field).sum(-1) / np.maximum((field * field).sum(-1), 1e-6), 0.0, 1.0)
    # darker than a third of the background is the object's own (a black handle), not a shadow
    return (k >= 0.35) & (np.linalg.norm(rgb - k[..., None] * field, axis=-1) < tol)


def _cutout(alpha: np.ndarray | None) -> bool:
    """Whether an RGBA image's opaque pixels ``alpha`` tell its background (some are transparent)."""
    return alpha is not None and not np.asarray(alpha, bool).all()


def plain_background(
    image: np.ndarray,  # [S, S, 3] uint8
    photo: np.ndarray | None = None,  # [S, S] bool: pixels that come from the photo (None: all)
    tol: float = 12.0,
    share: float = 0.9,
) -> np.ndarray | None:  # [S, S] bool, or None when the border is not one plain or graded colour
    """The background of a photo with a plain or graded border: the pixels of the border's colour
    connected to it (module docstring), or None."""
    found = _find_background(image, photo, tol, share)
    return None if found is None else found.connected


def refine_visible_mask(
    image: np.ndarray,  # [S, S, 3] uint8
    visible: np.ndarray,  # [S, S] bool: the model's visible mask
    occluder: np.ndarray | None = None,  # [S, S] bool: the model's occluder mask
    photo: np.ndarray | None = None,  # [S, S] bool: pixels that come from the photo
    alpha: np.ndarray | None = None,  # [S, S] bool: an RGBA image's opaque pixels
    reach: int = 8,
    speck: float = 1e-3,
    tol: float = 12.0,
    share: float = 0.9,
    along: int = 16,
) -> np.ndarray | None:  # [S, S] bool, or None when the photo does not tell its background
    """The visible mask with the photo's own background taken into account (module docstring);
    ``along``: how far, in pixels through the object's own pixels, the mask grows (never within as
    many pixels of a predicted occluder)."""
    from scipy import ndimage as ndi

    visible = np.asarray(visible, bool)
    occluder = np.zeros(visible.shape, bool) if occluder is None else np.asarray(occluder, bool)
    shade = np.zeros(visible.shape, bool)
    if _cutout(alpha):
        background = colour = ~np.asarray(alpha, bool)
    else:
        found = _find_background(image, photo, tol, share)
        if found is None:
            return None
        colour, background = found.colour, found.connected
        shade = _shadow_like(image, found.field, tol)
    # the background's colour enclosed by the object (a torus's hole, a mug's handle) is not added,
    # but where the model marks it (a white object on white) it stays
    candidate = ~colour
    # specks (noise, dust) of the photo are not added; what the model itself marks stays
    labels, n = ndi.label(candidate)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    candidate &= sizes[labels] >= max(4, speck * candidate.size)
    candidate &= ~occluder
    # around the mask, not the background's colour in shade either (a contact shadow on a white
    # table); inside the mask's holes any colour but the background's own is the object
    around = (ndi.distance_transform_edt(~visible) <= reach) & ~shade
    refined = (visible | (candidate & (around | ndi.binary_fill_holes(visible)))) & ~background
    if along and refined.any():
        # the mask goes on along the object's own pixels (a teddy's outstretched sleeve, a tiger's
        # spotted leg that the model left as islands), through no background and no shade of it,
        # and not within ``along`` of a predicted occluder: an occluder the model outlined only in
        # part would be taken in where it touches the object (procedural views: IoU lower)
        allowed = candidate & ~shade & ~background
        if occluder.any():
            allowed &= ndi.distance_transform_edt(~occluder) > along
        refined = ndi.binary_dilation(refined, iterations=along, mask=refined | allowed)
    return refined if refined.any() else None


def grabcut(image: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray:
    """OpenCV's GrabCut on ``image`` ([h, w, 3+] uint8) from ``labels`` ([h, w] uint8 of
    ``cv2.GC_*``, refined in place), seeded so that the same photo gives the same mask: the
    pixels it ends with as the object, [h, w] bool."""
    import cv2

    cv2.setRNGSeed(0)  # its k-means start
    models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(np.ascontiguousarray(image[..., :3], np.uint8), labels, None, *models, iterations,
                cv2.GC_INIT_WITH_MASK)  # fmt: skip
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def refine_by_colours(
    image: np.ndarray,  # [S, S, 3] uint8
    visible: np.ndarray,  # [S, S] bool: the model's visible mask
    occluder: np.ndarray | None = None,  # [S, S] bool: the model's occluder mask
    photo: np.ndarray | None = None,  # [S, S] bool: pixels that come from the photo (a rectangle)
    band: float = 0.15,
    iterations: int = 3,
    agree: float = 0.6,
    least: int = 32,
) -> np.ndarray | None:  # [S, S] bool, or None where the model's mask stays
    """The visible mask cut again by the colours of the object and of its surroundings (module
    docstring): ``band``, how far the "probably background" region reaches beyond the model's mask's
    box, as a fraction of the mask's larger side; ``iterations`` of GrabCut. Only the parts of the cut that
    overlap the model's mask are kept. None where the model marks fewer than ``least`` pixels, where
    the surroundings are too few to learn from, or where the cut's IoU with the model's mask is below
    ``agree``."""
    import cv2
    from scipy import ndimage as ndi

    visible = np.asarray(visible, bool)
    photo = np.ones(visible.shape, bool) if photo is None else np.asarray(photo, bool)
    if not photo.any():
        return None
    # the photo's rectangle only: the mirrored padding repeats the object's colours as "background"
    rows, cols = np.flatnonzero(photo.any(1)), np.flatnonzero(photo.any(0))
    crop = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    v = visible[crop]
    if v.sum() < least:
        return None
    ys, xs = np.nonzero(v)
    width = max(2, round(band * (max(np.ptp(ys), np.ptp(xs)) + 1)))
    labels = np.full(v.shape, cv2.GC_BGD, np.uint8)
    # probably background: the mask's box and a band around both (a part the model missed lies
    # there; learnt as certain background, its colours would take the object's away)
    y0, x0 = max(ys.min() - width, 0), max(xs.min() - width, 0)
    labels[y0 : ys.max() + width + 1, x0 : xs.max() + width + 1] = cv2.GC_PR_BGD
    labels[v] = cv2.GC_PR_FGD
    if occluder is not None:  # in front of the object: not the object, whatever its colour
        labels[np.asarray(occluder, bool)[crop] & ~v] = cv2.GC_BGD
    if (labels != cv2.GC_PR_FGD).sum() < least:
        return None  # the object fills the photo: nothing to learn the background from
    cut = grabcut(image[crop], labels, iterations)
    parts, _ = ndi.label(cut)
    kept = np.unique(parts[cut & v])  # not a second object elsewhere in the photo
    cut = np.isin(parts, kept[kept > 0])
    if (cut & v).sum() < agree * (cut | v).sum():
        return None
    out = np.zeros(visible.shape, bool)
    out[crop] = cut
    return out


def correct_visible_mask(
    image: np.ndarray,  # [S, S, 3] uint8
    visible: np.ndarray,  # [S, S] bool: the model's visible mask
    occluder: np.ndarray | None = None,  # [S, S] bool: the model's occluder mask
    photo: np.ndarray | None = None,  # [S, S] bool: pixels that come from the photo
    alpha: np.ndarray | None = None,  # [S, S] bool: an RGBA image's opaque pixels
) -> tuple[np.ndarray | None, str | None]:
    """What ``--background auto`` makes of the model's visible mask: ``(mask, "background")``
    where the photo tells its background (transparency, a plain or graded border;
    :func:`refine_visible_mask`), otherwise ``(mask, "colours")`` where the cut by the photo's
    colours agrees with the model (:func:`refine_by_colours`), else ``(None, None)``: the model's
    mask stays."""
    mask = refine_visible_mask(image, visible, occluder, photo, alpha)
    if mask is not None:
        return mask, "background"
    if _cutout(alpha):
        return None, None  # a cut-out whose opaque part holds none of the model's mask
    mask = refine_by_colours(image, visible, occluder, photo)
    return (mask, "colours") if mask is not None else (None, None)
