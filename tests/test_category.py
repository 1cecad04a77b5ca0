"""Category estimation: CLIP zero-shot over LVIS + ShapeNet (a tiny random CLIP), VLM hook, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from zsw.errors import ConfigError, ZswError
from zsw.infer.category import CLIPCategoryEstimator, get_estimator, vocabulary

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_clip(tmp_path, monkeypatch):
    """Route every CLIP load to a tiny random open_clip model; count text encodings."""
    import open_clip

    from zsw.model import text as text_module

    (tmp_path / "zsw-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path)
    calls = {"encode_text": 0, "loads": []}

    def load(name, pretrained, device="cpu"):
        calls["loads"].append((name, pretrained))
        torch.manual_seed(0)
        model = open_clip.create_model("zsw-tiny-clip", pretrained=None).eval()
        inner = model.encode_text

        def counted(tokens, **kw):
            calls["encode_text"] += 1
            return inner(tokens, **kw)

        model.encode_text = counted
        return model, open_clip.get_tokenizer("zsw-tiny-clip")

    monkeypatch.setattr(text_module, "load_clip", load)
    monkeypatch.setenv("ZSW_CACHE_DIR", str(tmp_path / "cache"))
    return calls


VOCAB = [("mug", "mug"), ("chair", "chair"), ("bat (animal)", "bat"), ("trash bin", "trash bin")]


def test_vocabulary_is_lvis_then_shapenet_without_duplicates():
    vocab = vocabulary()
    words = [w for _, w in vocab]
    texts = [t.lower() for t, _ in vocab]
    assert len(texts) == len(set(texts)) and 1203 <= len(vocab) < 1203 + 55
    assert ("bat (animal)", "bat") in vocab  # CLIP sees the disambiguation, the model gets the noun
    assert "trash bin" in words and "airplane" in words and all(w == w.lower() and w for w in words)


def test_estimator_returns_the_nearest_class(tiny_clip):
    est = CLIPCategoryEstimator(vocab=VOCAB)
    assert est.class_embeddings.shape == (4, 32)
    torch.testing.assert_close(est.class_embeddings.norm(dim=-1), torch.ones(4))
    # make every image embed exactly like the "chair" class: the estimator must say "chair"
    est.model.encode_image = lambda batch: est.class_embeddings[1].expand(len(batch), -1) * 3.0
    images = [Image.new("RGB", (50, 40), (200, 10, 10)), Image.new("L", (20, 20))]
    assert est(images) == ["chair", "chair"]
    est.model.encode_image = lambda batch: est.class_embeddings[2].expand(len(batch), -1)
    assert est(images[:1]) == ["bat"]
    assert est.scores([]).shape == (0, 4)


def test_real_image_path_through_a_random_clip(tiny_clip):
    est = CLIPCategoryEstimator(vocab=VOCAB)
    out = est([Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))])
    assert out[0] in {w for _, w in VOCAB}


def test_class_embeddings_are_cached_on_disk(tiny_clip):
    first = CLIPCategoryEstimator(vocab=VOCAB)
    encoded = tiny_clip["encode_text"]
    assert encoded > 0
    second = CLIPCategoryEstimator(vocab=VOCAB)
    assert tiny_clip["encode_text"] == encoded  # loaded from the cache, not recomputed
    torch.testing.assert_close(first.class_embeddings, second.class_embeddings)
    CLIPCategoryEstimator(vocab=VOCAB[:2])  # another vocabulary is another cache entry
    assert tiny_clip["encode_text"] > encoded


def test_missing_clip_weights_fail_in_one_line(monkeypatch):
    from zsw.model import text as text_module

    def offline(name, pretrained, device="cpu"):
        raise ZswError(f"cannot load CLIP {name!r} with weights {pretrained!r} (offline); download them once")

    monkeypatch.setattr(text_module, "load_clip", offline)
    with pytest.raises(ZswError, match="cannot load CLIP 'ViT-B-32' with weights 'openai'") as e:
        get_estimator("clip")
    assert "\n" not in str(e.value)


def test_vlm_spec_imports_the_vlm_estimator_lazily(monkeypatch):
    import zsw.infer.vlm as vlm

    made = {}

    class Fake:
        def __init__(self, model_id, device=None):
            made.update(model_id=model_id, device=device)

        def __call__(self, images):
            return ["mug"] * len(images)

    monkeypatch.setattr(vlm, "VLMCategoryEstimator", Fake)
    est = get_estimator("vlm:HuggingFaceTB/SmolVLM-256M-Instruct", device="cpu")
    assert made == {"model_id": "HuggingFaceTB/SmolVLM-256M-Instruct", "device": "cpu"}
    assert est([Image.new("RGB", (8, 8))]) == ["mug"]
    for bad in ("vlm:", "gpt", "clip2"):
        with pytest.raises(ConfigError):
            get_estimator(bad)


def test_cli_prompt_auto_uses_the_estimated_category(tiny_clip, repo_root, tmp_path, monkeypatch):
    """--prompt auto: CLIP picks a word, the model's text tower (the same tiny CLIP) embeds it."""
    from zsw import checkpoint
    from zsw.cli.main import app
    from zsw.config import TextConfig, get_model_config, replace
    from zsw.infer import category
    from zsw.model import build_model

    monkeypatch.setattr(category, "vocabulary", lambda: VOCAB)
    cfg = replace(get_model_config("tiny"), text=TextConfig(clip_model="zsw-tiny-clip", clip_pretrained="", dim=32))
    ckpt = tmp_path / "m.safetensors"
    checkpoint.save(build_model(cfg), ckpt)
    out = tmp_path / "out"
    args = ["reconstruct", str(repo_root / "examples" / "bucket.png"), "-o", str(out), "--weights", str(ckpt)]
    result = CliRunner().invoke(app, [*args, "--prompt", "auto", "--resolution", "8", "--no-preview"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "bucket" / "result.json").read_text())
    assert info["prompt_source"] == "auto" and info["prompt"] in {w for _, w in VOCAB}


def test_missing_clip_weights_fail_at_once_without_network(monkeypatch, tmp_path):
    """Offline first: weights absent from the local cache and no hub -> one line, no download
    retries (this took 51 s of retries before)."""
    import huggingface_hub.constants as hub

    import zsw.hub
    from zsw.model import text as text_module

    calls, before = [], hub.HF_HUB_OFFLINE
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(text_module, "_FAILED", {})
    monkeypatch.setattr(zsw.hub, "hub_unreachable", lambda timeout=3.0: calls.append("probe") or "no route")

    def create_model(*args, **kwargs):
        calls.append("offline" if hub.HF_HUB_OFFLINE else "online")
        raise RuntimeError("not in cache")

    import logging

    import open_clip

    monkeypatch.setattr(open_clip, "create_model", create_model)
    logging.disable(logging.WARNING)  # the caller's own level, restored afterwards (not reset to NOTSET)
    try:
        with pytest.raises(ZswError, match="not in the local cache .* hub is unreachable \\(no route\\)"):
            text_module.load_clip("ViT-B-32", "openai")
        assert logging.root.manager.disable == logging.WARNING
    finally:
        logging.disable(logging.NOTSET)
    assert calls == ["offline", "probe"]  # never an online attempt
    assert hub.HF_HUB_OFFLINE == before  # the switch is restored
    # a folder of photos asks again for each one: the failure is said again at once, not retried
    with pytest.raises(ZswError, match="hub is unreachable"):
        text_module.load_clip("ViT-B-32", "openai")
    assert calls == ["offline", "probe"]


def test_hub_probe_dials_the_endpoint_s_own_port(monkeypatch):
    import socket

    from huggingface_hub import constants

    import zsw.hub

    dialled = []

    def connect(address, timeout):
        dialled.append(address)
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", connect)
    for endpoint, port in [("https://hf.example", 443), ("http://mirror.example", 80), ("http://m.example:8080", 8080)]:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        assert zsw.hub.hub_unreachable() == f"{endpoint.split('//')[1].split(':')[0]}: Connection refused"
        assert dialled[-1][1] == port
