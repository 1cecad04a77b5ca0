"""``python -m zsw.bench.loader``: samples per second of the training data loader, per stage."""

from __future__ import annotations

import math

import pytest

from zsw.bench import loader

pytestmark = pytest.mark.usefixtures("one_thread")


def test_it_reports_a_rate_and_a_profile_for_each_stage(tiny64, repo_root, tmp_path, capsys):
    data, model = tiny64
    configs = [str(repo_root / "configs" / "gpu" / f"{stage}.yaml") for stage in ("pixel", "shape", "full")]
    out = tmp_path / "loader.md"
    loader.main(["--data", str(data), *[a for c in configs for a in ("--config", c)], "--model", str(model),
                 "--samples", "8", "--profile", "3", "--top", "5", "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert out.read_text() == text
    rows = loader.measure([data], configs, samples=4, model=model)
    assert [r["stage"] for r in rows] == ["pixel", "shape", "full"]
    for r in rows:
        assert r["size"] == 64 and r["items"] == 6 and r["samples"] == 4  # more samples than items: two epochs
        assert math.isfinite(r["samples_per_s"]) and r["samples_per_s"] > 0 and r["samples_per_cpu_s"] > 0
    for stage in ("pixel", "shape", "full"):
        assert f"| {stage} | 6 | 64 | 8 |" in text and f"Profile of stage {stage}" in text
    assert "__getitem__" in text and "sorted by tottime" in text


def test_the_order_is_a_shuffle_per_epoch():
    order = loader._order(5, 12)
    assert len(order) == 12 and [e for e, _ in order] == [0] * 5 + [1] * 5 + [2] * 2
    assert sorted(i for e, i in order if e == 0) == list(range(5)) and order == loader._order(5, 12)
