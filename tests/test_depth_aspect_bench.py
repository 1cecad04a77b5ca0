"""bench/depth_aspect.py: the aspect it reports and the stretch it scores."""

from __future__ import annotations

import numpy as np


def test_log_aspect_is_depth_over_the_larger_width_and_a_stretch_adds_its_log():
    from zsw.bench.depth_aspect import log_aspect, stretched

    rng = np.random.default_rng(0)
    box = rng.uniform(-0.5, 0.5, (20000, 3)) * np.array([2.0, 1.0, 0.5])  # x 2, y 1, z 0.5
    assert abs(log_aspect(box) - np.log(0.25)) < 0.01
    assert abs(log_aspect(box[:, [1, 0, 2]]) - np.log(0.25)) < 0.01  # the larger of x and y, whichever it is
    longer = stretched(box, 1.3)
    assert abs(log_aspect(longer) - log_aspect(box) - np.log(1.3)) < 1e-9
    assert np.array_equal(longer[:, :2], box[:, :2]) and not np.array_equal(longer, box)
    box[0] = [100.0, 0.0, 0.0]  # one stray point does not move the percentile extents
    assert abs(log_aspect(box) - np.log(0.25)) < 0.01


def test_focal_scaled_backend_scales_the_focal_lengths_only_and_a_longer_focal_lifts_a_deeper_relief():
    import torch

    from zsw.bench.depth_aspect import FocalScaled, visible_relief
    from zsw.model.pixel import PixelOutput

    K = torch.tensor([[[200.0, 0, 31.5], [0, 200.0, 31.5], [0, 0, 1]]])
    depth = 2 + torch.linspace(0, 0.5, 64)[None, None, :, None].expand(1, 1, 64, 64)  # a plane tilted away

    class Backend:
        name, device = "stand-in", torch.device("cpu")

        def pixel(self, image, text):
            return PixelOutput(depth, K, torch.zeros(1, 1, 64, 64), None)

    original = K.clone()
    scaled = FocalScaled(Backend(), 1.5)
    out = scaled.pixel(torch.zeros(1, 3, 64, 64), None)
    assert torch.allclose(out.intrinsics[0, :2, :2], 1.5 * original[0, :2, :2])
    assert torch.equal(out.intrinsics[0, :, 2], original[0, :, 2])  # the principal point stays
    assert out.depth is depth and scaled.name == "stand-in"  # the rest is the wrapped backend's
    assert torch.equal(K, original)  # the wrapped backend's tensor is not scaled in place

    mask = torch.ones(64, 64, dtype=torch.bool)
    flat, deep = visible_relief(depth[0, 0], K[0], mask), visible_relief(depth[0, 0], out.intrinsics[0], mask)
    assert abs(deep - flat - np.log(1.5)) < 1e-3  # the same depths over a 1.5x narrower surface
