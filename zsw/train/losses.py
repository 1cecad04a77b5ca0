"""Training losses of ZeroShape-W (the table below; docs/training.md, "The recipe"), with ZeroShape's reductions.

========================  ==========  ==========================================================
term                      weight      definition
========================  ==========  ==========================================================
``intrinsics``            10          squared L2 between predicted and GT *normalised* visible
                                      shapes (predicted depth + K vs GT depth + K, both lifted on
                                      the GT visible mask), summed over xyz, averaged over the
                                      visible pixels of the batch (ZeroShape's ``intr_loss``)
``depth``                 1           scale-and-shift-invariant MAE on the visible object
``aux_depth``             0.1         the same SSI-MAE against pseudo-depth (Depth Anything V2
                                      relative inverse depth) over the whole image, on predicted
                                      inverse depth ``1 / (depth + aux_depth_eps)``
``visible_mask``          1           BCE with logits, mean over pixels
``occluder_mask``         1           BCE with logits, mean over pixels
``occupancy``             1           BCE with logits on the query points, mean over B x P;
                                      label ``sdf - 0.003 < 0`` (soft with
                                      ``data.label_softness``)
``depth_gradient``        0           optional multi-scale gradient matching on aligned inverse
                                      depth (ZeroShape's MiDaS loss uses 0.1)
``focal``                 0           optional: ``log(f_pred / f_true) ** 2``, fx and fy, mean over
                                      the batch (not in the paper)
========================  ==========  ==========================================================

SSI-MAE (MiDaS / Omnidata, as ZeroShape's ``midas_loss.py``): per image, over the valid pixels,
subtract the median and divide by the mean absolute deviation (denominator: count + 1, plus
1e-6), for prediction and target alike; then the L1 difference summed over valid pixels and
divided by the number of valid pixels in the batch (+1e-6).

Why inverse depth for the auxiliary term: Depth Anything gives disparity up to scale and shift,
the model depth in [0, 1] up to scale and shift. ``1 / (d + eps)`` is an affine function of true
disparity exactly when ``d + eps`` is proportional to true depth, which the object term (shift
invariant) allows, so both terms can be met at once; ``eps`` keeps the inverse bounded where the
network outputs 0.

Query points (stage ``full``) are moved to the camera with the GT ``[R|t]`` and normalised with
the *GT* visible surface's centroid and scale (:func:`query_points`); the tokens they are decoded
against come from the *predicted* surface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zsw.model.geometry import normalize_visible, unproject_depth

__all__ = [
    "ssi_normalize",
    "ssi_mae",
    "gradient_matching",
    "depth_loss",
    "aux_depth_loss",
    "intrinsics_loss",
    "focal_loss",
    "focal_log_error",
    "mask_bce",
    "occupancy_bce",
    "visible_frame",
    "query_points",
]


def ssi_normalize(
    x: Tensor,  # [B, 1, H, W]
    mask: Tensor,  # [B, 1, H, W] bool
) -> Tensor:  # [B, 1, H, W]
    """``(x - median) / (mean |x - median| + 1e-6)`` per image over the valid pixels.

    The median is ``torch.nanmedian`` of the valid values (the lower middle value for an even
    count), 0 for an image without valid pixels; the deviation is divided by ``count + 1``.
    """
    B = x.shape[0]
    flat = x.reshape(B, -1)
    m = mask.reshape(B, -1)
    median = torch.where(m, flat, torch.full_like(flat, float("nan"))).nanmedian(dim=1).values
    median = torch.nan_to_num(median, nan=0.0)[:, None]  # [B, 1]
    dev = ((flat - median).abs() * m).sum(dim=1, keepdim=True) / (m.sum(dim=1, keepdim=True) + 1)
    return ((flat - median) / (dev + 1e-6)).reshape(x.shape)


def ssi_mae(
    pred: Tensor,  # [B, 1, H, W]
    target: Tensor,  # [B, 1, H, W]
    mask: Tensor,  # [B, 1, H, W] bool
) -> Tensor:  # []
    """Scale-and-shift-invariant MAE, averaged over all valid pixels of the batch."""
    pred, target = pred.float(), target.float()
    diff = (ssi_normalize(pred, mask) - ssi_normalize(target, mask)).abs() * mask
    return diff.sum() / (mask.sum() + 1e-6)


def _align_scale_shift(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:  # [B, H, W] each
    """Least-squares ``s * pred + t`` matching ``target`` on ``mask`` per image (MiDaS)."""
    m = mask.float()
    a00 = (m * pred * pred).sum((1, 2))
    a01 = (m * pred).sum((1, 2))
    a11 = m.sum((1, 2))
    b0 = (m * pred * target).sum((1, 2))
    b1 = (m * target).sum((1, 2))
    det = a00 * a11 - a01 * a01
    ok = det != 0
    safe = torch.where(ok, det, torch.ones_like(det)) + 1e-6
    s = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.zeros_like(det))
    t = torch.where(ok, (-a01 * b0 + a00 * b1) / safe, torch.zeros_like(det))
    return s[:, None, None] * pred + t[:, None, None]


def gradient_matching(
    pred: Tensor,  # [B, 1, H, W] depth
    target: Tensor,  # [B, 1, H, W] depth
    mask: Tensor,  # [B, 1, H, W] bool
    scales: int = 4,
) -> Tensor:  # []
    """MiDaS multi-scale gradient matching on inverse depth after least-squares alignment, as
    ZeroShape's depth loss (per-image mean over valid pixels, batch mean, summed over scales)."""
    p = 1.0 / (pred.float()[:, 0] + 1e-6)
    g = 1.0 / (target.float()[:, 0] + 1e-6)
    m = mask[:, 0]
    p = _align_scale_shift(p, g, m)
    total = p.new_zeros(())
    for scale in range(scales):
        step = 2**scale
        ps, gs, ms = p[:, ::step, ::step], g[:, ::step, ::step], m[:, ::step, ::step].float()
        diff = (ps - gs) * ms
        gx = (diff[:, :, 1:] - diff[:, :, :-1]).abs() * ms[:, :, 1:] * ms[:, :, :-1]
        gy = (diff[:, 1:, :] - diff[:, :-1, :]).abs() * ms[:, 1:, :] * ms[:, :-1, :]
        per_image = gx.sum((1, 2)) + gy.sum((1, 2))
        count = ms.sum((1, 2))
        per_image = torch.where(count > 0, per_image / count.clamp(min=1), per_image)
        total = total + per_image.mean()
    return total


def depth_loss(pred: Tensor, target: Tensor, mask: Tensor, gradient_weight: float = 0.0) -> Tensor:  # []
    """SSI-MAE on the visible object, plus optional gradient matching (ZeroShape: 0.1)."""
    loss = ssi_mae(pred, target, mask)
    if gradient_weight > 0:
        loss = loss + gradient_weight * gradient_matching(pred, target, mask)
    return loss


def aux_depth_loss(
    pred_depth: Tensor,  # [B, 1, H, W] in [0, 1]
    pseudo_disparity: Tensor,  # [B, 1, H, W]
    valid: Tensor,  # [B, 1, H, W] bool
    eps: float = 0.1,
) -> Tensor:  # []
    """SSI-MAE between predicted inverse depth and pseudo-disparity over the valid pixels."""
    return ssi_mae(1.0 / (pred_depth.float() + eps), pseudo_disparity, valid)


def visible_frame(
    depth: Tensor,  # [B, 1, S, S]
    intrinsics: Tensor,  # [B, 3, 3]
    mask: Tensor,  # [B, 1, S, S] bool
) -> tuple[Tensor, Tensor, Tensor]:  # [B, S*S, 3], [B, 3], [B]
    """The visible surface lifted with ``depth`` and ``K`` on ``mask``, normalised (invalid
    pixels 0), with its centroid and scale (``camera = normalised * scale + centroid``)."""
    points = unproject_depth(depth.float(), intrinsics.float())
    return normalize_visible(points, mask.reshape(mask.shape[0], -1))


def intrinsics_loss(
    pred_points: Tensor,  # [B, P, 3] normalised predicted visible shape
    gt_points: Tensor,  # [B, P, 3] normalised GT visible shape
    mask: Tensor,  # [B, P] bool
) -> Tensor:  # []
    """Squared distance summed over xyz, averaged over the valid points of the batch."""
    dist = ((pred_points.float() - gt_points.float()) ** 2).sum(-1)
    m = mask.float()
    return (dist * m).sum() / (m.sum() + 1e-8)


def _log_focal_ratio(pred: Tensor, true: Tensor) -> Tensor:  # [B, 3, 3] intrinsics each -> [B, 2]
    """``log(f_pred / f_true)`` for fx and fy."""
    f_pred = torch.stack([pred[:, 0, 0], pred[:, 1, 1]], dim=-1).float().clamp(min=1e-6)
    f_true = torch.stack([true[:, 0, 0], true[:, 1, 1]], dim=-1).float().clamp(min=1e-6)
    return torch.log(f_pred) - torch.log(f_true)


def focal_loss(pred: Tensor, true: Tensor) -> Tensor:  # [B, 3, 3] intrinsics each -> []
    """Squared log ratio of the predicted to the true focal lengths (fx and fy), mean over the
    batch: the same for a focal length twice or half the truth, and blind to image size."""
    return _log_focal_ratio(pred, true).pow(2).mean()


def focal_log_error(pred: Tensor, true: Tensor) -> Tensor:  # [B, 3, 3] each -> [B]
    """``|log(fx_pred / fx_true)|`` per sample: 0.22 is a focal length 25 % off."""
    return _log_focal_ratio(pred, true)[:, 0].abs()


def mask_bce(logits: Tensor, target: Tensor) -> Tensor:  # [B, 1, S, S] each -> []
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def occupancy_bce(logits: Tensor, occupancy: Tensor) -> Tensor:  # [B, P] each -> []
    return F.binary_cross_entropy_with_logits(logits.float(), occupancy.float())


@torch.no_grad()
def surface_alignment(
    gt_points: Tensor,  # [B, P, 3] normalised ground-truth visible surface (visible_frame)
    gt_mask: Tensor,  # [B, P] bool: pixels of gt_points
    lifted: Tensor,  # [B, P, 3] the normalised surface the model was given
    lifted_mask: Tensor,  # [B, P] bool: pixels of lifted
    min_pixels: int = 16,
    prior: float = 0.1,
    limits: tuple[float, float] = (0.5, 2.0),
) -> tuple[Tensor, Tensor]:  # [B, 3] scale, [B, 3] shift
    """The per-axis map ``x -> a * x + b`` that gives the ground-truth visible surface the mean and
    spread of the surface the model was given, over the pixels both cover (moments, not a
    regression: a noisy lifted surface would regress the labels towards flat).

    Stage ``full`` with ``align_labels`` moves the query points and their labels with it, so that
    the decoder is taught to complete the surface it sees rather than the one it would have seen
    with a perfect pixel model (``docs/training.md``). Each axis's scale is pulled towards the one
    isotropic scale by ``prior`` x the mean variance (a flat face seen head-on has no depth
    variance to fit) and clamped to ``limits``; images with fewer than ``min_pixels`` shared
    pixels keep the identity.
    """
    g, p = gt_points.float(), lifted.float()
    w = (gt_mask & lifted_mask).float()[..., None]  # [B, P, 1]
    n = w.sum(1)  # [B, 1]
    count = n.clamp(min=1)
    mg, mp = (g * w).sum(1) / count, (p * w).sum(1) / count
    dg, dp = (g - mg[:, None]) * w, (p - mp[:, None]) * w
    var_g, var_p = (dg * dg).sum(1) / count, (dp * dp).sum(1) / count  # [B, 3]
    iso2 = var_p.sum(-1, keepdim=True) / var_g.sum(-1, keepdim=True).clamp(min=1e-12)
    lam = prior * var_g.mean(-1, keepdim=True)
    a = ((var_p + lam * iso2) / (var_g + lam).clamp(min=1e-12)).sqrt().clamp(*limits)
    b = mp - a * mg
    few = n < min_pixels
    return torch.where(few, torch.ones_like(a), a), torch.where(few, torch.zeros_like(b), b)


def query_points(
    points: Tensor,  # [B, P, 3] object frame
    extrinsics: Tensor,  # [B, 3, 4] object -> camera
    center: Tensor,  # [B, 3] GT visible centroid (camera frame)
    scale: Tensor,  # [B] GT visible scale
) -> Tensor:  # [B, P, 3] in the normalised frame of the GT visible surface
    """``(R p + t - centroid) / scale``: query points in the frame the decoder works in."""
    R, t = extrinsics[:, :, :3].float(), extrinsics[:, :, 3].float()
    cam = points.float() @ R.transpose(1, 2) + t[:, None, :]
    return (cam - center[:, None, :]) / scale[:, None, None]
