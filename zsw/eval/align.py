"""Rotation alignment of a predicted cloud to the ground truth before scoring (ZeroShape's options).

Both are applied to clouds already normalised with :func:`~zsw.eval.metrics.normalize_pc`.

* :func:`brute_force_align` -- the paper's "brute-force search": 24 azimuths x 24 elevations x 12
  rolls = 6,912 rotations of the prediction, each re-normalised and scored by Chamfer distance
  against the ground truth; the best one wins. All rotations run as batches through
  :func:`zsw.kernels.chamfer_distance` (Triton on CUDA, the reference on CPU) and the running
  best is kept on the device, so the search synchronises with the host once, at the end.
* :func:`icp` -- point-to-point ICP (nearest neighbours + Kabsch with the reflection fix), 50
  iterations by default.

The rotation set follows ZeroShape's ``get_rotation_sphere``: ``R = Rz(roll) Rx(elev) Ry(azim) P``
with each angle on a uniform grid over [0, 360) degrees and ``P`` the fixed axis permutation
``[[-1, 0, 0], [0, 0, -1], [0, -1, 0]]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from zsw.errors import InputError
from zsw.eval.metrics import normalize_pc

__all__ = ["rotation_grid", "distinct_rotations", "brute_force_align", "icp", "chamfer_per_cloud"]

_PERMUTATION = ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, -1.0, 0.0))


def rotation_grid(
    azimuths: int = 24,
    elevations: int = 24,
    rolls: int = 12,
    device: str | torch.device | None = None,
) -> Tensor:  # [azimuths * elevations * rolls, 3, 3]
    """ZeroShape's brute-force rotation set, azimuth-major then elevation then roll."""

    def angles(n: int) -> Tensor:
        return torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)

    a, e, r = torch.meshgrid(angles(azimuths), angles(elevations), angles(rolls), indexing="ij")
    a, e, r = a.reshape(-1), e.reshape(-1), r.reshape(-1)
    one, zero = torch.ones_like(a), torch.zeros_like(a)

    def mat(rows):
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    ry = mat([[a.cos(), zero, a.sin()], [zero, one, zero], [-a.sin(), zero, a.cos()]])
    rx = mat([[one, zero, zero], [zero, e.cos(), -e.sin()], [zero, e.sin(), e.cos()]])
    rz = mat([[r.cos(), r.sin(), zero], [-r.sin(), r.cos(), zero], [zero, zero, one]])
    p = torch.tensor(_PERMUTATION, dtype=torch.float64)
    return (rz @ rx @ ry @ p).float().to(device)


def distinct_rotations(rotations: Tensor, decimals: int = 5) -> tuple[Tensor, Tensor]:  # [R,3,3] -> [U,3,3], [U]
    """The distinct rotations (to ``decimals``) in order of first appearance, and those indices.

    ZeroShape's Euler grid repeats rotations (6,912 entries, 3,216 distinct: elevations over the
    full circle revisit poses); scoring each distinct one once finds the same first best rotation.
    """
    key = torch.round(rotations.reshape(len(rotations), 9).double() * 10**decimals)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(rotations), dtype=torch.long, device=rotations.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(rotations), device=rotations.device), reduce="amin")
    first = first.sort().values
    return rotations[first], first


def _check_cloud(who: str, name: str, points: Tensor) -> None:
    """One line when ``points`` is not a non-empty [N, 3] cloud of finite points."""
    if points.dim() != 2 or points.shape[-1] != 3 or len(points) == 0:
        raise InputError(f"{who}: the {name} must be a non-empty [N, 3] point cloud, got {tuple(points.shape)}")
    if n := int((~torch.isfinite(points).all(dim=-1)).sum()):
        raise InputError(f"{who}: the {name} has {n} non-finite (NaN or inf) points of {len(points)}")


def chamfer_per_cloud(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:  # [B, N, 3], [B, M, 3] -> [B], [B]
    """Mean nearest-neighbour distances (plain L2) pred -> gt (accuracy) and gt -> pred (completeness)."""
    from zsw import kernels

    cham = kernels.chamfer_distance(pred.contiguous(), gt.contiguous())
    acc = cham.sq_dist_ab.clamp(min=0).sqrt().mean(dim=1)
    comp = cham.sq_dist_ba.clamp(min=0).sqrt().mean(dim=1)
    return acc, comp


@torch.no_grad()
def brute_force_align(
    pred: Tensor,  # [N, 3]
    gt: Tensor,  # [M, 3] normalised
    rotations: Tensor | None = None,  # [R, 3, 3]
    batch: int | None = None,
    method: str = "auto",
) -> tuple[Tensor, Tensor, int]:  # [N, 3] normalised, [3, 3], index
    """The rotation of ``pred`` (re-normalised) with the lowest Chamfer distance to ``gt``.

    Args:
        pred: predicted points (normalised or not: each rotation is re-normalised).
        gt: ground-truth points, already normalised.
        rotations: candidate rotations; default :func:`rotation_grid` (6,912).
        batch: rotations per Chamfer call of the ``kernels`` method (default 96 on CUDA, 24 on CPU).
        method: ``kernels`` -- batches of rotations through :func:`zsw.kernels.chamfer_distance`
            with the running best kept on the device (the GPU path; on CPU it runs the exact but
            slow reference); ``kdtree`` -- the CPU path: one k-d tree per cloud, built once,
            queried with the rotated points; ``auto`` -- kernels on CUDA, k-d trees otherwise.
            Both score every rotation exactly and return the first best one.

    Returns:
        The best rotated and normalised prediction, its rotation and its index in ``rotations``.

    Raises:
        InputError: an empty or non-finite cloud, or no rotations.
    """
    _check_cloud("brute_force_align", "prediction", pred)
    _check_cloud("brute_force_align", "ground truth", gt)
    device = pred.device
    if rotations is None:
        rotations = rotation_grid(device=device)
    if rotations.dim() != 3 or rotations.shape[1:] != (3, 3) or len(rotations) == 0:
        raise InputError(f"brute_force_align: rotations must be [R >= 1, 3, 3], got {tuple(rotations.shape)}")
    all_rotations = rotations.to(device=device, dtype=torch.float32)
    rotations, first = distinct_rotations(all_rotations)
    if method not in ("auto", "kernels", "kdtree"):
        raise ValueError(f"method must be auto, kernels or kdtree, got {method!r}")
    if method == "kdtree" or (method == "auto" and device.type != "cuda"):
        index = int(first[_best_rotation_kdtree(pred, gt, rotations)])
        rotation = all_rotations[index]
        return normalize_pc(pred.float() @ rotation.T), rotation, index
    if batch is None:
        batch = 96 if device.type == "cuda" else 24
    pred = pred.float()
    gt = gt.float().to(device)
    best_cd = torch.full((), float("inf"), device=device)
    best_idx = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(rotations), batch):
        rot = rotations[start : start + batch]  # [b, 3, 3]
        moved = normalize_pc(torch.einsum("bij,nj->bni", rot, pred))  # [b, N, 3]
        acc, comp = chamfer_per_cloud(moved, gt[None].expand(len(rot), -1, -1))
        cd = (acc + comp) / 2  # [b]
        value, i = cd.min(dim=0)
        better = value < best_cd  # strict: the first best rotation wins ties, as a sequential search
        best_idx = torch.where(better, i + start, best_idx)
        best_cd = torch.where(better, value, best_cd)
    index = int(first[best_idx])  # the one host synchronisation
    rotation = all_rotations[index]
    return normalize_pc(pred @ rotation.T), rotation, index


def _best_rotation_kdtree(pred: Tensor, gt: Tensor, rotations: Tensor) -> int:
    """Exact Chamfer distance of every rotation with two fixed k-d trees.

    With ``p`` the centred prediction, rotation ``R`` and its x/y extent ``s``, the normalised
    rotated cloud is ``x = R p / s``. Accuracy queries the ground-truth tree with ``x``;
    completeness uses ``min_i |y - R p_i / s| = min_i |s R^T y - p_i| / s`` and queries the tree of
    ``p`` with ``s R^T y``, so neither tree depends on the rotation.
    """
    from scipy.spatial import cKDTree

    p = pred.detach().double().cpu().numpy()
    p = p - p.mean(axis=0)
    y = gt.detach().double().cpu().numpy()
    tree_p, tree_y = cKDTree(p), cKDTree(y)
    rots = rotations.detach().double().cpu().numpy()
    step = max(1, (1 << 18) // max(len(p), len(y)))  # rotations per query call: amortises call overhead
    best, best_index = np.inf, 0
    for start in range(0, len(rots), step):
        r = rots[start : start + step]  # [b, 3, 3]
        x = np.einsum("bij,nj->bni", r, p)  # [b, N, 3]
        s = np.ptp(x[..., :2], axis=1).max(axis=1)  # [b]
        s = np.where(s > 0, s, 1.0)  # no x/y extent: only centred, as normalize_pc
        acc = tree_y.query((x / s[:, None, None]).reshape(-1, 3), workers=-1)[0].reshape(len(r), -1).mean(1)
        back = np.einsum("mj,bji->bmi", y, r) * s[:, None, None]  # s R^T y  [b, M, 3]
        comp = tree_p.query(back.reshape(-1, 3), workers=-1)[0].reshape(len(r), -1).mean(1) / s
        cd = (acc + comp) / 2
        i = int(np.argmin(cd))
        if cd[i] < best:
            best, best_index = float(cd[i]), start + i
    return best_index


def _nearest_index(x: Tensor, y: Tensor, method: str) -> Tensor:  # [N, 3], [M, 3] -> [N] indices into y
    if method == "kernels" or (method == "auto" and x.device.type == "cuda"):
        from zsw import kernels

        return kernels.nearest_neighbors(x[None], y[None]).idx[0]
    from scipy.spatial import cKDTree

    idx = cKDTree(y.detach().double().cpu().numpy()).query(x.detach().double().cpu().numpy(), workers=-1)[1]
    return torch.from_numpy(idx).to(x.device)


@torch.no_grad()
def icp(
    pred: Tensor,  # [N, 3]
    gt: Tensor,  # [M, 3]
    iterations: int = 50,
    method: str = "auto",
) -> Tensor:  # [N, 3]
    """Rigidly move ``pred`` onto ``gt`` by point-to-point ICP (rotation + translation, no scale).

    Nearest neighbours come from :func:`zsw.kernels.nearest_neighbors` (``kernels``) or a k-d tree
    (``kdtree``); ``auto`` picks the kernels on CUDA and the tree on the CPU. An empty or
    non-finite cloud is an :class:`~zsw.errors.InputError`.
    """
    _check_cloud("icp", "prediction", pred)
    _check_cloud("icp", "ground truth", gt)
    x = pred.float().clone()
    y = gt.float().to(x.device)
    for _ in range(iterations):
        target = y[_nearest_index(x, y, method)]
        mx, my = x.mean(0), target.mean(0)
        h = (x - mx).T.double() @ (target - my).double()  # [3, 3] cross-covariance
        u, _, vt = torch.linalg.svd(h)
        d = torch.linalg.det(vt.T @ u.T).sign().reshape(1)
        fix = torch.diag(torch.cat([torch.ones(2, dtype=h.dtype, device=h.device), torch.where(d == 0, 1.0, d)]))
        r = (vt.T @ fix @ u.T).float()  # proper rotation (det +1)
        x = (x - mx) @ r.T + my
    return x
