from __future__ import annotations

import dataclasses

import pytest

from zsw.config import (
    MODEL_PRESETS,
    DecoderConfig,
    ModelConfig,
    dump_yaml,
    from_dict,
    get_model_config,
    load_yaml,
    to_dict,
)
from zsw.errors import ConfigError


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_yaml_round_trip(name, tmp_path):
    cfg = get_model_config(name)
    path = tmp_path / f"{name}.yaml"
    dump_yaml(cfg, path)
    assert load_yaml(path, ModelConfig) == cfg
    assert get_model_config(str(path)) == cfg
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg


def test_configs_are_frozen():
    cfg = get_model_config("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"


def test_partial_yaml_takes_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: custom\ndecoder:\n  heads: 4\n")
    cfg = load_yaml(path, ModelConfig)
    assert cfg.decoder.heads == 4 and cfg.decoder.width == DecoderConfig().width and cfg.name == "custom"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("decoder:\n  headz: 4\n", "unknown key decoder.headz"),
        ("nmae: x\n", "unknown key nmae"),
        ("decoder:\n  heads: four\n", "decoder.heads: expected an integer"),
        ("decoder:\n  heads: 4.5\n", "decoder.heads: expected an integer"),
        ("decoder:\n  skip_in: 2\n", "decoder.skip_in: expected a list"),
        ("text:\n  enabled: 1\n", "text.enabled: expected true/false"),
        ("pixel: [1, 2]\n", "pixel: expected a mapping"),
        ("decoder: {width: 100, heads: 8}\n", "divisible"),
        ("- a\n- b\n", "expected a mapping"),
        ("decoder: {heads: [\n", "not valid YAML"),
        # ranges: each was a ZeroDivisionError, an error from inside timm, or NaN occupancy
        ("decoder: {heads: 0}\n", "decoder.heads must be a number > 0, got 0"),
        ("decoder: {blocks: 0}\n", "decoder.blocks must be a number > 0"),
        ("decoder: {softplus_beta: 0}\n", "decoder.softplus_beta must be a number > 0"),
        ("decoder: {mlp_ratio: .nan}\n", "decoder.mlp_ratio must be a number > 0, got nan"),
        ("decoder: {drop_path: 1.5}\n", "decoder.drop_path must be below 1"),
        ("pixel: {image_size: 0}\n", "pixel.image_size must be a number > 0"),
        ("pixel: {vit_heads: 5}\n", "must be divisible by pixel.vit_heads (5)"),
        ("pixel: {norm_groups: 5}\n", "pixel.norm_groups (5) must divide"),
        ("encoder: {layers: [3, 0, 6, 3]}\n", "encoder.layers must be a number > 0, got [3, 0, 6, 3]"),
        # structure: what one part needs of another
        ("pixel: {image_size: 200}\n", "pixel.image_size must be a multiple of 32, got 200"),
        ("decoder: {width: 12, heads: 4}\n", "decoder head dimension must be even"),
        ("decoder: {point_embed: conv}\n", "decoder.point_embed must be 'linear' or 'mlp', got 'conv'"),
        ("decoder: {point_embed_dim: 999}\n", "decoder.point_embed_dim must be between 0 and decoder.width"),
        ("decoder: {point_frequencies: 13}\n", "decoder.point_frequencies must be in 0..12, got 13"),
        ("decoder: {mirror_queries: true}\n", "decoder.mirror_queries samples the surface map"),
        ("decoder: {token_features: -1}\n", "decoder.token_features must be a number >= 0, got -1"),
        ("decoder: {silhouette_distance: true}\n", "decoder.silhouette_distance is sampled at each query's pixel"),
        ("decoder: {token_features: 8}\n", "decoder.token_features samples the token grid"),
        ("decoder: {pixel_aligned: true, axial_queries: true}\n", "decoder.axial_queries turns queries"),
        ("text: {enabled: false}\n", "decoder.point_embed='mlp' concatenates a text embedding"),
        ("encoder: {in_channels: 3}\n", "encoder.in_channels must be 4 with pixel.mask_heads"),
        ("pixel: {resnet_layers: [1, 1]}\n", "pixel.resnet_layers and pixel.resnet_channels need 3 stages"),
        ("pixel: {vit_taps: [1, 99]}\n", "pixel.vit_taps must be 2 block indices below vit_depth"),
        ("encoder: {layers: [1, 1, 1]}\n", "encoder.layers and encoder.channels need 4 stages"),
        ("decoder: {occ_layers: 4, skip_in: [2, 6]}\n", "decoder.skip_in entries must be in 1..4"),
        ("decoder: {occ_layers: 4, skip_in: [1, 4]}\n", None),  # within its layers: fine
    ],
)
def test_strict_yaml_errors_name_the_culprit(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    if fragment is None:
        load_yaml(path, ModelConfig)
        return
    with pytest.raises(ConfigError) as e:
        load_yaml(path, ModelConfig)
    msg = str(e.value)
    assert fragment in msg and str(path) in msg
    assert "\n" not in msg


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="unknown model preset 'huge'.*zeroshape-w"):
        get_model_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        get_model_config("no/such/file.yaml")


def test_preset_structure():
    w, z, t = (get_model_config(n) for n in ("zeroshape-w", "zeroshape", "tiny"))
    assert (w.encoder.in_channels, z.encoder.in_channels) == (4, 3)
    assert w.pixel.mask_heads and not z.pixel.mask_heads and t.pixel.mask_heads
    assert z.decoder.point_embed == "linear" and w.decoder.point_embed == "mlp"
    assert w.num_tokens == z.num_tokens == t.num_tokens == 197


@pytest.mark.parametrize(
    "data, fragment",
    [
        (dict(workers=-1), "data.workers"),
        (dict(points=0), "data.points"),
        (dict(far_fraction=1.5), "data.far_fraction"),
        (dict(far_fraction=float("nan")), "data.far_fraction"),
        (dict(near_band=0.0), "data.near_band"),
        (dict(label_softness=-0.01), "data.label_softness"),
        (dict(label_softness=float("inf")), "data.label_softness"),
    ],
)
def test_training_data_settings_are_validated(data, fragment):
    from zsw.train.config import DataConfig, TrainConfig

    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(data=DataConfig(**data))


def test_loader_workers_default_fits_the_cpus(monkeypatch):
    """No data.workers: one less than the CPUs each rank gets, at most 4 (the old default of 4
    workers on a 2-core machine drew PyTorch's 'suggested max number of worker' warning)."""
    import os

    from zsw.train.setup import _loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _loader_workers(None, 1) == 1 and _loader_workers(None, 2) == 0 and _loader_workers(3, 2) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert _loader_workers(None, 8) == 4
