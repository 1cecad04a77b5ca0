"""One-off: pixels neither mask claims, enclosed by the union of the visible and occluder masks and
bordered by the occluder (the object seen past an occluder's gaps), become visible."""

import os

from scipy import ndimage as ndi

from zsw.infer import reconstruct as R

SHARE = float(os.environ.get("HOLE_SHARE", "0.3"))
_orig = R.Reconstructor._background_masks


def fill(visible, occluder, share=SHARE):
    union = visible | occluder
    holes = ndi.binary_fill_holes(union) & ~union
    labels, n = ndi.label(holes)
    if not n:
        return visible
    ring = ndi.binary_dilation(holes) & ~holes
    out = visible.copy()
    for k in range(1, n + 1):
        h = labels == k
        r = ndi.binary_dilation(h) & ring
        if (r & occluder).sum() >= share * r.sum():
            out |= h
    return out


def patched(self, images, batch, prompt_arg, pixel, timings, known=None):
    pixel, mask_t, how = _orig(self, images, batch, prompt_arg, pixel, timings, known)
    occ = (pixel.occluder_mask_logits[:, 0].float() >= 0).cpu().numpy()
    m = mask_t[:, 0].cpu().numpy() > 0.5
    for b, im in enumerate(images):
        m[b] = fill(m[b], occ[b] & im.photo_area & ~m[b])
    import torch

    return pixel, torch.from_numpy(m).to(mask_t.device)[:, None].float(), how


R.Reconstructor._background_masks = patched
