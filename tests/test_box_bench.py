"""bench/box.py: what a box around the object is worth on a procedural test set."""

from __future__ import annotations

import numpy as np


def test_true_box_is_the_masks_bounding_box_widened_by_the_margin():
    from zsw.bench.box import true_box

    mask = np.zeros((40, 60), bool)
    mask[10:20, 5:45] = True  # 40 wide, 10 high: pixel edges 5..45, 10..20
    assert true_box(mask, 0.0) == (5.0, 10.0, 45.0, 20.0)
    assert true_box(mask, 0.1) == (1.0, 6.0, 49.0, 24.0)  # 0.1 of the longer side (40) on every side


def test_table_pairs_the_two_arms_per_image_and_category():
    from zsw.bench.box import table

    def row(category, none, box):
        return {"name": "x", "category": category, "rectangle": None,
                "none": {"cd": none, "fscore@0.05": 0.5}, "box": {"cd": box, "fscore@0.05": 0.6}}  # fmt: skip

    text = table([row("cone", 0.05, 0.04), row("cone", 0.07, 0.05), row("mug", 0.06, 0.07)], 0.1)
    lines = text.splitlines()
    assert "| **all** | 3 | 0.0600 / 0.500 | 0.0533 / 0.600 | -0.0067 +- 0.0088 | 2 / 1 |" in lines
    assert "| cone | 2 | 0.0600 / 0.500 | 0.0450 / 0.600 | -0.0150 +- 0.0050 | 2 / 0 |" in lines
    assert "| mug | 1 | 0.0600 / 0.500 | 0.0700 / 0.600 | +0.0100 +- 0.0000 | 0 / 1 |" in lines
