"""bench/photo_sizes.py: the shipped large-photo paths against the exact resize, in one run."""

from __future__ import annotations


def test_photo_sizes_bench_compares_both_modes_on_one_photo(tmp_path):
    from zsw.bench import photo_sizes

    rows = photo_sizes.measure([1.5], rounds=1)  # 1414x1061: over 6x the input, so the reduction is taken
    assert [(r["mode"], r["photo"]) for r in rows] == [("zsw", "1414x1061 JPG"), ("exact", "1414x1061 JPG")]
    zsw, exact = rows
    assert zsw["size"] == exact["size"] == [1414, 1061]  # under DECODE_SIDE: decoded whole
    assert 0 < zsw["input_diff_mean"] < 0.5 and 0 < zsw["input_diff_max"] <= 8  # reduced, and near the exact input
    assert exact["input_diff_mean"] == 0
    assert all(r["load_s"] > 0 and r["reconstruct_s"] > 0 and r["peak_mb"] > 100 for r in rows)
    text = photo_sizes.table(rows)
    assert "| 1.5 MP (1414x1061 JPG) | zsw | 1414x1061 |" in text and "* 1.5 MP: speed-up" in text
