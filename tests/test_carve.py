"""Silhouette carving (``--carve``, on by default): no surface where the photo shows background."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zsw.infer.carve import MARGIN, SLOPE, SilhouetteBound, carved, signed_distance, silhouette_map
from zsw.model import SurfacePrediction

S = 32
K = torch.tensor([[40.0, 0.0, 15.0], [0.0, 40.0, 15.0], [0.0, 0.0, 1.0]])
CENTER, SCALE = torch.tensor([0.0, 0.0, 2.0]), 0.5


def _square(lo: int = 10, hi: int = 20) -> np.ndarray:  # [S, S] bool: rows and columns lo..hi-1
    mask = np.zeros((S, S), bool)
    mask[lo:hi, lo:hi] = True
    return mask


def _prediction(visible: np.ndarray, occluder: np.ndarray | None = None) -> SurfacePrediction:
    as_map = lambda m: torch.from_numpy(m.astype(np.float32))[None, None]  # noqa: E731
    z = torch.zeros(1, 1, S, S)
    return SurfacePrediction(
        depth=z, intrinsics=K[None], visible_mask_logits=None, occluder_mask_logits=None,
        visible_mask=as_map(visible), occluder_mask=None if occluder is None else as_map(occluder),
        visible_points=torch.zeros(1, 3, S, S), center=CENTER[None], scale=torch.tensor([SCALE]),
    )  # fmt: skip


def _at_pixel(u: float, v: float, depth: float = 2.0) -> torch.Tensor:
    """The normalised point that projects onto pixel (u, v) at ``depth``."""
    camera = torch.tensor([(u - K[0, 2]) * depth / K[0, 0], (v - K[1, 2]) * depth / K[1, 1], depth])
    return (camera - CENTER) / SCALE


def test_signed_distance_is_positive_inside_negative_outside_and_half_a_pixel_at_the_edge():
    d = signed_distance(_square())
    assert d[15, 15] == pytest.approx(4.5)  # five pixels to the first one outside, less half a pixel
    assert d[10, 15] == pytest.approx(0.5) and d[9, 15] == pytest.approx(-0.5)  # either side of the edge
    assert d[15, 25] == pytest.approx(-5.5)
    assert d[0, 0] == pytest.approx(-np.hypot(10, 10) + 0.5)


def test_the_map_is_unknown_off_the_photo_and_for_empty_masks():
    occluder = np.zeros((S, S), bool)
    occluder[10:20, 20:25] = True  # the occluder's pixels count as the object's: it may hide it
    area = np.ones((S, S), bool)
    area[:, :4] = False  # padding: the photo's square reached past its left edge
    m = silhouette_map(_square(), occluder, area)
    assert m[15, 22] > 0 and m[15, 27] == pytest.approx(-2.5) and m[15, 5] < 0
    assert (m[:, :4] >= 1e3).all()
    assert (silhouette_map(np.zeros((S, S), bool), None) >= 1e3).all()  # no mask: nothing is known


def test_the_bound_falls_outside_the_masks_and_is_infinite_where_the_photo_tells_nothing():
    bound = SilhouetteBound(_prediction(_square()))
    points = torch.stack([
        _at_pixel(15, 15),  # inside the mask
        _at_pixel(25, 15),  # background, 5.5 px outside
        _at_pixel(15, 15, depth=5.0),  # inside, far behind: depth does not matter
        _at_pixel(40, 15),  # off the image
        torch.tensor([0.0, 0.0, -10.0]),  # behind the camera (camera z = 2 - 5 = -3)
    ])[None]  # fmt: skip
    b = bound(points)[0].tolist()
    assert b[0] == pytest.approx(SLOPE * (4.5 + MARGIN), abs=1e-3) and b[2] == pytest.approx(b[0], abs=1e-3)
    assert b[1] == pytest.approx(SLOPE * (-5.5 + MARGIN), abs=1e-3) and b[1] < 0
    assert b[3] == b[4] == float("inf")
    # between pixel centres the bound is interpolated, so the cut surface is smooth
    mid = float(bound(_at_pixel(22.5, 15)[None, None])[0, 0])
    assert mid == pytest.approx(SLOPE * (-3.0 + MARGIN), abs=1e-3)


def test_carving_keeps_every_logit_at_or_below_its_bound_and_leaves_the_masks_alone():
    bound = SilhouetteBound(_prediction(_square()))
    points = torch.randn(1, 500, 3) * 0.8
    field = lambda p: torch.full(p.shape[:2], 8.0)  # noqa: E731  everything inside
    out = carved(field, bound)(points)
    b = bound(points)
    assert (out <= b + 1e-6).all() and (out <= 8.0).all()
    assert torch.equal(out[b >= 8.0], torch.full_like(out[b >= 8.0], 8.0))
    assert (out < 0).any() and (out == 8.0).any()  # both kinds of point were drawn


class _Ball:
    """A Backend wrapper: the tiny model's pixel model with a flat depth and no occluders, and a
    decoder that sees a ball of radius 1.2 in every normalised frame (wider than the visible surface
    it is lifted from, whose radius is 1)."""

    def __init__(self, inner):
        self._inner = inner
        self.name, self.config, self.device = inner.name, inner.config, inner.device

    def embed_prompts(self, prompt, batch):
        return self._inner.embed_prompts(prompt, batch)

    def pixel(self, image, text):
        out = self._inner.pixel(image, text)
        out.depth = torch.full_like(out.depth, 0.8)
        out.occluder_mask_logits = torch.full_like(out.occluder_mask_logits, -10.0)
        return out

    def encode(self, encoder_input, text):
        return self._inner.encode(encoder_input, text)

    def decode(self, latents, points):
        return 8.0 * (1.2 - points.norm(dim=-1))


def _outside_px(rec) -> np.ndarray:  # [V] pixels each vertex projects outside the visible mask
    from scipy import ndimage

    uvw = np.asarray(rec.mesh.vertices) @ rec.intrinsics.T
    uv = np.clip(np.round(uvw[:, :2] / uvw[:, 2:]).astype(int), 0, rec.visible_mask.shape[0] - 1)
    return ndimage.distance_transform_edt(~rec.visible_mask)[uv[:, 1], uv[:, 0]]


def test_the_reconstruction_has_no_surface_over_the_background(repo_root):
    from zsw.infer.backend import TorchBackend
    from zsw.infer.image import load_image
    from zsw.infer.reconstruct import Reconstructor
    from zsw.model import build_model

    torch.manual_seed(0)
    backend = _Ball(TorchBackend(build_model("tiny").eval(), "cpu"))
    image = load_image(repo_root / "examples" / "toy.png")
    mask = np.zeros((image.size, image.size), bool)
    mask[70:150, 80:140] = True  # a given mask: the ball's projection is far wider
    recs = {}
    for carve in (False, True):
        recon = Reconstructor(backend, resolution=32, frame="camera", reframe="never", background="never",
                              tta="none", smooth=0, carve=carve)  # fmt: skip
        recs[carve] = recon([image], masks=[mask])[0]
    loose, cut = _outside_px(recs[False]), _outside_px(recs[True])
    assert loose.max() > 10  # the ball spills over the background without carving
    # with it, within the margin, plus half a pixel (to the mask pixel's centre), the rounding to a
    # pixel and the part of a grid cell that marching cubes interpolates linearly across the cut
    rec = recs[True]
    cell_px = 2 * 1.5 / 32 * rec.scale * rec.intrinsics[0, 0] / rec.center[2]
    assert cut.max() <= MARGIN + 0.5 + np.sqrt(0.5) + cell_px, (cut.max(), cell_px)
    assert recs[True].mesh.is_watertight and len(recs[True].mesh.faces) > 100
    assert recs[True].info["grid"]["carved"] and not recs[False].info["grid"]["carved"]


def test_a_rerun_with_carving_switched_off_is_redone(repo_root, tmp_path):
    import zsw

    settings = zsw.ReconstructSettings(weights="random:tiny", device="cpu", grid=zsw.GridSettings(resolution=16),
                                       preview=False, reframe="never")  # fmt: skip
    photo = repo_root / "examples" / "toy.png"
    first = zsw.reconstruct_many([photo], tmp_path, settings)
    assert json.loads((first.written[0] / "result.json").read_text())["request"]["carve"] is True
    again = zsw.reconstruct_many([photo], tmp_path, settings)
    assert again.skipped and not again.written
    off = zsw.reconstruct_many([photo], tmp_path, zsw.ReconstructSettings(**{**settings.__dict__, "carve": False}))
    assert off.written and off.redone == 1 and not off.skipped
    result = json.loads((off.written[0] / "result.json").read_text())
    assert result["request"]["carve"] is False and result["grid"]["carved"] is False
