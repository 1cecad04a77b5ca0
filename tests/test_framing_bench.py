"""bench/framing.py: the three framings of the same objects, and the framing each variant uses."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_framing_bench_frames_loose_views_on_the_true_mask(tmp_path, monkeypatch):
    from zsw.bench import framing

    out = tmp_path / "res" / "tiny"
    argv = ["framing", "--out", str(out), "--weights", "random:tiny", "--data", str(tmp_path / "sets"), "--objects",
            "2", "--resolution", "8", "--sets", "tight,loose", "--variants", "never,true_mask"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    framing.main()
    result = json.loads(out.with_suffix(".json").read_text())["results"]
    assert set(result) == {"tight", "loose"} and "| loose |" in out.with_suffix(".md").read_text()
    for name in ("tight", "loose"):
        never, true = result[name]["never"]["rows"], result[name]["true_mask"]["rows"]
        assert [r["name"] for r in never] == [r["name"] for r in true] and len(never) == 2
        assert all(r["window"] == [0, 0, 224] for r in never)  # the padded render as it is
        for r in true + never:
            assert 0 < r["cd"] < 1 and 0 <= r["fscore@0.05"] <= 1
    # the loose renders show the object at about half the training framing: framed on the true
    # mask the window is about half the render (0.38-0.56 of it over 0.8)
    for r in result["loose"]["true_mask"]["rows"]:
        assert 0.35 * 224 < r["window"][2] < 0.8 * 224, r
    for r in result["tight"]["true_mask"]["rows"]:
        assert 0.8 * 224 < r["window"][2] < 1.2 * 224, r
