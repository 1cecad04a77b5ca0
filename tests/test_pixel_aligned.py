"""Pixel-aligned decoding and Fourier point features (DecoderConfig.pixel_aligned /
point_frequencies): the projection, what the decoder sees, export parity; plus the ellipsoid
oracle baseline and the inference precision policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsw.config import get_model_config, replace
from zsw.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(
    pixel_aligned: bool = True,
    frequencies: int = 0,
    mirror: bool = False,
    axial: bool = False,
    tokens: int = 0,
    distance: bool = False,
):
    tiny = get_model_config("tiny")
    decoder = replace(
        tiny.decoder,
        pixel_aligned=pixel_aligned,
        point_frequencies=frequencies,
        mirror_queries=mirror,
        axial_queries=axial,
        token_features=tokens,
        silhouette_distance=distance,
    )
    return replace(tiny, name="tiny-pa", decoder=decoder)


def _forward(model, seed: int = 0):
    from zsw.train.step import synthetic_batch

    batch = synthetic_batch(2, model.config.pixel.image_size, 8, seed=seed)
    with torch.no_grad():
        return model(batch["image"], mask=batch["visible_mask"], occluder_mask=batch["occluder_mask"])


def test_surface_points_project_onto_their_own_pixels():
    from zsw.model import build_model

    out = _forward(build_model(_config()).eval())
    view = out.pixel_view()
    assert view.surface.shape == (2, 5, 224, 224) and view.projection.shape == (2, 3, 4)
    flat = out.visible_points.flatten(2).transpose(1, 2)  # [B, S*S, 3]
    idx = (out.visible_mask.flatten(1)[0] > 0.5).nonzero()[:, 0][::97]
    sampled = view.sample(flat[:, idx])  # [B, n, 5 + 3]
    torch.testing.assert_close(sampled[..., :3], flat[:, idx], atol=1e-4, rtol=0)
    assert sampled[..., 3].min() > 0.999  # on the visible mask
    assert sampled[..., 5:].abs().max() < 1e-4  # point minus the surface under it
    # behind the camera and far off the image: nothing there
    far = torch.tensor([[[0.0, 0.0, -1e4], [1e3, 1e3, 0.0]]]).expand(2, -1, -1)
    assert view.sample(far)[..., :5].abs().max() == 0


def test_a_pixel_aligned_decoder_reads_the_surface_map_and_a_plain_one_does_not():
    from zsw.model import build_model

    torch.manual_seed(0)
    for aligned in (True, False):
        model = build_model(_config(pixel_aligned=aligned)).eval()
        out = _forward(model)
        points = torch.rand(2, 300, 3) * 2 - 1
        with torch.no_grad():
            base = model.decode(out, points)
            out.visible_points = out.visible_points.flip(-1)  # another surface, same tokens
            moved = model.decode(out, points)
        assert (base - moved).abs().max() > 1e-4 if aligned else torch.equal(base, moved)
    latents = build_model(_config()).eval().decoder.encode(out.tokens, out.text)
    with pytest.raises(ValueError, match="PixelView"):
        build_model(_config()).eval().decoder.decode(latents, points)


def test_fourier_features_widen_the_point_embedding():
    from zsw.model import build_model

    torch.manual_seed(0)
    model = build_model(_config(pixel_aligned=False, frequencies=4)).eval()
    assert model.decoder.point_embed[0].in_features == 3 + 6 * 4
    out = _forward(model)
    assert model.decode(out, torch.rand(2, 50, 3)).shape == (2, 50)
    with pytest.raises(ConfigError, match="point_frequencies"):
        _config(frequencies=20)


def test_mirror_queries_read_the_surface_at_the_reflected_point():
    from zsw.model import build_model

    torch.manual_seed(0)
    model = build_model(_config(mirror=True)).eval()
    assert model.decoder.point_embed[0].in_features == 3 + 2 * (5 + 3)  # xyz, the point's and the mirror's samples
    out = _forward(model)
    latents = model.latents(out)
    assert latents.center_offset.shape == (2, 3) and latents.center_offset.dtype == torch.float32
    # a fresh head starts at the anchor: the centre of the visible surface's bounding box
    assert latents.center_offset.abs().max() == 0
    from zsw.model.decoder import box_center

    assert latents.view.anchor is None  # derived on first use only
    torch.testing.assert_close(latents.view.center_anchor(), box_center(out.visible_points, out.visible_mask))
    assert latents.view.center_anchor() is latents.view.anchor and latents.view.anchor.abs().max() > 0
    plain = build_model(_config()).eval()  # a decoder without mirror queries never computes it
    plain_latents = plain.latents(_forward(plain))
    plain.decoder.decode(plain_latents, torch.rand(2, 10, 3))
    assert plain_latents.view.anchor is None
    points = torch.rand(2, 300, 3) * 2 - 1
    with torch.no_grad():
        base = model.decoder.decode(latents, points)
        latents.center_offset = torch.tensor([[0.0, 0.0, 0.4], [0.2, -0.1, 0.3]])  # another centre, same point
        moved = model.decoder.decode(latents, points)
        assert (base - moved).abs().max() > 1e-4
        # the second sample is the surface map at 2c - q
        features = model.decoder._point_features(points, latents)
        want = latents.view.sample(2 * (latents.view.center_anchor() + latents.center_offset)[:, None] - points)
        torch.testing.assert_close(features[..., -8:], want)
        latents.center_offset = None
        with pytest.raises(ValueError, match="centre offset"):
            model.decoder.decode(latents, points)
    with pytest.raises(ConfigError, match="pixel_aligned"):
        _config(pixel_aligned=False, mirror=True)


def test_box_center_ignores_stray_pixels_and_empty_masks():
    from zsw.model.decoder import box_center

    S = 64
    v, u = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    points = torch.stack([u / S, v / S, (u + v) / S], 0).float()[None].repeat(2, 1, 1, 1)  # [2, 3, S, S]
    mask = ((u >= 8) & (u < 40) & (v >= 16) & (v < 48))[None, None].float().repeat(2, 1, 1, 1)
    mask[0, 0, 0, 0] = mask[0, 0, 2, 62] = 1  # two stray pixels far from the object
    points[0, :, 0, 0] = 50.0
    mask[1] = 0  # nothing visible
    center = box_center(points, mask)
    torch.testing.assert_close(center[0], torch.tensor([23.5 / S, 31.5 / S, 55.0 / S]), atol=0.04, rtol=0)
    assert torch.equal(center[1], torch.zeros(3))


def test_axial_queries_read_the_surface_at_the_point_turned_about_the_up_axis():
    from zsw.model import build_model

    torch.manual_seed(0)
    model = build_model(_config(mirror=True, axial=True)).eval()
    assert model.decoder.point_embed[0].in_features == 3 + 3 * (5 + 3)
    latents = model.latents(_forward(model))
    torch.testing.assert_close(latents.up, torch.tensor([[0.0, -1.0, 0.0]] * 2))  # a fresh head: the camera's up
    latents.center_offset = torch.tensor([[0.1, 0.0, 0.3], [0.0, 0.2, 0.4]])
    c = latents.view.center_anchor() + latents.center_offset
    points = torch.rand(2, 200, 3) * 2 - 1
    with torch.no_grad():
        features = model.decoder._point_features(points, latents)
        # about the vertical axis: x and z reflect through the centre, y stays
        turned = torch.stack(
            [2 * c[:, None, 0] - points[..., 0], points[..., 1], 2 * c[:, None, 2] - points[..., 2]], -1
        )
        # the turned point is computed in another order there: bilinear sampling of the random
        # surface map turns its last-bit differences into ~1e-5 (a wrong point would differ by ~0.1)
        torch.testing.assert_close(features[..., -8:], latents.view.sample(turned), rtol=1e-4, atol=1e-4)
        base = model.decoder.decode(latents, points)
        latents.up = torch.nn.functional.normalize(torch.tensor([[0.0, -1.0, -0.5]] * 2), dim=-1)  # a tilted axis
        assert (model.decoder.decode(latents, points) - base).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="mirror_queries"):
        _config(axial=True)


def test_a_saved_axial_model_loads_and_decodes_the_same(tmp_path):
    from zsw import checkpoint
    from zsw.model import build_model

    torch.manual_seed(0)
    model = build_model(_config(mirror=True, axial=True)).eval()
    torch.nn.init.normal_(model.decoder.center_head[-1].weight, std=0.1)  # as if trained
    checkpoint.save(model, tmp_path / "m.safetensors")
    loaded = checkpoint.load(tmp_path / "m.safetensors")
    points = torch.rand(2, 100, 3) * 2 - 1
    with torch.no_grad():
        want = model.decode(_forward(model), points)
        got = loaded.decode(_forward(loaded), points)
    torch.testing.assert_close(got, want)


def test_training_a_mirror_decoder_learns_the_object_centre():
    from zsw.model import build_model
    from zsw.train.config import TrainConfig
    from zsw.train.step import TrainStep, synthetic_batch

    torch.manual_seed(0)
    model = build_model(_config(mirror=True, axial=True))
    cfg = TrainConfig(stage="shape")
    step = TrainStep(model, cfg)
    batch = synthetic_batch(2, model.config.pixel.image_size, 64, seed=1)
    result = step(batch)
    for term in ("center", "up"):
        assert term in result and torch.isfinite(result[term]) and result[term] > 0
    result["total"].backward()
    head = model.decoder.center_head[-1].weight.grad
    assert head is not None and head.abs().sum() > 0
    # the loss counts: without its weight the head learns only through the occupancy term
    model.zero_grad()
    off = TrainStep(model, replace(cfg, loss=replace(cfg.loss, center=0.0, up=0.0)))(batch)
    off["total"].backward()
    assert not torch.allclose(model.decoder.center_head[-1].weight.grad, head)


@pytest.mark.parametrize("mirror", [False, True, "axial"])
def test_pixel_aligned_graphs_compute_what_the_model_computes(mirror):
    from zsw.export.graphs import example_inputs, graph_modules
    from zsw.model import DecoderLatents, PixelView, build_model

    torch.manual_seed(0)
    model = build_model(_config(mirror=bool(mirror), axial=mirror == "axial")).eval()
    if mirror:  # a trained head: a centre away from the origin
        torch.nn.init.normal_(model.decoder.center_head[-1].weight, std=0.1)
    modules = graph_modules(model)
    inputs = example_inputs(model, batch=2, points=40)
    names = modules["decoder"].spec.input_names
    extra = ["center_offset", *(["object_up"] if mirror == "axial" else []), "view_anchor"] if mirror else []
    assert names[-2 - len(extra) :] == ["view_surface", "view_projection", *extra]
    with torch.no_grad():
        got = modules["decoder"](*inputs["decoder"])[0]
        named = dict(zip(names, inputs["decoder"]))
        kv = [(named[f"latent_k{i}"], named[f"latent_v{i}"]) for i in range(model.config.decoder.blocks)]
        view = PixelView(named["view_surface"], named["view_projection"], named.get("view_anchor"))
        offset, up = named.get("center_offset"), named.get("object_up")
        latents = DecoderLatents(kv=kv, text=named["query_text"], view=view, center_offset=offset, up=up)
        want = model.decoder.decode(latents, named["points"])
        encoded = modules["encoder"](*inputs["encoder"])
    assert torch.equal(got, want)
    outputs = modules["encoder"].spec.output_names
    assert outputs[-1] == {False: "query_text", True: "center_offset", "axial": "object_up"}[mirror]
    if mirror:  # the encoder graph hands the decoder graph the centre it predicts
        assert named["center_offset"].abs().max() > 0
        for name in ("center_offset", "object_up")[: 1 + (mirror == "axial")]:
            torch.testing.assert_close(encoded[outputs.index(name)], named[name])


def test_token_features_are_the_token_grid_sampled_at_each_querys_pixel():
    from zsw.model import PixelView, build_model

    torch.manual_seed(0)
    model = build_model(_config(mirror=True, axial=True, tokens=8)).eval()
    assert model.decoder.point_embed[0].in_features == 3 + 3 * (5 + 3 + 8)  # xyz, then three samples
    out = _forward(model)
    latents = model.latents(out)
    S, G = model.config.pixel.image_size, model.config.token_grid
    assert latents.token_map.shape == (2, 8, G, G)
    # the local tokens laid out row by row: token 1 + r * G + c is cell (r, c)
    want = model.decoder.token_proj(out.tokens[:, 1 + 3 * G + 5])
    torch.testing.assert_close(latents.token_map[:, :, 3, 5], want)
    # a camera at the origin looking down +z with unit focal length: (u, v, 1) lands on pixel (u, v);
    # cell (r, c) covers pixels [c * S/G, (c + 1) * S/G) across, so its centre is pixel c * S/G + (S/G - 1) / 2
    view = PixelView(torch.zeros(2, 5, S, S), torch.eye(3, 4).expand(2, 3, 4))
    cell = S // G
    rows, cols = torch.tensor([0, 3, G - 1]), torch.tensor([5, 0, G - 1])
    centres = torch.stack([cols * cell + (cell - 1) / 2, rows * cell + (cell - 1) / 2, torch.ones(3)], -1)
    sampled = view.sample(centres.expand(2, -1, -1).contiguous(), latents.token_map)[..., 8:]
    torch.testing.assert_close(sampled, latents.token_map[:, :, rows, cols].transpose(1, 2))
    # behind the camera and off the image: no surface and no token features
    away = torch.tensor([[[0.0, 0.0, -1.0], [-40.0, 10.0, 1.0]]]).expand(2, -1, -1)
    assert view.sample(away, latents.token_map)[..., 8:].abs().max() == 0
    # the decoder reads it: another token map, the same tokens otherwise, moves the logits
    points = torch.rand(2, 300, 3) * 2 - 1
    with torch.no_grad():
        base = model.decoder.decode(latents, points)
        latents.token_map = latents.token_map.flip(-1)
        assert (model.decoder.decode(latents, points) - base).abs().max() > 1e-4
        latents.token_map = None
        with pytest.raises(ValueError, match="token_map"):
            model.decoder.decode(latents, points)
    with pytest.raises(ConfigError, match="pixel_aligned"):
        _config(pixel_aligned=False, tokens=8)
    with pytest.raises(ConfigError, match="token_features"):
        _config(tokens=-1)


def test_zero_initialised_token_features_start_unused_and_learn():
    from zsw.model import build_model
    from zsw.train.config import TrainConfig
    from zsw.train.step import TrainStep, synthetic_batch

    cfg = _config(mirror=True, tokens=8)
    cfg = replace(cfg, decoder=replace(cfg.decoder, token_features_zero_init=True))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.decoder.token_proj.weight.abs().max() == 0
    model.eval()
    latents = model.latents(_forward(model))
    points = torch.rand(2, 200, 3) * 2 - 1
    with torch.no_grad():
        base = model.decoder.decode(latents, points)
        latents.token_map = torch.randn_like(latents.token_map)  # what a trained projection would give
        assert (model.decoder.decode(latents, points) - base).abs().max() > 1e-4  # the decoder reads it
    model.train()
    result = TrainStep(model, TrainConfig(stage="shape"))(synthetic_batch(2, 224, 64, seed=1))
    result["total"].backward()
    assert model.decoder.token_proj.weight.grad.abs().sum() > 0  # and its projection learns


def test_token_feature_graphs_compute_what_the_model_computes():
    from zsw.export.graphs import example_inputs, graph_modules
    from zsw.model import DecoderLatents, PixelView, build_model

    torch.manual_seed(0)
    model = build_model(_config(mirror=True, tokens=8)).eval()
    modules = graph_modules(model)
    inputs = example_inputs(model, batch=2, points=40)
    names = modules["decoder"].spec.input_names
    assert names[-1] == "token_map" and modules["encoder"].spec.output_names[-1] == "token_map"
    with torch.no_grad():
        got = modules["decoder"](*inputs["decoder"])[0]
        named = dict(zip(names, inputs["decoder"]))
        kv = [(named[f"latent_k{i}"], named[f"latent_v{i}"]) for i in range(model.config.decoder.blocks)]
        view = PixelView(named["view_surface"], named["view_projection"], named["view_anchor"])
        latents = DecoderLatents(
            kv=kv,
            text=named["query_text"],
            view=view,
            center_offset=named["center_offset"],
            token_map=named["token_map"],
        )
        want = model.decoder.decode(latents, named["points"])
        encoded = modules["encoder"](*inputs["encoder"])
    assert torch.equal(got, want)
    torch.testing.assert_close(encoded[-1], named["token_map"])  # the encoder graph hands it on


def test_silhouette_distance_measures_how_deep_inside_the_mask_a_pixel_lies():
    from scipy.ndimage import distance_transform_edt

    from zsw.model import silhouette_distance

    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    disc = (xx - 40) ** 2 + (yy - 50) ** 2 <= 30**2
    bar = (xx >= 70) & (xx < 75) & (yy >= 10) & (yy < 90)  # 5 px wide
    edge = xx < 20  # touches the image's border: beyond it counts as outside
    masks = torch.stack([disc, bar, edge, torch.zeros_like(disc)])[:, None].float()
    got = silhouette_distance(masks)
    assert got.shape == masks.shape and torch.equal(got[masks == 0], torch.zeros_like(got[masks == 0]))
    for i in range(3):
        inside = masks[i, 0].numpy() > 0.5
        pixels = distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]  # Euclidean, in pixels
        deep = pixels >= 3  # off the first pixels, where any discrete distance is coarse
        ratio = got[i, 0].numpy()[deep] / (pixels[deep] / np.sqrt(inside.sum() / np.pi))
        assert 0.8 < ratio.min() and ratio.max() < 1.1, (i, ratio.min(), ratio.max())
    assert 0.85 < got[0, 0, 50, 40] < 1.05  # a disc's centre lies one disc radius deep
    # a thin bar is shallow everywhere: its middle column survives two erosions (3 px deep)
    torch.testing.assert_close(got[1].max(), torch.tensor(3 / np.sqrt(5 * 80 / np.pi)).float())
    assert got[2, 0, 40, 0] == got[2, 0, 40, 0].new_tensor(1.0) / np.sqrt(20 * 96 / np.pi)  # the border is an edge


def test_a_silhouette_distance_decoder_reads_the_mask_shape_at_the_querys_pixel():
    from zsw.export.graphs import example_inputs, graph_modules
    from zsw.model import build_model

    torch.manual_seed(0)
    model = build_model(_config(mirror=True, distance=True)).eval()
    assert model.decoder.point_embed[0].in_features == 3 + 2 * (5 + 3 + 1)
    out = _forward(model)
    latents = model.latents(out)
    points = out.visible_points.flatten(2).transpose(1, 2)[:, ::211]  # on the surface: their own pixels
    with torch.no_grad():
        sampled = latents.view.sample(points, distance=True)[..., 8]
        on_mask = latents.view.surface[:, 3].flatten(1)[:, ::211] > 0.5
        want = latents.view.edge_distance().flatten(1)[:, ::211]
        assert want[on_mask].max() > 0
        torch.testing.assert_close(sampled[on_mask], want[on_mask], atol=1e-4, rtol=0)
        base = model.decoder.decode(latents, points)
        latents.view.distance = latents.view.edge_distance() * 2  # the same surface, another silhouette depth
        assert (model.decoder.decode(latents, points) - base).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="pixel_aligned"):
        _config(pixel_aligned=False, distance=True)
    # the exported decoder graph takes the distance map as an input and computes what the model computes
    modules = graph_modules(model)
    inputs = example_inputs(model, batch=2, points=40)
    names = modules["decoder"].spec.input_names
    assert names[-2:] == ["view_anchor", "view_distance"]
    view = dict(zip(names, inputs["decoder"]))
    from zsw.model import silhouette_distance

    torch.testing.assert_close(view["view_distance"], silhouette_distance(view["view_surface"][:, 3:4]))
    with torch.no_grad():
        got = modules["decoder"](*inputs["decoder"])[0]
        view["view_distance"] = view["view_distance"] + 1.0  # the graph's random points mostly miss the mask
        moved = modules["decoder"](*[view[n] for n in names])[0]
    assert (got - moved).abs().max() > 1e-4


def test_ellipsoid_baseline_spans_the_true_extents():
    from zsw.eval.evaluate import ellipsoid_points
    from zsw.eval.metrics import chamfer_fscore, normalize_pc

    rng = np.random.default_rng(0)
    d = rng.normal(size=(5000, 3))
    gt = d / np.linalg.norm(d, axis=1, keepdims=True) * np.array([0.3, 0.8, 0.5]) + 2.0  # an ellipsoid itself
    pts = ellipsoid_points(gt, 5000, seed=1)
    np.testing.assert_allclose(pts.min(0), gt.min(0), atol=0.02)
    np.testing.assert_allclose(pts.max(0), gt.max(0), atol=0.02)
    m = chamfer_fscore(normalize_pc(torch.as_tensor(pts)), normalize_pc(torch.as_tensor(gt, dtype=torch.float32)))
    assert m["cd"] < 0.01


def test_precision_policy():
    from zsw.infer.precision import resolve_precision

    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("int8", "cpu")
