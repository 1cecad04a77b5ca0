"""Tiny, randomly initialised stand-ins for the synthesis models, saved in the real folder layouts.

For tests and offline smoke runs: the folders load through exactly the code paths of the real
models (``from_pretrained`` of a local directory) and run in about a second on a CPU, but produce
noise. Layouts mirror the hub repositories:

* ``sd15/`` -- a ``StableDiffusionPipeline`` folder (unet, vae, text_encoder, tokenizer, scheduler
  with SD 1.5's PNDM settings), like ``stable-diffusion-v1-5/stable-diffusion-v1-5``;
* ``controlnet/`` -- a ``ControlNetModel`` folder, like ``lllyasviel/control_v11f1p_sd15_depth``;
* ``background/`` -- a ``StableDiffusionControlNetInpaintPipeline`` folder with a 9-channel
  inpainting UNet and its ``controlnet/``, like ``yahoo-inc/photo-background-generation``;
* ``depth_anything/`` -- a ``DepthAnythingForDepthEstimation`` + ``DPTImageProcessor`` folder;
* :func:`build_tiny_vlm` -- a LLaVA-style image-text-to-text model with processor and chat template.

The CLIP tokenizer is built locally (byte-level vocabulary, no merges): the usual test tokenizer
is a hub download. :func:`write_toy_renders` writes a 3-render source dataset to synthesize from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "TinyModels",
    "build_tiny_models",
    "build_tiny_vlm",
    "tiny_clip_tokenizer",
    "write_toy_renders",
    "TINY_VLM_WORDS",
]

_CROSS = 32  # text width = UNet cross-attention width


@dataclass(frozen=True)
class TinyModels:
    base_model: Path
    controlnet: Path
    background_model: Path
    depth_model: Path


def tiny_clip_tokenizer() -> Any:
    """A CLIP tokenizer over the 256 byte symbols (plus their ``</w>`` forms), offline."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        hidden_size=_CROSS,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=_CROSS,
    )
    return CLIPTextModel(cfg)


def _unet(in_channels: int) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_CROSS,
        norm_num_groups=1,
    )


def _controlnet() -> Any:
    from diffusers import ControlNetModel

    return ControlNetModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=_CROSS,
        conditioning_embedding_out_channels=(16, 32),
        norm_num_groups=1,
    )


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
    )


def _sd15_scheduler() -> Any:
    from diffusers import PNDMScheduler

    # SD 1.5's scheduler_config.json: the runs swap in DDIM/UniPC from this config
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )


def build_tiny_models(root: str | os.PathLike, seed: int = 0) -> TinyModels:
    """Build and save all tiny models under ``root``; returns their folders."""
    import torch
    from diffusers import StableDiffusionControlNetInpaintPipeline, StableDiffusionPipeline
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    root = Path(root)
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    common = dict(safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    base = StableDiffusionPipeline(
        unet=_unet(4),
        vae=_vae(),
        text_encoder=_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=_sd15_scheduler(),
        **common,
    )
    base.save_pretrained(root / "sd15")
    _controlnet().save_pretrained(root / "controlnet")
    background = StableDiffusionControlNetInpaintPipeline(
        unet=_unet(9),
        controlnet=_controlnet(),
        vae=_vae(),
        text_encoder=_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=_sd15_scheduler(),
        **common,
    )
    background.save_pretrained(root / "background")

    backbone = Dinov2Config(
        image_size=56,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    depth_cfg = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[16, 32, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        patch_size=14,
        reassemble_factors=[4, 2, 1, 0.5],
        depth_estimation_type="relative",
    )
    DepthAnythingForDepthEstimation(depth_cfg).save_pretrained(root / "depth_anything")
    # Depth Anything V2's preprocessing (keep aspect, multiple of 14, ImageNet statistics), at 56 px
    DPTImageProcessor(
        size={"height": 56, "width": 56},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(root / "depth_anything")
    return TinyModels(root / "sd15", root / "controlnet", root / "background", root / "depth_anything")


def write_toy_renders(root: str | os.PathLike, size: int = 224) -> list[Any]:
    """A 3-render source dataset in ZeroShape layout: two views of a disc ("mug") and a box, shaded
    on a white background, with depth, camera, SDF samples and point clouds. Returns the SampleIds.

    A stand-in for procedural renders where only the file contract matters.
    """
    import numpy as np

    from zsw.data.layout import SampleId, ZeroShapeLayout

    layout = ZeroShapeLayout(root)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = (size - 1) / 2
    K = np.array([[1.3875 * size, 0, size / 2], [0, 1.3875 * size, size / 2], [0, 0, 1]], np.float32)
    samples = {"mug": [SampleId("mug", "o1", "0"), SampleId("mug", "o1", "1")], "box": [SampleId("box", "o2", "0")]}
    for cat, sids in samples.items():
        for k, sid in enumerate(sids):
            if cat == "mug":  # a sphere cap seen head-on: nearest at the centre
                r2 = ((xx - c - 6 * k) ** 2 + (yy - c) ** 2) / (0.3 * size) ** 2
                mask = r2 < 1
                depth = np.where(mask, 2.0 - 0.3 * np.sqrt(np.clip(1 - r2, 0, 1)), 0.0)
            else:  # a slanted box face
                mask = (np.abs(xx - c) < 0.25 * size) & (np.abs(yy - c) < 0.2 * size)
                depth = np.where(mask, 2.0 + 0.002 * (xx - c), 0.0)
            shade = np.clip(255 * (1.6 - 0.6 * depth), 40, 230)[..., None] * np.array([1.0, 0.7, 0.5])
            image = np.where(mask[..., None], shade, 255).astype(np.uint8)
            Rt = np.concatenate([np.eye(3), [[0], [0], [2.0]]], axis=1)
            layout.write_view(sid, image=image, depth=depth.astype(np.float32), intrinsics=K, extrinsics=Rt)
            if k == 0:  # per-object files, once
                layout.write_object(
                    sid,
                    sample_pt=rng.uniform(-0.5, 0.5, (256, 3)),
                    sample_sdf=rng.normal(0, 0.1, 256),
                    pointcloud=rng.uniform(-0.5, 0.5, (128, 3)),
                )
        layout.write_list(cat, "train", sids)
    return [sid for sids in samples.values() for sid in sids]


TINY_VLM_WORDS = ("chair", "mug", "lamp", "table", "sofa", "bottle", "vase", "car", "bowl", "shoe")


def build_tiny_vlm(root: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny random LLaVA (CLIP vision tower + Llama) with its processor and chat template, saved
    to ``root``: loads through ``AutoProcessor`` / ``AutoModelForImageTextToText`` like a real
    image-text-to-text model and answers with words from :data:`TINY_VLM_WORDS`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    root = Path(root)
    torch.manual_seed(seed)
    words = ["<unk>", "<pad>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", *TINY_VLM_WORDS]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = (
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=template,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
    )
    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    LlavaForConditionalGeneration(cfg).save_pretrained(root)
    processor.save_pretrained(root)
    return root
