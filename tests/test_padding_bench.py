"""bench/padding.py: the object's mask in photos of every shape, in photo pixels."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paste_puts_the_object_where_its_truth_says():
    from zsw.bench.padding import paste

    background = np.zeros((300, 400, 3), np.uint8)
    obj = np.zeros((50, 80, 3), np.uint8)
    obj[10:40, 20:60] = (250, 10, 10)
    mask = obj[..., 0] > 0
    photo, truth = paste(background, obj, mask, 0.5, np.random.default_rng(0))
    cols = np.flatnonzero(truth.any(0))
    assert cols[-1] + 1 - cols[0] == pytest.approx(150, abs=2)  # its longer side at half the shorter 300
    assert (photo[truth][:, 0] > 200).all() and (photo[~truth] == 0).all()


class _Rec:
    def __init__(self, mask, window):
        self.visible_mask, self.info = mask, {"input": {"window": list(window)}}


def test_photo_mask_maps_the_input_through_its_window():
    from zsw.bench.padding import photo_mask

    mask = np.zeros((224, 224), bool)
    mask[56:168, 56:168] = True  # the middle half of the input
    got = photo_mask(_Rec(mask, (100, -50, 448)), 300, 400)  # a window reaching above the photo
    rows, cols = np.flatnonzero(got.any(1)), np.flatnonzero(got.any(0))
    # input pixel i is photo pixels 2 i + (100, -50) and the next one, cut at the photo's right edge (400)
    assert (cols[0], cols[-1], rows[0], rows[-1]) == (212, 399, 62, 285) and got.shape == (300, 400)


def test_padding_bench_end_to_end(tmp_path, monkeypatch):
    from zsw.bench import padding

    rows = padding.run(["brick"], 0.5, "random:tiny", shapes=("square", "landscape"), names=["bucket"])
    assert [(r["shape"], r["name"]) for r in rows] == [("square", "bucket"), ("landscape", "bucket")]
    assert all(0.0 <= r["iou"] <= 1.0 for r in rows)
    lines = padding.summary(rows, "t")
    assert lines[4].startswith("| background | square | landscape | not square |") and "**all**" in lines[-1]
    for bad, says in ((["--shapes", "round"], "--shapes: unknown round"),
                      (["--backgrounds", "carpet"], "--backgrounds: carpet is not"),
                      (["--fraction", "2"], "--fraction must be")):  # fmt: skip
        monkeypatch.setattr(sys, "argv", ["padding", "--out", str(tmp_path / "x"), *bad])
        with pytest.raises(SystemExit, match=says):
            padding.main()


def test_each_degradation_spoils_the_photo_as_it_says():
    from zsw.bench.padding import DEGRADATIONS, degrade, summary

    rng = np.random.default_rng(0)
    photo = np.clip(rng.normal(120, 40, (120, 160, 3)), 0, 255).astype(np.uint8)
    photo[40:80, 60:100] = (220, 60, 40)
    got = {k: degrade(photo, k, np.random.default_rng(1)) for k in DEGRADATIONS}
    assert all(g.shape == photo.shape and g.dtype == np.uint8 for g in got.values())
    assert np.array_equal(got["none"], photo)
    assert got["dark"].mean() < 0.7 * photo.mean() and got["bright"].mean() > 1.3 * photo.mean()
    assert (got["grey"][..., 0] == got["grey"][..., 2]).all()
    assert got["cast"][..., 0].mean() > photo[..., 0].mean() and got["cast"][..., 2].mean() < photo[..., 2].mean()
    assert got["blur"].astype(float).std() < photo.astype(float).std()  # the speckle averaged away
    off = {k: np.abs(got[k].astype(float) - photo).mean() for k in ("noise", "jpeg", "jpeg10")}
    assert 5 < off["noise"] < 25 and 0 < off["jpeg"] < off["jpeg10"]  # quality 75, then 10
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        degrade(photo, "fog", rng)
    rows = [{"background": "brick", "shape": "square", "name": "bucket", "iou": 0.5}]
    assert summary(rows, "t")[4] == "| background | square |"  # no "not square" column without such photos


def test_a_dotted_out_path_keeps_its_name(tmp_path):
    """``--out runs/small-0.12`` wrote ``runs/small-0.md`` (``Path.with_suffix``), so runs at
    fractions 0.12 and 0.25 overwrote each other; the suffix is appended now."""
    from zsw.bench._harness import output_path, write_rows_and_summary

    assert output_path("runs/small-0.12", ".md").name == "small-0.12.md"
    assert output_path("runs/x.json", ".md").name == "x.md"  # an output suffix given anyway is replaced
    write_rows_and_summary(tmp_path / "f-0.12", [{"a": 1}], ["# t"])
    write_rows_and_summary(tmp_path / "f-0.25", [{"a": 2}], ["# u"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f-0.12.jsonl", "f-0.12.md", "f-0.25.jsonl", "f-0.25.md"]


def test_padding_bench_scores_a_procedural_set_against_its_true_masks(tiny64, tmp_path, monkeypatch):
    """``--procedural DIR``: every image of the set, its final mask against ``visible_masks/``, the
    mask zsw reconstruct used; with the true mask in place of the prediction the IoU is 1."""

    from zsw.bench import padding

    root, _ = tiny64
    rows = padding.run_procedural(root, "random:tiny", background="never")
    assert len(rows) == len(list((root / "images_processed").glob("*/*.png"))) == 8
    assert {r["mask"] for r in rows} == {"predicted"} and all(0.0 <= r["iou"] <= 1.0 for r in rows)
    truth = {p.stem: np.load(p) > 0 for p in (root / "depth").glob("*/*.npy")}  # nothing in front here
    monkeypatch.setattr(padding, "final_mask", lambda recon, photo, name, cutout=None: (truth[name], _Given()))
    assert all(r["iou"] == 1.0 for r in padding.run_procedural(root, "random:tiny", background="never"))
    lines = padding.procedural_summary(rows, "t")
    assert lines[-1].startswith("| **all** | 8 |")
    monkeypatch.setattr(sys, "argv", ["padding", "--out", str(tmp_path / "x"), "--procedural", str(tmp_path)])
    with pytest.raises(SystemExit, match="has no images_processed/"):
        padding.main()


class _Given:
    info = {"mask": "given"}
