"""Per-epoch validation on the val lists, as the model is used at inference (predicted masks).

Every stage but ``shape`` reports the depth SSI-MAE on the visible object, the intrinsics loss,
how far the focal length is off (``|log(f_pred / f_true)|``) and the IoU of the predicted visible
mask. Stage ``full`` also extracts a mesh per view
(:func:`zsw.infer.grid.extract_meshes`, a small grid by default), samples it, and scores it
against the ground-truth point cloud with ZeroShape's protocol (both clouds centred and scaled by
their max x/y extent; Chamfer distance and F-scores from :func:`zsw.eval.metrics.chamfer_fscore`,
which uses the Chamfer kernel where one is available). Disconnected parts under ``min_part`` of
the largest's area are dropped first, as ``zsw reconstruct`` and ``zsw eval`` drop them: the best
checkpoint is chosen on the meshes users get.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import default_collate

from zsw.data.dataset import READ_ERRORS, ShapeDataset
from zsw.errors import InputError
from zsw.infer.settings import MIN_PART
from zsw.train import losses as L

__all__ = ["validate", "score_view", "spread"]

log = logging.getLogger(__name__)


def _ground_truth_surface(model: torch.nn.Module, batch: dict):
    """The model's encoding of the ground-truth visible surface (depth, K, masks)."""
    from zsw.model.pixel import PixelOutput

    image = batch["image"]
    gt = PixelOutput(batch["depth"].to(image.dtype), batch["intrinsics"].to(image.dtype), None, None)
    occluder = batch["occluder_mask"].to(image.dtype) if model.config.pixel.mask_heads else None
    text = model.embed_prompts(None, image.shape[0])
    return model.encode_surface(gt, text, batch["visible_mask"].to(image.dtype), occluder)


def score_view(
    mesh, dataset: ShapeDataset, index: int, extrinsics: torch.Tensor, points: int = 10000, device="cpu"
) -> dict:
    """ZeroShape's protocol for view ``index`` of ``dataset``: ``points`` samples of ``mesh`` (camera
    frame) against the object's point cloud turned into the camera's axes by ``extrinsics``
    ``[3, 4]``, both centred and scaled by their max x/y extent (:func:`zsw.eval.metrics.chamfer_fscore`'s
    metrics, computed on ``device``). Raises what reading the point cloud raises (``READ_ERRORS``)."""
    from zsw.eval.metrics import chamfer_fscore, normalize_pc, sample_surface

    layout, sid = dataset.sample_id(index)
    gt = np.load(layout.pointcloud(sid), allow_pickle=False).astype(np.float32)
    if gt.ndim != 2 or gt.shape[1:] != (3,) or not np.isfinite(gt).all():
        raise InputError(f"point cloud {layout.pointcloud(sid)} is not [M, 3] finite points")
    R = extrinsics[:, :3].double().cpu().numpy()
    gt = (gt @ R.T).astype(np.float32)
    pred = sample_surface(mesh, points, seed=0)
    return chamfer_fscore(normalize_pc(pred).to(device), normalize_pc(gt).to(device))


def spread(total: int, n: int) -> list[int]:
    """``min(n, total)`` indices of ``range(total)`` spread evenly over it, in order (all when ``n >= total``)."""
    n = min(n, total)
    return [i * total // n for i in range(n)]


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    dataset: ShapeDataset,
    stage: str,
    device: torch.device,
    *,
    max_samples: int = 16,
    resolution: int = 32,
    surface_points: int = 10000,
    batch_size: int = 4,
    min_part: float = MIN_PART,
) -> dict[str, float]:
    """Mean metrics over ``max_samples`` views of ``dataset`` spread evenly over it (see the module
    docstring): views are listed root by root and category by category, so the first ones would be
    one category of the first root."""
    from zsw.infer.grid import drop_small_parts, extract_meshes

    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = skipped = 0
    chosen = spread(len(dataset), max_samples)
    try:
        for start in range(0, len(chosen), batch_size):
            items = [dataset[i] for i in chosen[start : start + batch_size]]
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in default_collate(items).items()}
            image, visible = batch["image"], batch["visible_mask"] > 0.5
            B = image.shape[0]
            has_masks = bool(model.config.pixel.mask_heads)
            if stage == "pixel":
                pix = model.pixel(image, model.embed_prompts(None, B))
                depth, K, vis_logits = pix.depth, pix.intrinsics, pix.visible_mask_logits
            elif stage == "shape":  # the ground-truth visible surface, as this stage trains
                out = _ground_truth_surface(model, batch)
                depth, K, vis_logits = out.depth, out.intrinsics, None
            else:
                out = model(image, mask=None if has_masks else visible.to(image.dtype))
                depth, K, vis_logits = out.depth, out.intrinsics, out.visible_mask_logits
            per = {"val/depth_ssi_mae": [], "val/intrinsics": [], "val/focal_log_error": [], "val/visible_iou": []}
            gt_pts, _, _ = L.visible_frame(batch["depth"], batch["intrinsics"], visible)
            pred_pts, _, _ = L.visible_frame(depth, K, visible)
            # stage shape reads the true depth and K: their errors would be 0 by construction
            for b in range(B) if stage != "shape" else ():
                sl = slice(b, b + 1)
                per["val/depth_ssi_mae"].append(float(L.ssi_mae(depth[sl], batch["depth"][sl], visible[sl])))
                per["val/intrinsics"].append(
                    float(L.intrinsics_loss(pred_pts[sl], gt_pts[sl], visible[sl].reshape(1, -1)))
                )
                per["val/focal_log_error"].append(float(L.focal_log_error(K[sl], batch["intrinsics"][sl])[0]))
                if vis_logits is not None:
                    p, g = vis_logits[b] >= 0, visible[b]
                    union = (p | g).sum().item()
                    per["val/visible_iou"].append((p & g).sum().item() / union if union else 1.0)
            if stage in ("shape", "full"):
                latents = model.latents(out)

                def decode(pts: torch.Tensor, latents=latents) -> torch.Tensor:  # [B, N, 3] -> [B, N]
                    return model.decoder.decode(latents, pts)

                meshes = extract_meshes(decode, B, resolution, device=image.device)
                for b, mesh in enumerate(meshes):
                    mesh, _ = drop_small_parts(mesh, min_part)
                    try:
                        index = int(batch["index"][b])
                        m = score_view(mesh, dataset, index, batch["extrinsics"][b], surface_points, device)
                    except READ_ERRORS as e:  # said and counted: the mean is then over fewer views
                        skipped += 1
                        log.warning("validation skips view %s: %s", dataset.sample_id(index)[1].name, e)
                        continue
                    for key in ("cd", "fscore@0.01", "fscore@0.05"):
                        per.setdefault(f"val/{key}", []).append(m[key])
            for key, values in per.items():
                if values:
                    sums[key] = sums.get(key, 0.0) + float(np.sum(values))
                    sums[key + "#"] = sums.get(key + "#", 0.0) + len(values)
            count += B
    finally:
        model.train(was_training)
    out_metrics = {k: sums[k] / sums[k + "#"] for k in sums if not k.endswith("#") and sums[k + "#"] > 0}
    out_metrics["val/samples"] = float(count)
    if skipped:
        out_metrics["val/skipped"] = float(skipped)
    return out_metrics
