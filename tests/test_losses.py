"""Each training loss against a hand-computed case (zsw.train.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from zsw.model.geometry import normalize_visible, unproject_depth
from zsw.train import losses as L


def _img(values, shape=(1, 1, 2, 2)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_ssi_normalize_by_hand():
    # valid values 1, 2, 4 (the 4th pixel is masked): median 2 (torch.nanmedian), mean absolute
    # deviation over count + 1 = (1 + 0 + 2) / 4 = 0.75
    x = _img([1.0, 2.0, 4.0, 100.0])
    m = _img([1, 1, 1, 0]).bool()
    out = L.ssi_normalize(x, m).flatten()
    dev = 0.75 + 1e-6
    assert torch.allclose(out[:3], torch.tensor([-1 / dev, 0.0, 2 / dev]))
    # an even count takes the lower middle value, as torch.nanmedian (ZeroShape's choice)
    y = L.ssi_normalize(_img([1.0, 2.0, 3.0, 10.0]), torch.ones(1, 1, 2, 2, dtype=torch.bool)).flatten()
    assert y[1].abs() < 1e-6


def test_ssi_mae_by_hand_and_invariance():
    target = _img([1.0, 2.0, 4.0, 0.0])
    mask = _img([1, 1, 1, 0]).bool()
    pred = _img([1.0, 3.0, 4.0, 9.0])
    # pred: median 3, deviation (2 + 0 + 1) / 4 = 0.75 -> (-8/3, 0, 4/3)
    # target: median 2, deviation 0.75 -> (-4/3, 0, 8/3); |diff| = (4/3, 0, 4/3) over 3 pixels
    expected = (4 / 3 + 4 / 3) / 3
    assert math.isclose(float(L.ssi_mae(pred, target, mask)), expected, rel_tol=1e-4)
    # scale and shift do not matter; the masked pixel does not matter
    g = torch.Generator().manual_seed(0)
    t = torch.rand(2, 1, 8, 8, generator=g) + 1
    m = torch.rand(2, 1, 8, 8, generator=g) > 0.3
    p = 3.5 * t + 0.7 + 100 * (~m)
    assert float(L.ssi_mae(p, t, m)) < 1e-5
    # the batch reduction divides by all valid pixels of the batch
    both = L.ssi_mae(torch.cat([pred, target]), torch.cat([target, target]), torch.cat([mask, mask]))
    assert math.isclose(float(both), expected / 2, rel_tol=1e-4)


def test_depth_loss_gradient_term():
    g = torch.Generator().manual_seed(1)
    t = torch.rand(1, 1, 16, 16, generator=g) + 1
    m = torch.ones_like(t, dtype=torch.bool)
    assert float(L.gradient_matching(t, t, m)) < 1e-5
    # a pure scale of inverse depth is aligned away by least squares
    assert float(L.gradient_matching(1 / (2 / t), t, m)) < 1e-4
    # one row, one scale, by hand: inverse depths (1, 1/2) vs (1, 1): aligned prediction is the
    # least-squares fit of (1, 0.5) -> (1, 1), i.e. constant 1, so the gradient term is 0 ...
    p2, t2 = torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[1.0, 1.0]]]])
    assert float(L.gradient_matching(p2, t2, torch.ones_like(p2, dtype=torch.bool), scales=1)) < 1e-5
    # ... while three pixels that no affine map aligns leave a residual
    p3, t3 = torch.tensor([[[[1.0, 2.0, 1.0]]]]), torch.tensor([[[[1.0, 1.0, 2.0]]]])
    assert float(L.gradient_matching(p3, t3, torch.ones_like(p3, dtype=torch.bool), scales=1)) > 0.1
    assert float(L.depth_loss(t, t, m, gradient_weight=0.1)) < 1e-5


def test_aux_depth_loss_on_inverse_depth():
    g = torch.Generator().manual_seed(2)
    depth = torch.rand(2, 1, 8, 8, generator=g)  # the network's depth in [0, 1]
    valid = torch.ones_like(depth, dtype=torch.bool)
    disparity = 5.0 / (depth + 0.1) + 0.3  # any affine map of 1 / (depth + eps)
    assert float(L.aux_depth_loss(depth, disparity, valid, eps=0.1)) < 1e-5
    assert float(L.aux_depth_loss(depth, depth, valid, eps=0.1)) > 0.1
    assert float(L.aux_depth_loss(depth, disparity, torch.zeros_like(valid))) == 0.0  # nothing valid


def test_intrinsics_loss_by_hand():
    pred = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]]])
    gt = torch.zeros(1, 3, 3)
    mask = torch.tensor([[True, True, False]])
    # squared distances 1 and 4, summed over xyz, averaged over the 2 valid points
    assert math.isclose(float(L.intrinsics_loss(pred, gt, mask)), 2.5, rel_tol=1e-6)


def test_focal_loss_and_error_by_hand():
    true = torch.tensor([[[300.0, 0, 112], [0, 300.0, 112], [0, 0, 1]]]).repeat(2, 1, 1)
    pred = true.clone()
    pred[0, 0, 0] = pred[0, 1, 1] = 600.0  # twice the truth
    pred[1, 0, 0] = pred[1, 1, 1] = 150.0  # half: the same loss
    assert math.isclose(float(L.focal_loss(pred, true)), math.log(2) ** 2, rel_tol=1e-5)
    assert torch.allclose(L.focal_log_error(pred, true), torch.full((2,), math.log(2)))
    assert float(L.focal_loss(true, true)) == 0.0


def test_visible_frame_matches_the_model_geometry():
    depth = torch.zeros(1, 1, 4, 4)
    depth[0, 0, 1:3, 1:3] = torch.tensor([[2.0, 2.0], [3.0, 2.0]])
    K = torch.tensor([[[2.0, 0, 1.5], [0, 2.0, 1.5], [0, 0, 1]]])
    mask = depth > 0
    pts, center, scale = L.visible_frame(depth, K, mask)
    raw = unproject_depth(depth, K)
    ref, c, s = normalize_visible(raw, mask.reshape(1, -1))
    assert torch.allclose(pts, ref) and torch.allclose(center, c) and torch.allclose(scale, s)
    # by hand: pixel (x=1, y=1) at depth 2 -> (2 * (1 - 1.5) / 2, 2 * (1 - 1.5) / 2, 2)
    assert torch.allclose(raw[0, 5], torch.tensor([-0.5, -0.5, 2.0]))
    assert math.isclose(float(pts[0][mask.reshape(-1)].norm(dim=-1).max()), 1.0, rel_tol=1e-6)


def test_mask_and_occupancy_bce_by_hand():
    logits = torch.zeros(1, 1, 2, 2)
    assert math.isclose(float(L.mask_bce(logits, torch.ones_like(logits))), math.log(2), rel_tol=1e-6)
    x = torch.tensor([[2.0, -1.0]])
    y = torch.tensor([[1.0, 1.0]])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2
    assert math.isclose(float(L.occupancy_bce(x, y)), expected, rel_tol=1e-6)


def test_surface_alignment_recovers_a_per_axis_map_and_keeps_the_identity():
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(2, 400, 3, generator=g) * torch.tensor([1.0, 0.8, 0.5])
    mask = torch.ones(2, 400, dtype=torch.bool)
    a_true, b_true = torch.tensor([[0.9, 1.1, 0.7], [1.0, 1.0, 1.0]]), torch.tensor([[0.1, -0.2, 0.05], [0, 0, 0]])
    lifted = gt * a_true[:, None] + b_true[:, None]
    a, b = L.surface_alignment(gt, mask, lifted, mask, prior=0.0)
    assert torch.allclose(a, a_true, atol=1e-4) and torch.allclose(b, b_true, atol=1e-4)
    # only the pixels both surfaces cover count; a stray lifted point elsewhere changes nothing
    lifted[0, 0] = 50.0
    cover = mask.clone()
    cover[0, 0] = False
    a2, b2 = L.surface_alignment(gt, cover, lifted, mask, prior=0.0)
    assert torch.allclose(a2, a_true, atol=1e-4)
    # a flat surface (no depth spread) takes the isotropic scale on that axis, within the limits
    flat = gt.clone()
    flat[..., 2] = 0.0
    a3, _ = L.surface_alignment(flat, mask, 2 * flat, mask)
    assert torch.allclose(a3, torch.full_like(a3, 2.0), atol=1e-4)
    a4, _ = L.surface_alignment(gt, mask, 10 * gt, mask)
    assert torch.allclose(a4, torch.full_like(a4, 2.0))  # clamped
    # too few shared pixels: the identity
    few = torch.zeros_like(mask)
    few[:, :5] = True
    a5, b5 = L.surface_alignment(gt, few, lifted, mask)
    assert torch.equal(a5, torch.ones_like(a5)) and torch.equal(b5, torch.zeros_like(b5))


def test_query_points_by_hand():
    # R: 90 degrees about z, t = (0, 0, 2); GT visible centroid (0, 0, 2), scale 0.5
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    Rt = torch.cat([R, torch.tensor([[0.0], [0.0], [2.0]])], dim=1)[None]
    p = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.5]]])
    q = L.query_points(p, Rt, torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([0.5]))
    # (1,0,0) -> camera (0,1,2) -> (0,2,0); (0,0,0.5) -> (0,0,2.5) -> (0,0,1)
    assert torch.allclose(q, torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_losses_are_float32_and_differentiable(dtype):
    g = torch.Generator().manual_seed(3)
    pred = (torch.rand(2, 1, 8, 8, generator=g) + 0.5).to(dtype).requires_grad_()
    target = torch.rand(2, 1, 8, 8, generator=g) + 0.5
    mask = torch.rand(2, 1, 8, 8, generator=g) > 0.2
    loss = L.depth_loss(pred, target, mask, gradient_weight=0.1) + L.aux_depth_loss(pred, target, mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad.float()).all() and pred.grad.abs().sum() > 0
