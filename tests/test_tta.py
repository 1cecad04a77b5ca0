"""Test-time augmentation: ``--tta flip`` reconstructs the photo mirrored left to right too and
averages its occupancy field, reflected back, with the photo's own; ``--tta flip-pixel`` averages
the pixel model's outputs for the two."""

from __future__ import annotations

import json

import pytest
import torch

from zsw.infer.backend import TorchBackend, predict
from zsw.infer.image import load_image
from zsw.infer.reconstruct import Reconstructor
from zsw.infer.tta import mirror_average, mirror_points, occupancy_function, resolve_tta
from zsw.model import PixelOutput, SurfacePrediction

RES = 16


def _frame(center, scale) -> SurfacePrediction:
    """A prediction that only carries a normalised frame (the rest is never read here)."""
    z = torch.zeros(1, 1, 4, 4)
    return SurfacePrediction(
        depth=z, intrinsics=torch.eye(3)[None], visible_mask_logits=None, occluder_mask_logits=None,
        visible_mask=z, occluder_mask=None, visible_points=torch.zeros(1, 3, 4, 4),
        center=torch.tensor([center], dtype=torch.float32), scale=torch.tensor([scale], dtype=torch.float32),
    )  # fmt: skip


def _project(K: torch.Tensor, points: torch.Tensor) -> torch.Tensor:  # [3, 3], [N, 3] -> [N, 2] pixels
    uvw = points @ K.T
    return uvw[:, :2] / uvw[:, 2:]


def test_a_reflected_point_lands_on_the_flipped_pixel_in_the_mirrored_frame():
    # the mirrored input's camera: columns u -> W - 1 - u, so cx -> W - 1 - cx (integer pixel centres)
    W = 224
    K = torch.tensor([[300.0, 0.0, 120.0], [0.0, 300.0, 101.0], [0.0, 0.0, 1.0]])
    K_flipped = K.clone()
    K_flipped[0, 2] = W - 1 - K[0, 2]
    pred, mirrored = _frame([0.3, -0.1, 2.0], 0.4), _frame([-0.25, -0.1, 2.1], 0.55)
    points = torch.randn(1, 50, 3) * 0.5  # in pred's normalised frame
    camera = pred.to_camera(points)[0]
    reflected = mirrored.to_camera(mirror_points(points, pred, mirrored))[0]  # back to camera coordinates
    uv, uv_flipped = _project(K, camera), _project(K_flipped, reflected)
    torch.testing.assert_close(uv_flipped[:, 0], (W - 1) - uv[:, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(uv_flipped[:, 1], uv[:, 1], atol=1e-3, rtol=0)
    torch.testing.assert_close(reflected[:, 2], camera[:, 2])  # the same depth


def test_the_averaged_field_is_the_same_for_a_photo_and_its_mirror_image(repo_root, tiny_model):
    """Averaged with its reflection, the field of a photo at P equals the field of the mirrored
    photo at P's reflection: what makes ``flip`` an average over the pair, whichever comes first."""
    backend = TorchBackend(tiny_model, "cpu")
    image = load_image(repo_root / "examples" / "toy.png").image
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    photo, mirror = predict(backend, batch), predict(backend, batch.flip(-1))
    torch.manual_seed(1)
    P = photo.center[:, None, :] + photo.scale[:, None, None] * torch.randn(1, 400, 3)  # camera frame
    P_reflected = P * torch.tensor([-1.0, 1.0, 1.0])
    both = occupancy_function(backend, photo, mirror)(photo.to_normalized(P))
    both_mirrored = occupancy_function(backend, mirror, photo)(mirror.to_normalized(P_reflected))
    torch.testing.assert_close(both, both_mirrored, atol=1e-5, rtol=1e-5)
    # each field alone is not mirror-symmetric (a random model): otherwise this test could not fail
    alone = occupancy_function(backend, photo)(photo.to_normalized(P))
    alone_mirrored = occupancy_function(backend, mirror)(mirror.to_normalized(P_reflected))
    assert (alone - alone_mirrored).abs().max() > 1e-3
    torch.testing.assert_close(both, 0.5 * (alone + alone_mirrored), atol=1e-5, rtol=1e-5)


class Counting:
    """A Backend-protocol wrapper that counts pixel-model calls and points decoded per latents."""

    def __init__(self, inner):
        self._inner = inner
        self.name, self.config, self.device = inner.name, inner.config, inner.device
        self.pixel_calls, self.decoded = 0, {}

    def embed_prompts(self, prompt, batch):
        return self._inner.embed_prompts(prompt, batch)

    def pixel(self, image, text):
        self.pixel_calls += 1
        return self._inner.pixel(image, text)

    def encode(self, encoder_input, text):
        return self._inner.encode(encoder_input, text)

    def decode(self, latents, points):
        self.decoded[id(latents)] = self.decoded.get(id(latents), 0) + points.shape[1]
        return self._inner.decode(latents, points)


def test_flip_decodes_every_point_in_both_fields_and_says_so(repo_root, tiny_model):
    image = load_image(repo_root / "examples" / "toy.png")
    runs = {}
    for tta in ("none", "flip"):
        backend = Counting(TorchBackend(tiny_model, "cpu"))
        rec = Reconstructor(backend, resolution=RES, reframe="never", background="never", tta=tta)([image])[0]
        runs[tta] = backend, rec
        assert rec.info["model"]["tta"] == tta
    none, flip = runs["none"][0], runs["flip"][0]
    assert (none.pixel_calls, flip.pixel_calls) == (1, 2)
    assert len(none.decoded) == 1 and len(flip.decoded) == 2
    a, b = flip.decoded.values()
    assert a == b > 0  # every query point of the photo's field also read the mirrored field
    assert runs["none"][1].mesh.vertices.shape != runs["flip"][1].mesh.vertices.shape or not torch.allclose(
        torch.from_numpy(runs["none"][1].mesh.vertices), torch.from_numpy(runs["flip"][1].mesh.vertices)
    )
    # the reported depth and masks are the photo's own, not the mirror's
    assert (runs["none"][1].depth == runs["flip"][1].depth).all()

    # without a mesh (the evaluation's baselines) nothing is mirrored
    backend = Counting(TorchBackend(tiny_model, "cpu"))
    Reconstructor(backend, resolution=RES, reframe="never", background="never", tta="flip")([image], with_mesh=False)
    assert backend.pixel_calls == 1 and not backend.decoded


def test_a_rerun_with_another_tta_is_redone_and_a_bad_value_names_the_option(repo_root, tmp_path):
    import zsw
    from zsw.errors import ConfigError, OptionError
    from zsw.model import build_model

    image, out = repo_root / "examples" / "toy.png", tmp_path / "o"

    def run(tta):
        settings = zsw.ReconstructSettings(weights="random:tiny", preview=False, grid=zsw.GridSettings(RES), tta=tta)
        return zsw.reconstruct_many([image], out, settings)

    assert len(run("flip").written) == 1
    assert run("flip").skipped == 1
    again = run("none")
    assert again.redone == 1
    record = json.loads((out / "toy" / "result.json").read_text())
    assert record["request"]["tta"] == "none" and record["model"]["tta"] == "none"
    # auto: flip where the mirrored pass is cheap next to the rest (CUDA), flip-pixel on the CPU
    assert [resolve_tta("auto", d) for d in ("cpu", "cuda", "cuda:1")] == ["flip-pixel", "flip", "flip"]
    assert resolve_tta("flip", "cpu") == "flip" and resolve_tta("none", "cuda") == "none"
    default = Reconstructor(TorchBackend(build_model("tiny"), "cpu"), resolution=RES, reframe="never")
    assert default.tta == "flip-pixel"
    with pytest.raises(OptionError, match="--tta"):
        zsw.ReconstructSettings(tta="rotate")
    with pytest.raises(ConfigError, match="tta"):
        Reconstructor(TorchBackend(build_model("tiny"), "cpu"), tta="mirror")


def test_mirror_average_of_an_exact_mirror_image_changes_nothing():
    torch.manual_seed(2)
    W = 16
    pixel = PixelOutput(torch.rand(2, 1, W, W), torch.eye(3).repeat(2, 1, 1), torch.randn(2, 1, W, W), None)
    pixel.intrinsics[:, 0, 2] = torch.tensor([5.0, 9.5])
    pixel.intrinsics[:, 1, 2] = 7.0
    K = pixel.intrinsics.clone()
    K[:, 0, 2] = (W - 1) - K[:, 0, 2]  # what the mirrored input shows, if the model were exact
    mirrored = PixelOutput(pixel.depth.flip(-1), K, pixel.visible_mask_logits.flip(-1), None)
    mean = mirror_average(pixel, mirrored)
    for a, b in zip(mean._tensors(), pixel._tensors()):
        assert (a is None and b is None) or torch.allclose(a, b)
    # and it is a mean: a mirrored output that disagrees moves it halfway
    off = mirror_average(pixel, PixelOutput(mirrored.depth + 0.2, K, mirrored.visible_mask_logits, None))
    torch.testing.assert_close(off.depth, pixel.depth + 0.1)


def test_flip_pixel_makes_the_pixel_model_mirror_symmetric(repo_root, tiny_model):
    """With the outputs averaged over a photo and its mirror image, the mirrored photo's outputs
    are the photo's, mirrored: depth and masks flipped, the principal point at W - 1 - cx."""
    backend = Counting(TorchBackend(tiny_model, "cpu"))
    recon = Reconstructor(backend, resolution=RES, reframe="never", background="never", tta="flip-pixel")
    image = load_image(repo_root / "examples" / "toy.png").image
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    text = backend.embed_prompts(None, 1)
    a, b = recon._pixel(batch, text), recon._pixel(batch.flip(-1), text)
    W = batch.shape[-1]
    torch.testing.assert_close(a.depth, b.depth.flip(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.visible_mask_logits, b.visible_mask_logits.flip(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.intrinsics[:, 0, 2], (W - 1) - b.intrinsics[:, 0, 2], atol=1e-4, rtol=0)
    torch.testing.assert_close(a.intrinsics[:, 1:], b.intrinsics[:, 1:], atol=1e-4, rtol=1e-5)
    # the random model alone is not symmetric, so the test could fail
    plain = backend.pixel(batch, text), backend.pixel(batch.flip(-1), text)
    assert (plain[0].depth - plain[1].depth.flip(-1)).abs().max() > 1e-4

    # a whole reconstruction: two pixel-model passes, one field decoded
    backend.pixel_calls, backend.decoded = 0, {}
    rec = recon([load_image(repo_root / "examples" / "toy.png")])[0]
    assert backend.pixel_calls == 2 and len(backend.decoded) == 1 and rec.info["model"]["tta"] == "flip-pixel"


# ---- a pixel is the object or an occluder, not both ---------------------------------------------


def test_exclusive_leaves_each_pixel_both_masks_claim_to_the_more_confident_head():
    v = torch.tensor([[[[2.0, 1.0, 0.5, -1.0, 3.0, 0.0]]]])
    o = torch.tensor([[[[1.0, 2.0, 0.5, 4.0, -2.0, 0.0]]]])
    out = PixelOutput(torch.zeros(1, 1, 1, 6), torch.eye(3)[None], v, o).exclusive()
    vis, occ = out.visible_mask_logits >= 0, out.occluder_mask_logits >= 0
    assert vis.flatten().tolist() == [True, False, True, False, True, True]  # ties go to the object
    assert occ.flatten().tolist() == [False, True, False, True, False, False]
    assert not (vis & occ).any()
    unclaimed = ~((v >= 0) & (o >= 0))  # where the heads do not both claim a pixel, nothing moves
    assert torch.equal(out.visible_mask_logits[unclaimed], v[unclaimed])
    assert torch.equal(out.occluder_mask_logits[unclaimed], o[unclaimed])
    no_head = PixelOutput(out.depth, out.intrinsics, v, None)
    assert no_head.exclusive() is no_head  # ZeroShape: no occluder head, nothing to settle


@pytest.mark.parametrize("tta", ["none", "flip-pixel", "flip"])
def test_every_pass_of_the_reconstruction_reads_the_masks_as_exclusive(repo_root, tiny_model, monkeypatch, tta):
    """The random model's heads are made to both claim the image's left half: every pass (framing,
    the background's masks, the prediction and its mirrored twin) must settle it, so the result's
    masks never overlap; the raw heads' masks do."""
    real = TorchBackend.pixel
    seen = []

    def both_claim(self, image, text):
        out = real(self, image, text)
        claim = torch.zeros_like(out.visible_mask_logits)
        claim[..., : claim.shape[-1] // 2] = 1.0
        out = PixelOutput(out.depth, out.intrinsics, claim + 0.5, claim * torch.rand_like(claim) * 4)
        seen.append(bool(((out.visible_mask_logits >= 0) & (out.occluder_mask_logits >= 0)).any()))
        return out

    import zsw.infer.backend as backend_module

    lifted = []
    real_lift = backend_module.lift_surface

    def lift(pix, *args, **kwargs):  # every prediction, the mirrored one of --tta flip included
        lifted.append(bool(((pix.visible_mask_logits >= 0) & (pix.occluder_mask_logits >= 0)).any()))
        return real_lift(pix, *args, **kwargs)

    monkeypatch.setattr(TorchBackend, "pixel", both_claim)
    monkeypatch.setattr(backend_module, "lift_surface", lift)
    image = load_image(repo_root / "examples" / "toy.png", 224)
    rec = Reconstructor(TorchBackend(tiny_model), resolution=RES, tta=tta)([image])[0]
    assert seen and all(seen)  # the heads did claim pixels twice, in every pass
    assert len(lifted) == (2 if tta == "flip" else 1) and not any(lifted)
    assert rec.visible_mask.any() and rec.occluder_mask.any()
    assert not (rec.visible_mask & rec.occluder_mask).any()
