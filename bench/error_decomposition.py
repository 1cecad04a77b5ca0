"""Where a model's shape error comes from: swap the pixel model's outputs for ground truth, one
piece at a time, and score each variant with ZeroShape's protocol (``zsw eval``'s metrics).

    python -m zsw.bench.error_decomposition --data data/demo/test --max-per-category 4 \
        --out bench/results/error-decomposition-v4

Variants (the encoder and decoder always run; masks are thresholded at logit 0 unless given):

* ``pred``: everything predicted, as ``zsw reconstruct`` runs;
* ``gt_k``: the ground-truth intrinsics alone (what a photo's EXIF focal length could give);
* ``gt_masks``: the ground-truth visible and occluder masks, predicted depth and K;
* ``gt_visible`` / ``gt_occluder``: only one of the two masks from the ground truth;
* ``gt_depth``: ground-truth depth and masks, predicted K;
* ``aligned_depth_gt_k``: the predicted depth fitted to the truth by scale and shift (what SSI
  losses ignore), ground-truth K and masks;
* ``gt``: ground-truth depth, K and masks (the shape path's own error);
* ``true_up``: everything predicted but the object's up axis (axial-query decoders), which is the
  truth's;
* ``true_center``: everything predicted but the object's centre (mirror-query decoders), which is
  the truth's in the frame the training's centre loss uses (the true visible surface's);
* ``gt_filled`` / ``pred_filled``: ``gt`` / ``pred`` with the occluded part of the object filled in
  (:func:`fill_occluded`): what the decoder would make of a visible surface with no occluder
  in front of it, completed from the visible part alone.

Each row also records the up axis the decoder predicted and the truth's as the camera's elevation
they imply (``up_elevation_pred`` / ``_true``, degrees above the object's horizon) and the angle
between them (``up_error_deg``), for decoders with axial queries.

Writes ``<out>.jsonl`` (one line per view) and ``<out>.md`` (per-category CD and F@0.05). Needs a
dataset with depth, intrinsics, extrinsics, point clouds and occluder masks (``zsw synthesize``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

VARIANTS = (
    "pred", "gt_k", "gt_masks", "gt_visible", "gt_occluder", "gt_depth", "aligned_depth_gt_k", "gt", "true_up",
    "true_center", "gt_filled", "pred_filled",
)  # fmt: skip


_PART = 0.1  # fill_occluded: the smallest part of the visible mask, as a fraction of the largest's area


def fill_occluded(
    depth: torch.Tensor,  # [B, 1, S, S]
    visible: torch.Tensor,  # [B, 1, S, S] in {0, 1}
    occluder: torch.Tensor,  # [B, 1, S, S] in {0, 1}
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # depth, visible, occluder
    """The object's occluded part filled in: the occluder's pixels inside the convex hull of the
    visible mask become visible, with depth continued into them from the visible pixels by
    biharmonic inpainting (scikit-image; exact for a plane, smooth for a curved face), and are no
    longer occluder. The hull spans the mask's parts of at least :data:`_PART` of the largest's
    area (an occluder may cut the object in two; a mask's stray specks are left out). A convex
    object's silhouette is recovered; a concave one's (a mug's handle, a chair's legs) is
    over-filled, only where the occluder hides it."""
    from scipy import ndimage
    from skimage.morphology import convex_hull_image
    from skimage.restoration import inpaint_biharmonic

    depth, visible, occluder = depth.clone(), visible.clone(), occluder.clone()
    for b in range(depth.shape[0]):
        seen, hidden = visible[b, 0].cpu().numpy() > 0.5, occluder[b, 0].cpu().numpy() > 0.5
        parts, n = ndimage.label(seen)
        if n == 0 or not hidden.any():
            continue
        sizes = ndimage.sum(seen, parts, range(1, n + 1))
        kept = np.isin(parts, 1 + np.flatnonzero(sizes >= _PART * sizes.max()))  # an occluder may split the object
        fill = convex_hull_image(kept) & hidden & ~seen
        if not fill.any():
            continue
        rows, cols = np.nonzero(kept | fill)  # inpaint within the object's box (a margin of 2)
        y0, x0 = max(rows.min() - 2, 0), max(cols.min() - 2, 0)
        y1, x1 = rows.max() + 3, cols.max() + 3
        box = depth[b, 0, y0:y1, x0:x1].double().cpu().numpy()
        unknown = ~kept[y0:y1, x0:x1]
        filled = inpaint_biharmonic(np.where(unknown, 0.0, box), unknown)
        into = torch.from_numpy(fill[y0:y1, x0:x1]).to(depth.device)
        patch = depth[b, 0, y0:y1, x0:x1]
        patch[into] = torch.from_numpy(filled).to(depth)[into]
        mask = torch.from_numpy(fill).to(depth.device)
        visible[b, 0][mask] = 1.0
        occluder[b, 0][mask] = 0.0
    return depth, visible, occluder


def surfaces(model, batch: dict, variants: list[str]):
    """The encoder output of every variant for one batch of one view."""
    from zsw.model.pixel import PixelOutput
    from zsw.train.losses import _align_scale_shift

    image = batch["image"]
    text = model.embed_prompts(None, image.shape[0])
    pix = model.pixel(image, text)
    vis, occ = batch["visible_mask"], batch["occluder_mask"]
    depth, K = batch["depth"].to(image.dtype), batch["intrinsics"].to(image.dtype)
    pred_vis = (pix.visible_mask_logits >= 0).to(image.dtype)
    pred_occ = (pix.occluder_mask_logits >= 0).to(image.dtype)
    predicted = None  # the one encoding "pred", "true_up" and "true_center" share (the decoder's pose differs)
    for v in variants:
        if v in ("pred", "true_up", "true_center"):
            if predicted is None:
                predicted = model.encode_surface(pix, text)
            yield v, predicted
        elif v == "gt_k":  # the true intrinsics alone (a photo's EXIF focal length, say)
            yield v, model.encode_surface(dataclasses.replace(pix, intrinsics=K), text)
        elif v == "gt_masks":
            yield v, model.encode_surface(pix, text, vis, occ)
        elif v == "gt_visible":
            yield v, model.encode_surface(pix, text, vis, pred_occ)
        elif v == "gt_occluder":
            yield v, model.encode_surface(pix, text, pred_vis, occ)
        elif v == "gt_depth":
            yield v, model.encode_surface(PixelOutput(depth, pix.intrinsics, None, None), text, vis, occ)
        elif v == "aligned_depth_gt_k":
            aligned = _align_scale_shift(pix.depth[:, 0], depth[:, 0], vis[:, 0] > 0.5)[:, None]
            yield v, model.encode_surface(PixelOutput(aligned, K, None, None), text, vis, occ)
        elif v == "gt":
            yield v, model.encode_surface(PixelOutput(depth, K, None, None), text, vis, occ)
        elif v == "gt_filled":
            d, fv, fo = fill_occluded(depth, vis, occ)
            yield v, model.encode_surface(PixelOutput(d, K, None, None), text, fv, fo)
        elif v == "pred_filled":
            d, fv, fo = fill_occluded(pix.depth, pred_vis, pred_occ)
            yield v, model.encode_surface(PixelOutput(d, pix.intrinsics, None, None), text, fv, fo)


def _true_center(batch: dict) -> torch.Tensor:  # [B, 3]
    """The object frame's origin (its bounding-box centre) in the normalised frame of the true
    visible surface, as the training's centre loss places it."""
    from zsw.train import losses as L

    _, center, scale = L.visible_frame(batch["depth"], batch["intrinsics"], batch["visible_mask"] > 0.5)
    origin = batch["extrinsics"].new_zeros(batch["extrinsics"].shape[0], 1, 3)
    return L.query_points(origin, batch["extrinsics"], center, scale)[:, 0]


def _up_angles(pred: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Degrees: the camera's elevation above the object's horizon that each up axis implies (the
    camera's z axis points into the scene, so an up axis leaning away from it means a camera
    looking down) and the angle between the two axes."""
    pred, true = pred / pred.norm(), true / true.norm()
    elevation = lambda u: float(torch.rad2deg(torch.asin((-u[2]).clamp(-1, 1))))  # noqa: E731
    angle = float(torch.rad2deg(torch.acos((pred * true).sum().clamp(-1, 1))))
    return {"up_elevation_pred": round(elevation(pred), 2), "up_elevation_true": round(elevation(true), 2),
            "up_error_deg": round(angle, 2)}  # fmt: skip


@torch.no_grad()  # a decorator, not torch.set_grad_enabled(False): callers (tests) keep autograd
def main() -> None:
    from zsw import checkpoint
    from zsw.bench._harness import write_rows_and_summary
    from zsw.data.dataset import ShapeDataset
    from zsw.infer.grid import extract_meshes
    from zsw.infer.weights import resolve_weights
    from zsw.train.validate import score_view

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset root (ZeroShape's layout, with occluder masks)")
    ap.add_argument("--weights", default=None, help="checkpoint (default: the packaged model)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-per-category", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=48, help="grid cells per axis (dense extraction)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", required=True, help="output path without suffix")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")

    weights, label, _ = resolve_weights(args.weights)
    model = weights if isinstance(weights, torch.nn.Module) else checkpoint.load(weights).eval()
    size = model.config.pixel.image_size
    ds = ShapeDataset([args.data], args.split, max_per_category=args.max_per_category, with_shape=False, size=size)
    rows = []
    for i in range(len(ds)):
        batch = default_collate([ds[i]])
        _, sid = ds.sample_id(i)
        row = {"name": sid.name, "category": sid.category}
        true_up = batch["extrinsics"][:, :, 1].float()  # the object frame's y axis, in the camera's axes
        for v, out in surfaces(model, batch, variants):
            latents = model.latents(out)
            if latents.up is not None and "up_error_deg" not in row:
                row.update(_up_angles(latents.up[0].float(), true_up[0]))
            if v == "true_up":
                if latents.up is None:
                    row[v] = None  # no axial queries: nothing to swap
                    continue
                latents.up = true_up / true_up.norm(dim=-1, keepdim=True)
            if v == "true_center":
                if latents.center_offset is None:
                    row[v] = None  # no mirror queries: nothing to swap
                    continue
                latents.center_offset = _true_center(batch) - latents.view.center_anchor().float()
            mesh = extract_meshes(lambda p, lat=latents: model.decoder.decode(lat, p), 1, args.resolution)[0]
            if len(mesh.faces) == 0:
                row[v] = None
                continue
            m = score_view(mesh, ds, i, batch["extrinsics"][0])
            row[v] = {k: round(float(m[k]), 5) for k in ("cd", "acc", "comp", "fscore@0.05")}
        rows.append(row)
        print(json.dumps(row), flush=True)

    out = Path(args.out)
    cats = sorted({r["category"] for r in rows})

    def mean(v: str, key: str, cat: str | None = None) -> str:
        vals = [r[v][key] for r in rows if r.get(v) and (cat is None or r["category"] == cat)]
        return f"{np.mean(vals):.4f}" if vals else "-"

    lines = [
        f"# Error decomposition: {label}",
        "",
        f"{len(rows)} views of {args.data} ({args.split}, at most {args.max_per_category} per category), "
        f"dense {args.resolution}^3 grid, 10,000 points, ZeroShape's normalisation. CD / F@0.05.",
        "",
        "| variant | all | " + " | ".join(cats) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in cats) + " |",
    ]
    for v in variants:
        cells = [f"{mean(v, 'cd')} / {mean(v, 'fscore@0.05')[:5]}"]
        cells += [f"{mean(v, 'cd', c)[:5]} / {mean(v, 'fscore@0.05', c)[:4]}" for c in cats]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    write_rows_and_summary(out, rows, lines)


if __name__ == "__main__":
    main()
