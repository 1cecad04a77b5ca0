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
