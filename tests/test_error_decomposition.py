"""bench/error_decomposition.py: each variant swaps exactly the pieces it names for the truth."""

from __future__ import annotations

import json
import sys

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(size: int) -> dict:
    from zsw.train.step import synthetic_batch

    batch = synthetic_batch(1, size, 16)
    batch["depth"] = batch["depth"] * (1 + torch.linspace(0, 1, size)[None, None, :, None])  # a tilted disc
    return batch


def test_each_variant_swaps_in_the_ground_truth_it_names(tiny64):
    from zsw.bench.error_decomposition import VARIANTS, fill_occluded, surfaces
    from zsw.model import build_model
    from zsw.train import losses as L

    torch.manual_seed(0)
    model = build_model(str(tiny64[1])).eval()
    batch = _batch(64)
    batch["intrinsics"][:, :2, :2] *= 1.3  # a focal length the untrained intrinsics head does not predict
    vis, occ = batch["visible_mask"], batch["occluder_mask"]
    with torch.no_grad():
        pix = model.pixel(batch["image"], model.embed_prompts(None, 1))
        out = dict(surfaces(model, batch, list(VARIANTS)))
    assert list(out) == list(VARIANTS)
    pred_vis = (pix.visible_mask_logits >= 0).float()
    pred_occ = (pix.occluder_mask_logits >= 0).float()
    assert not torch.equal(pred_vis, vis) and not torch.equal(pred_occ, occ)  # the swaps are visible

    expected_masks = {
        "pred": (pred_vis, pred_occ),
        "gt_k": (pred_vis, pred_occ),
        "gt_masks": (vis, occ),
        "gt_visible": (vis, pred_occ),
        "gt_occluder": (pred_vis, occ),
        "gt_depth": (vis, occ),
        "aligned_depth_gt_k": (vis, occ),
        "gt": (vis, occ),
        "true_up": (pred_vis, pred_occ),  # everything predicted: only the decoder's up axis is swapped
        "true_center": (pred_vis, pred_occ),  # ... or its centre
        "gt_filled": fill_occluded(batch["depth"], vis, occ)[1:],
        "pred_filled": fill_occluded(pix.depth, pred_vis, pred_occ)[1:],
    }
    for name, (v, o) in expected_masks.items():
        torch.testing.assert_close(out[name].visible_mask, v, msg=name)
        torch.testing.assert_close(out[name].occluder_mask, o, msg=name)
    torch.testing.assert_close(out["pred"].depth, pix.depth)
    torch.testing.assert_close(out["gt_k"].depth, pix.depth)
    torch.testing.assert_close(out["gt_k"].intrinsics, batch["intrinsics"])
    assert not torch.equal(pix.intrinsics, batch["intrinsics"])
    torch.testing.assert_close(out["gt_depth"].depth, batch["depth"])
    torch.testing.assert_close(out["gt_depth"].intrinsics, pix.intrinsics)
    torch.testing.assert_close(out["aligned_depth_gt_k"].intrinsics, batch["intrinsics"])
    # the aligned depth is the prediction moved by one scale and shift, closer to the truth than it
    on = vis > 0.5
    aligned = out["aligned_depth_gt_k"].depth
    assert (aligned - batch["depth"])[on].abs().mean() < (pix.depth - batch["depth"])[on].abs().mean()
    # everything true: the encoder sees exactly the lifted ground-truth surface
    gt_points, _, _ = L.visible_frame(batch["depth"], batch["intrinsics"], on)
    torch.testing.assert_close(out["gt"].visible_points.flatten(2).transpose(1, 2), gt_points)


def test_the_true_centre_is_the_object_origin_in_the_true_visible_surface_s_frame():
    from zsw.bench.error_decomposition import _true_center
    from zsw.train import losses as L

    batch = _batch(32)
    _, centroid, scale = L.visible_frame(batch["depth"], batch["intrinsics"], batch["visible_mask"] > 0.5)
    batch["extrinsics"][:, :, 3] = centroid  # the object's origin at the visible surface's centroid
    torch.testing.assert_close(_true_center(batch), torch.zeros(1, 3), atol=1e-6, rtol=0)
    batch["extrinsics"][:, 2, 3] += 0.5  # half a unit further from the camera
    torch.testing.assert_close(_true_center(batch)[0], torch.tensor([0.0, 0.0, 0.5]) / scale[0], atol=1e-6, rtol=0)


def test_fill_occluded_continues_the_surface_under_an_occluder_inside_the_silhouette():
    # a tilted plane seen as a disc, an occluder on its middle and another on the background, and a
    # stray visible pixel far off (a mask's false positive must not stretch the silhouette)
    from zsw.bench.error_decomposition import fill_occluded

    S = 48
    y, x = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
    plane = (2.0 + 0.02 * x - 0.01 * y)[None, None]
    disc = ((x - 20) ** 2 + (y - 22) ** 2 <= 14**2)[None, None]
    inner = (x >= 16) & (x <= 24) & (y >= 18) & (y <= 27)
    outer = (x >= 38) & (x <= 44) & (y >= 18) & (y <= 28)  # between the disc and the stray pixel
    occluder = (inner | outer)[None, None].double()
    visible = (disc & ~inner[None, None]).double()
    visible[0, 0, 23, 47] = 1.0
    depth = torch.where(visible > 0, plane, torch.zeros_like(plane))
    depth[0, 0][inner] = 9.0  # what a pixel model may put there: the occluder's own depth

    d, v, o = fill_occluded(depth, visible, occluder)
    filled = (v > 0) & (visible == 0)
    assert torch.equal(filled[0, 0], inner & disc[0, 0])  # all of the hidden disc, nothing else
    assert torch.equal(o[0, 0] > 0, outer)  # the background's occluder stays one
    torch.testing.assert_close(d[filled], plane[filled], atol=2e-3, rtol=0)  # the plane continued
    torch.testing.assert_close(d[~filled], depth[~filled])  # the rest untouched
    # an occluder across the disc cuts what is seen in two: both halves span the silhouette
    band = ((x >= 13) & (x <= 17))[None, None]
    halves = (disc & ~band).double()
    _, v, o = fill_occluded(torch.where(halves > 0, plane, 0.0), halves, band.double())
    filled = (v > 0) & (halves == 0)
    assert not (filled & ~(band & disc)).any() and filled.sum() >= 0.9 * (band & disc).sum()
    # nothing to fill: no occluder, or no visible pixel
    for vis, occ in ((visible, torch.zeros_like(occluder)), (torch.zeros_like(visible), occluder)):
        d2, v2, o2 = fill_occluded(depth, vis, occ)
        assert torch.equal(d2, depth) and torch.equal(v2, vis) and torch.equal(o2, occ)


def test_script_writes_a_row_per_view_and_a_table(tiny64, tmp_path, monkeypatch):
    from zsw import checkpoint
    from zsw.bench import error_decomposition
    from zsw.model import build_model

    torch.manual_seed(0)
    weights = checkpoint.save(build_model(str(tiny64[1])), tmp_path / "tiny64.safetensors")
    out = tmp_path / "ed" / "tiny"
    argv = ["error_decomposition", "--data", str(tiny64[0]), "--weights", str(weights), "--split", "val",
            "--resolution", "8", "--variants", "pred,gt", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    error_decomposition.main()
    assert torch.is_grad_enabled()  # the script must not switch autograd off for its caller
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(set(r) == {"name", "category", "pred", "gt"} for r in rows)
    table = out.with_suffix(".md").read_text()
    assert "| pred |" in table and "| gt |" in table and "2 views" in table


@pytest.mark.parametrize("elevation", [-10.0, 0.0, 30.0, 65.0])
def test_up_angles_read_the_camera_elevation_off_an_up_axis(elevation):
    # a camera e degrees above the horizon sees the object's up axis as (0, -cos e, -sin e) in its
    # axes (x right, y down, z forward), as bench/foreign.py and zsw.synth.render pose it
    from zsw.bench.error_decomposition import _up_angles

    e = torch.deg2rad(torch.tensor(elevation))
    true = torch.stack([torch.tensor(0.0), -torch.cos(e), -torch.sin(e)])
    level = torch.tensor([0.0, -1.0, 0.0])
    angles = _up_angles(2.0 * level, true)  # the length of an axis does not matter
    assert angles["up_elevation_true"] == pytest.approx(elevation, abs=0.01)
    assert angles["up_elevation_pred"] == pytest.approx(0.0, abs=0.01)
    assert angles["up_error_deg"] == pytest.approx(abs(elevation), abs=0.01)
