"""ZeroShape's shape metrics: accuracy, completeness, Chamfer distance and F-scores.

Protocol (ZeroShape ``utils/eval_3D.py``): sample 10,000 points on each mesh
(:func:`sample_surface`), centre each cloud and divide by its max(x-extent, y-extent)
(:func:`normalize_pc`), optionally align, then :func:`chamfer_fscore` on the points as given:

* accuracy = mean distance from each predicted point to its nearest ground-truth point;
* completeness = mean distance from each ground-truth point to its nearest predicted point;
* CD = (accuracy + completeness) / 2, with plain (not squared) L2 distances;
* F-score at d = 2PR / (P + R), P = fraction of predicted points within d of the ground truth,
  R = fraction of ground-truth points within d of the prediction, NaN -> 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from zsw.errors import InputError

__all__ = [
    "chamfer_fscore",
    "nearest_distances",
    "normalize_pc",
    "sample_surface",
    "mesh_agreement",
    "THRESHOLDS",
]

#: ZeroShape's F-score thresholds
THRESHOLDS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def _as_tensor(points: Tensor | np.ndarray) -> Tensor:  # float64 stays float64, anything else float32
    t = torch.as_tensor(np.asarray(points) if not isinstance(points, Tensor) else points)
    if t.dim() != 2 or t.shape[-1] != 3:
        raise ValueError(f"point clouds must be [N, 3], got {tuple(t.shape)}")
    return t if t.dtype == torch.float64 else t.float()


def _check_finite(pred: Tensor, gt: Tensor) -> None:
    """One line naming the cloud(s) with NaN or infinite points (one reduction per cloud)."""
    bad = [
        f"the {name} has {n} non-finite (NaN or inf) points of {len(t)}"
        for name, t in (("prediction", pred), ("ground truth", gt))
        if (n := int((~torch.isfinite(t).all(dim=-1)).sum()))
    ]
    if bad:
        raise InputError(f"chamfer_fscore: {' and '.join(bad)}")


def _threshold(t) -> float:
    """A threshold as a plain Python number: a float32 tensor's or numpy value's shortest decimal
    (``0.05``, not ``0.05000000074505806``), so the F-score key reads as it was written."""
    if isinstance(t, Tensor):
        t = t.detach().cpu().numpy()
    if isinstance(t, np.ndarray) and t.ndim == 0:
        t = t[()]
    if isinstance(t, np.floating):
        t = float(np.format_float_positional(t, unique=True))
    elif isinstance(t, np.integer):
        t = int(t)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        raise InputError(f"chamfer_fscore: thresholds must be finite positive numbers, got {t!r}")
    return t


def nearest_distances(
    pred: Tensor,  # [N, 3]
    gt: Tensor,  # [M, 3]
    method: str = "auto",
) -> tuple[Tensor, Tensor]:  # [N] pred -> gt, [M] gt -> pred (plain L2)
    """Distance from every point to its nearest neighbour in the other cloud, both ways.

    ``method``: ``kernels`` = :func:`zsw.kernels.chamfer_distance` (Triton on CUDA, the exact
    direct-difference reference on CPU; float32); ``kdtree`` = scipy's exact k-d tree search
    (float64, on CPU; ~100x faster there than the brute-force reference at 10,000 points; its
    distances come back in the inputs' dtype, float64 if either is); ``auto`` = kernels for CUDA
    tensors, k-d tree otherwise. Both are exact nearest neighbours; distances agree to float32
    rounding. The points must be finite (:func:`chamfer_fscore` checks).
    """
    if method not in ("auto", "kernels", "kdtree"):
        raise ValueError(f"method must be auto, kernels or kdtree, got {method!r}")
    if method == "kernels" or (method == "auto" and pred.device.type == "cuda"):
        from zsw import kernels

        cham = kernels.chamfer_distance(pred.float()[None], gt.float()[None])
        return cham.sq_dist_ab[0].clamp(min=0).sqrt(), cham.sq_dist_ba[0].clamp(min=0).sqrt()
    from scipy.spatial import cKDTree

    p, g = pred.detach().cpu().double().numpy(), gt.detach().cpu().double().numpy()
    d_pred = cKDTree(g).query(p, workers=-1)[0]
    d_gt = cKDTree(p).query(g, workers=-1)[0]
    dtype = torch.promote_types(pred.dtype, gt.dtype)
    return torch.from_numpy(d_pred).to(dtype), torch.from_numpy(d_gt).to(dtype)


def chamfer_fscore(
    pred_points: Tensor | np.ndarray,  # [N, 3]
    gt_points: Tensor | np.ndarray,  # [M, 3]
    thresholds: Sequence[float] = THRESHOLDS,
    method: str = "auto",
) -> dict[str, float]:
    """Accuracy, completeness, CD and F-scores of two point clouds, as given (no normalisation).

    ``method`` picks the nearest-neighbour search (see :func:`nearest_distances`).

    Returns:
        ``{"acc", "comp", "cd", "fscore@0.005", "fscore@0.01", ...}`` (threshold as Python prints
        it; a tensor's or numpy value's as its shortest decimal: ``fscore@0.05``). An empty cloud on
        either side gives infinite distances and zero F-scores.

    Raises:
        InputError: a cloud holds NaN or infinite points (naming which and how many), or a
            threshold is not a finite positive number.
    """
    thresholds = [_threshold(t) for t in thresholds]
    pred, gt = _as_tensor(pred_points), _as_tensor(gt_points)
    if gt.device != pred.device:
        gt = gt.to(pred.device)
    _check_finite(pred, gt)
    out: dict[str, float] = {}
    if len(pred) == 0 or len(gt) == 0:
        out.update(acc=float("inf"), comp=float("inf"), cd=float("inf"))
        out.update({f"fscore@{t}": 0.0 for t in thresholds})
        return out
    d_pred, d_gt = nearest_distances(pred, gt, method)  # [N] pred -> gt, [M] gt -> pred
    acc, comp = d_pred.mean().item(), d_gt.mean().item()
    out.update(acc=acc, comp=comp, cd=(acc + comp) / 2)
    for t in thresholds:
        precision = (d_pred < t).float().mean().item()
        recall = (d_gt < t).float().mean().item()
        f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        out[f"fscore@{t}"] = 0.0 if np.isnan(f) else f
    return out


def normalize_pc(points: Tensor | np.ndarray) -> Tensor:  # [N, 3] or [B, N, 3]
    """Subtract the centroid and divide by max(x-extent, y-extent) (z is ignored), per cloud.

    A cloud without x/y extent (a single point, such as the zeros of an empty mesh, or points on
    one line parallel to z) has nothing to divide by: it is only centred.
    """
    p = torch.as_tensor(np.asarray(points) if not isinstance(points, Tensor) else points).float()
    squeeze = p.dim() == 2
    if squeeze:
        p = p[None]
    center = p.mean(dim=1, keepdim=True)
    extent = (p.amax(dim=1) - p.amin(dim=1))[:, :2].amax(dim=-1)  # [B]
    out = (p - center) / torch.where(extent > 0, extent, 1.0)[:, None, None]
    return out[0] if squeeze else out


def sample_surface(mesh, count: int = 10000, seed: int | None = 0) -> np.ndarray:  # [count, 3]
    """``count`` points uniformly on a trimesh surface; an empty mesh gives zeros (as ZeroShape)."""
    import trimesh

    if mesh is None or len(getattr(mesh, "faces", [])) == 0 or mesh.area <= 0:
        return np.zeros((count, 3), dtype=np.float32)
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, dtype=np.float32)


def _distance_to_surface(points: np.ndarray, samples: np.ndarray, mesh, threshold: float) -> np.ndarray:  # [N]
    """Distances from ``points`` to ``mesh``, exact wherever it decides ``< threshold``.

    A k-d tree over points sampled on the mesh gives an upper bound; only the points whose bound is
    not below ``threshold`` get the exact (slower) point-to-triangle distance.
    """
    import trimesh
    from scipy.spatial import cKDTree

    d = cKDTree(samples).query(points, workers=-1)[0]
    unsure = d >= threshold
    if unsure.any():
        d[unsure] = trimesh.proximity.ProximityQuery(mesh).on_surface(points[unsure])[1]
    return d


def mesh_agreement(mesh_a, mesh_b, threshold: float = 0.01, count: int = 100_000, seed: int = 0) -> float:
    """F-score at ``threshold`` between two meshes in the same frame (no normalisation).

    For comparing two extractions of one field (``fast`` against ``dense``): ``count`` points
    sampled on each surface are matched against the other *surface* (a k-d tree over its samples,
    refined by exact point-to-triangle distances where the tree is not conclusive), so identical
    meshes score exactly 1.0. Two empty meshes agree; an empty and a non-empty one do not.
    """
    empty_a, empty_b = len(mesh_a.faces) == 0, len(mesh_b.faces) == 0
    if empty_a or empty_b:
        return 1.0 if empty_a and empty_b else 0.0
    pa = sample_surface(mesh_a, count, seed=seed).astype(np.float64)
    pb = sample_surface(mesh_b, count, seed=seed + 1).astype(np.float64)
    precision = float((_distance_to_surface(pa, pb, mesh_b, threshold) < threshold).mean())
    recall = float((_distance_to_surface(pb, pa, mesh_a, threshold) < threshold).mean())
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
