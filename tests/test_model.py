from __future__ import annotations

import pytest
import torch

from zsw.errors import InputError
from zsw.model import build_model, count_parameters
from zsw.model.geometry import (
    default_intrinsics,
    intrinsics_from_params,
    normalize_visible,
    sincos_pos_embed_2d,
    unproject_depth,
)


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny").eval()


def test_tiny_forward_shapes_and_finite(tiny):
    image = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        out = tiny(image)
        logits = tiny.decode(out, torch.rand(2, 500, 3) * 3 - 1.5)
    assert out.depth.shape == (2, 1, 224, 224)
    assert out.intrinsics.shape == (2, 3, 3)
    assert out.visible_mask_logits.shape == out.occluder_mask_logits.shape == (2, 1, 224, 224)
    assert out.visible_points.shape == (2, 3, 224, 224)
    assert out.tokens.shape == (2, 197, tiny.config.encoder.token_dim)
    assert out.text.shape == (2, tiny.config.text.dim)
    assert logits.shape == (2, 500)
    for t in (out.depth, out.intrinsics, out.visible_mask_logits, out.occluder_mask_logits, out.tokens, logits):
        assert torch.isfinite(t).all()
    assert 0 <= out.depth.min() and out.depth.max() <= 1
    # the zero-initialised intrinsics head starts at ZeroShape's default K
    torch.testing.assert_close(out.intrinsics, default_intrinsics(224, batch=2))


def test_full_preset_parameter_counts():
    # built on the meta device: no memory, no weights
    zs = count_parameters(build_model("zeroshape", device="meta"))
    zsw = count_parameters(build_model("zeroshape-w", device="meta"))
    # ZeroShape instantiates 192.10M parameters, 821k of them never used (ViT head and final norm)
    # or fixed (decoder pos-embed, a buffer here); the paper reports 193.7M for ZeroShape-W
    assert abs(zs / 192.10e6 - 1) < 0.01, zs
    assert abs(zsw / 193.7e6 - 1) < 0.015, zsw
    assert zs == 192_103_725 - 769_000 - 1_536 - 50_432
    assert zsw > zs


def test_latents_once_then_chunks_match_direct_decode(tiny):
    image = torch.rand(1, 3, 224, 224)
    points = torch.rand(1, 1000, 3) * 3 - 1.5
    with torch.no_grad():
        out = tiny(image)
        direct = tiny.decoder(out.tokens, points, out.text)
        latents = tiny.latents(out)
        chunked = tiny.decoder.decode_chunked(latents, points, chunk_size=137)
        default_text = tiny.decoder(out.tokens, points)  # text=None -> default prompt
    torch.testing.assert_close(chunked, direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(default_text, direct)


def _decode_in(tiny, device: str, dtype: torch.dtype, n: int = 300):
    """The tiny decoder's logits under ``dtype`` autocast on ``device``, the occupancy MLP's
    input dtype, and every decoder LayerNorm's output dtype."""
    from zsw.model.layers import LayerNorm

    model = tiny.to(device)
    seen: dict[str, torch.dtype] = {}
    hooks = [model.decoder.occupancy.register_forward_pre_hook(lambda m, a: seen.update(mlp=a[0].dtype))]
    for name, m in model.decoder.named_modules():
        if isinstance(m, LayerNorm):
            hooks.append(m.register_forward_hook(lambda m, a, out, name=name: seen.update({name: out.dtype})))
    torch.manual_seed(0)
    image, points = torch.rand(1, 3, 224, 224, device=device), torch.rand(1, n, 3, device=device) * 3 - 1.5
    try:
        with torch.no_grad():
            out = model(image)
            reference = model.decode(out, points)
            with torch.autocast(device, dtype=dtype):
                logits = model.decode(out, points)
    finally:
        for h in hooks:
            h.remove()
        model.to("cpu")
    return logits, reference, seen


def test_decoding_under_bf16_autocast_stays_bf16_up_to_the_mlp(tiny):
    """The decoder's norms and the MLP's input keep autocast's 16-bit dtype: an fp32 LayerNorm
    output or an fp32 cat(xyz, feature), each read only to be cast back, cost 2-4 GB of memory
    traffic per tensor on a 129^3 grid. The logits stay those of the fp32 decode within bf16's
    rounding."""
    logits, reference, seen = _decode_in(tiny, "cpu", torch.bfloat16)
    assert seen.pop("mlp") == torch.bfloat16
    assert len(seen) == 2 * tiny.config.decoder.blocks + 1 and set(seen.values()) == {torch.bfloat16}
    assert (logits.float() - reference).abs().max() < 0.05 * reference.abs().max() + 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_mlp_input_with_aligned_rows_is_the_concatenation(dtype):
    """On a GPU the decoder hands the MLP cat(xyz, feature) as a view with 16-byte aligned rows."""
    from zsw.model.decoder import _mlp_input

    points, feature = torch.rand(2, 5, 3), torch.rand(2, 5, 64).to(dtype)
    plain, aligned = _mlp_input(points, feature, False), _mlp_input(points, feature, True)
    assert torch.equal(plain, torch.cat([points.to(dtype), feature], -1)) and torch.equal(aligned, plain)
    assert aligned.dtype == dtype and (aligned.stride(1) * aligned.element_size()) % 16 == 0
    assert aligned.reshape(-1, 67).stride() == (aligned.stride(1), 1)  # the MLP's flattening stays a view


@pytest.mark.gpu
def test_decoding_under_cuda_autocast_stays_16_bit_up_to_the_mlp(tiny):
    """On CUDA, autocast runs layer_norm in fp32 (on the CPU it does not): the decoder's own
    LayerNorm keeps the activations' dtype there too."""
    for dtype in (torch.bfloat16, torch.float16):
        logits, reference, seen = _decode_in(tiny, "cuda", dtype)
        assert set(seen.values()) == {dtype}, seen
        assert (logits.float() - reference).abs().max() < 0.05 * reference.abs().max() + 0.05


def test_points_are_independent(tiny):
    # a point's logit does not depend on which other points share its batch
    image = torch.rand(1, 3, 224, 224)
    points = torch.rand(1, 64, 3) * 2 - 1
    with torch.no_grad():
        out = tiny(image)
        all_at_once = tiny.decode(out, points)
        one_by_one = torch.cat([tiny.decode(out, points[:, i : i + 1]) for i in range(64)], dim=1)
    torch.testing.assert_close(all_at_once, one_by_one, atol=1e-5, rtol=1e-5)


def test_given_masks_override_predictions(tiny):
    image = torch.rand(1, 3, 224, 224)
    mask = torch.zeros(1, 1, 224, 224)
    mask[..., 60:160, 70:150] = 1
    occluder = torch.zeros_like(mask)
    occluder[..., 100:120, :] = 1
    with torch.no_grad():
        out = tiny(image, mask=mask, occluder_mask=occluder)
    assert torch.equal(out.visible_mask, mask) and torch.equal(out.occluder_mask, occluder)
    inside = out.visible_points.norm(dim=1)[0][mask[0, 0] > 0]
    assert inside.max() == pytest.approx(1.0, abs=1e-5)  # normalised to the unit ball
    assert out.visible_points[:, :, mask[0, 0] == 0].abs().max() == 0


def test_zeroshape_preset_requires_a_mask():
    model = build_model("zeroshape", device="meta")
    with pytest.raises(InputError, match="no mask head: pass mask"):
        model(torch.rand(1, 3, 224, 224, device="meta"))


@pytest.mark.parametrize(
    "image, fragment",
    [
        (torch.rand(3, 224, 224), "shape (3, 224, 224)"),
        (torch.rand(1, 4, 224, 224), "shape (1, 4, 224, 224)"),
        (torch.rand(1, 3, 200, 224), "shape (1, 3, 200, 224)"),
        (torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "floating-point"),
        ("image.png", "got str"),
        (torch.rand(0, 3, 224, 224), "batch is empty"),
    ],
)
def test_bad_image_one_line_error(tiny, image, fragment):
    with pytest.raises(InputError) as e:
        tiny(image)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_non_finite_image_is_refused_at_inference_not_turned_into_nan_shapes(tiny):
    image = torch.rand(1, 3, 224, 224)
    image[0, 1, 5, 7] = float("nan")
    image[0, 2, 9, 9] = float("inf")
    with pytest.raises(InputError, match="image has 2 NaN or infinite values") as e, torch.no_grad():
        tiny(image)
    assert "\n" not in str(e.value)


def test_an_image_in_another_float_dtype_runs_in_the_weights_dtype(tiny):
    """``torch.from_numpy(photo / 255.)`` is float64: it meets the float32 weights, not timm's error."""
    image = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        a, b = tiny(image), tiny(image.double())
    assert b.depth.dtype == torch.float32 and torch.equal(a.depth, b.depth)


def test_bad_mask_and_prompts(tiny):
    image = torch.rand(2, 3, 224, 224)
    with pytest.raises(InputError, match=r"mask must be a tensor of shape \[2, 1, 224, 224\]"):
        tiny(image, mask=torch.ones(2, 224, 224))
    from zsw.errors import ZswError

    with pytest.raises(ZswError, match="3 prompts for a batch of 2"):
        tiny(image, prompt=["a", "b", "c"])


def test_unknown_prompt_without_clip_weights_fails_clearly(tiny, monkeypatch):
    from zsw.errors import ZswError
    from zsw.model import text as text_module

    def no_weights(*args, **kwargs):
        raise ZswError("cannot load CLIP 'ViT-B-32' with weights 'openai' (offline)")

    monkeypatch.setattr(text_module, "load_clip", no_weights)
    tiny.text._clip = None
    with pytest.raises(ZswError, match="cannot load CLIP"):
        tiny(torch.rand(1, 3, 224, 224), prompt="chair")
    # the default prompt in other case or spacing is the default prompt (CLIP lowercases), no CLIP needed
    default = tiny.text(None, 1)
    assert torch.equal(tiny.text([" Object "], 1), default) and torch.equal(tiny.text(["OBJECT"], 1), default)


def test_prompt_embeddings_through_a_real_tiny_clip(tmp_path, monkeypatch):
    """A real open_clip model (tiny, random) encodes unseen prompts; the FiLM layer sees them."""
    import json

    import open_clip

    from zsw.config import ModelConfig, TextConfig, get_model_config, replace
    from zsw.model import text as text_module

    (tmp_path / "zsw-tiny-clip.json").write_text(
        json.dumps(
            {
                "embed_dim": 32,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(tmp_path)
    monkeypatch.setattr(
        text_module,
        "load_clip",
        lambda name, pretrained, device="cpu": (
            open_clip.create_model(name, pretrained=None).eval(),
            open_clip.get_tokenizer(name),
        ),
    )
    base = get_model_config("tiny")
    cfg: ModelConfig = replace(base, text=TextConfig(clip_model="zsw-tiny-clip", clip_pretrained="", dim=32))
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.pixel.film.weight.normal_()  # make FiLM matter so different prompts give different masks
        emb = model.embed_prompts(["chair", "table", "object"], 3)
        assert emb.shape == (3, 32)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
        assert not torch.allclose(emb[0], emb[1])
        torch.testing.assert_close(emb[2], model.text.default_embedding)
        image = torch.rand(1, 3, 224, 224)
        a, b = model(image, prompt="chair"), model(image, prompt="table")
    assert not torch.allclose(a.visible_mask_logits, b.visible_mask_logits)
    torch.testing.assert_close(a.depth, b.depth)  # FiLM only touches the visible-mask branch


def test_backward_reaches_every_trainable_parameter():
    model = build_model("tiny").train()
    out = model(torch.rand(2, 3, 224, 224))
    logits = model.decode(out, torch.rand(2, 64, 3) * 2 - 1)
    loss = logits.square().mean() + out.depth.mean() + out.visible_mask_logits.mean()
    loss = loss + out.occluder_mask_logits.mean() + out.intrinsics[:, 0, 0].mean() * 1e-3
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_stochastic_depth_masks_reach_the_point_path():
    from zsw.config import get_model_config, replace

    cfg = get_model_config("tiny")
    cfg = replace(cfg, decoder=replace(cfg.decoder, drop_path=0.5))
    dec = build_model(cfg).decoder.train()
    tokens = torch.randn(8, 197, cfg.encoder.token_dim)
    latents = dec.encode(tokens)
    values = torch.cat([k.flatten() for pair in latents.keep for k in pair])
    assert set(values.unique().tolist()) <= {0.0, 2.0}  # dropped, or kept and scaled by 1/(1-p)
    assert dec.eval().encode(tokens).keep is None  # no stochastic depth in eval mode
    # with every residual dropped, a point's feature is just its normalised embedding
    dec.train()
    latents.keep = [(torch.zeros(8, 1, 1), torch.zeros(8, 1, 1)) for _ in latents.keep]
    points = torch.rand(8, 16, 3)
    with torch.no_grad():
        query = torch.cat([dec.point_embed(points), latents.text[:, None].expand(-1, 16, -1)], dim=-1)
        expected = dec.occupancy(torch.cat([points, dec.norm(query)], dim=-1)).squeeze(-1)
        torch.testing.assert_close(dec.decode(latents, points), expected)


def test_geometry_round_trip():
    K = intrinsics_from_params(torch.tensor([[0.3, -0.2, 0.1]]), 224, 224)
    assert K[0, 0, 0] == pytest.approx(1.3875 * 224 * 4 ** torch.tanh(torch.tensor(0.3)).item(), rel=1e-6)
    depth = torch.rand(1, 1, 224, 224) + 0.5
    pts = unproject_depth(depth, K)  # [1, H*W, 3]
    proj = pts @ K[0].T
    uv = proj[..., :2] / proj[..., 2:]
    ys, xs = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
    torch.testing.assert_close(uv[0], torch.stack([xs, ys], -1).reshape(-1, 2), atol=1e-3, rtol=0)
    mask = torch.zeros(1, 224 * 224, dtype=torch.bool)
    mask[0, :5000] = True
    normed, center, scale = normalize_visible(pts, mask)
    torch.testing.assert_close(normed[0, :5000] * scale + center, pts[0, :5000], atol=1e-5, rtol=1e-5)
    # an empty mask must not produce NaNs
    normed, center, scale = normalize_visible(pts, torch.zeros_like(mask))
    assert torch.isfinite(normed).all() and scale.item() == 1.0


def test_sincos_table():
    emb = sincos_pos_embed_2d(8, 3)
    assert emb.shape == (10, 8) and emb[0].abs().sum() == 0
    # column index in the first half (sin at w0 = 1), row index in the second half
    assert emb[1 + 1 * 3 + 2, 0] == pytest.approx(torch.sin(torch.tensor(2.0)).item())
    assert emb[1 + 1 * 3 + 2, 4] == pytest.approx(torch.sin(torch.tensor(1.0)).item())


def test_torch_backend_decodes_predicted_latents_at_any_batch():
    # latents from predict() are inference tensors; decoding them must not try to record autograd
    from zsw.infer import TorchBackend, predict

    backend = TorchBackend(build_model("tiny"), "cpu")
    for batch in (1, 2):
        pred = predict(backend, torch.rand(batch, 3, 224, 224))
        logits = backend.decode(pred.latents, torch.rand(batch, 50, 3))
        assert logits.shape == (batch, 50) and torch.isfinite(logits).all()
