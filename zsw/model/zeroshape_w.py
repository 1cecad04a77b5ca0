"""ZeroShape-W (and ZeroShape) as one module.

    image [B, 3, S, S] in [0, 1]
      -> PixelModel: depth [B, 1, S, S], K [B, 3, 3], visible/occluder mask logits
      -> visible surface S_V = 1[M_V >= 0.5] * D * K^-1 [x, y, 1]^T, normalised per image
      -> ShapeEncoder(cat(S_V, M_O)): tokens [B, 197, C]
      -> PointDecoder(tokens, points): occupancy logits [B, N]

The ``zeroshape`` preset has no mask heads and no text: it takes the visible mask as input, exactly
as the original ZeroShape does. Points live in the normalised frame of the visible surface:
``camera_point = point * scale + center`` with ``center``/``scale`` from :class:`ModelOutput`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from zsw.config import ModelConfig, get_model_config
from zsw.errors import InputError
from zsw.model.decoder import DecoderLatents, PixelView, PointDecoder
from zsw.model.encoder import ShapeEncoder
from zsw.model.geometry import normalize_visible, unproject_depth
from zsw.model.pixel import PixelModel, PixelOutput
from zsw.model.text import PromptEmbedder

__all__ = [
    "ZeroShapeW",
    "ModelOutput",
    "SurfacePrediction",
    "LiftedSurface",
    "lift_surface",
    "build_model",
    "count_parameters",
]

Prompt = str | Sequence[str] | None


@dataclass
class SurfacePrediction:
    """What the pixel model predicts and the visible surface lifted from it (the part of a forward
    pass shared by :class:`ModelOutput` and :class:`zsw.infer.backend.Prediction`)."""

    depth: Tensor  # [B, 1, S, S] relative depth in [0, 1]
    intrinsics: Tensor  # [B, 3, 3] pixels of the S x S input
    visible_mask_logits: Tensor | None  # [B, 1, S, S] (None for ZeroShape)
    occluder_mask_logits: Tensor | None  # [B, 1, S, S] (None for ZeroShape)
    visible_mask: Tensor  # [B, 1, S, S] in {0, 1}: the mask that lifted the surface
    occluder_mask: Tensor | None  # [B, 1, S, S] in {0, 1}: the mask given to the encoder
    visible_points: Tensor  # [B, 3, S, S] normalised visible surface, 0 outside the mask
    center: Tensor  # [B, 3] centroid of the visible surface in camera coordinates
    scale: Tensor  # [B] its radius; camera = normalised * scale + center

    @staticmethod
    def fields(pix: PixelOutput, lifted: LiftedSurface) -> dict[str, Tensor | None]:
        """The shared fields, from the pixel model's output and the surface lifted from it."""
        return dict(
            depth=pix.depth,
            intrinsics=pix.intrinsics,
            visible_mask_logits=pix.visible_mask_logits,
            occluder_mask_logits=pix.occluder_mask_logits,
            visible_mask=lifted.visible_mask,
            occluder_mask=lifted.occluder_mask,
            visible_points=lifted.visible_points,
            center=lifted.center,
            scale=lifted.scale,
        )

    def to_camera(self, points: Tensor) -> Tensor:  # [B, N, 3] normalised -> camera frame
        return points * self.scale[:, None, None] + self.center[:, None, :]

    def to_normalized(self, points: Tensor) -> Tensor:  # [B, N, 3] camera -> normalised frame
        return (points - self.center[:, None, :]) / self.scale[:, None, None]

    def pixel_view(self) -> PixelView:
        """The visible surface map and camera that a pixel-aligned decoder samples."""
        v = self
        return PixelView.from_surface(
            v.visible_points, v.visible_mask, v.occluder_mask, v.intrinsics, v.center, v.scale
        )


@dataclass
class ModelOutput(SurfacePrediction):
    """Everything one forward pass predicts, plus what decoding needs."""

    tokens: Tensor  # [B, L, C] encoder tokens
    text: Tensor | None  # [B, T] prompt embeddings used (ZeroShape-W)


@dataclass
class LiftedSurface:
    """The visible surface lifted to 3D and normalised, ready for the encoder."""

    visible_mask: Tensor  # [B, 1, S, S] in {0, 1}
    occluder_mask: Tensor | None  # [B, 1, S, S] in {0, 1} (ZeroShape-W)
    visible_points: Tensor  # [B, 3, S, S] normalised, 0 outside the mask
    center: Tensor  # [B, 3]
    scale: Tensor  # [B]
    encoder_input: Tensor  # [B, 3 or 4, S, S]

    def pixel_view(self, intrinsics: Tensor) -> PixelView:  # intrinsics [B, 3, 3]
        """The surface map and camera a pixel-aligned decoder samples (see :class:`PixelView`)."""
        v = self
        return PixelView.from_surface(v.visible_points, v.visible_mask, v.occluder_mask, intrinsics, v.center, v.scale)


def lift_surface(
    pix: PixelOutput,
    config: ModelConfig,
    mask: Tensor | None = None,  # [B, 1, S, S] > 0.5 = visible; overrides the prediction
    occluder_mask: Tensor | None = None,  # [B, 1, S, S] > 0.5 = occluder; overrides the prediction
) -> LiftedSurface:
    """``S_V = 1[M_V >= 0.5] * D * K^-1 [x, y, 1]^T``, normalised per image, plus the encoder input.

    Shared by the PyTorch model and every runtime backend (ONNX Runtime, TensorRT), which run the
    pixel model and the encoder as separate graphs around this glue.
    """
    depth = pix.depth
    B, _, S, _ = depth.shape
    dtype = depth.dtype
    if mask is not None:
        visible = (mask > 0.5).to(dtype)
    elif pix.visible_mask_logits is not None:
        visible = (pix.visible_mask_logits >= 0).to(dtype)
    else:
        raise InputError(f"the {config.name} model has no mask head: pass mask=[B, 1, {S}, {S}]")
    points = unproject_depth(depth, pix.intrinsics)  # [B, S*S, 3]
    normalized, center, scale = normalize_visible(points, visible.reshape(B, -1) > 0.5)
    # float32 whatever the depth's dtype: under bf16 autocast an 8-bit mantissa would move the surface
    # by ~0.4 % of the object, which a pixel-aligned decoder (and the mesh) follows
    visible_points = normalized.transpose(1, 2).reshape(B, 3, S, S)
    occluder = None
    encoder_input = visible_points
    if config.encoder.in_channels == 4:
        if occluder_mask is not None:
            occluder = (occluder_mask > 0.5).to(visible_points.dtype)
        else:
            occluder = (pix.occluder_mask_logits >= 0).to(visible_points.dtype)
        encoder_input = torch.cat([visible_points, occluder], dim=1)
    return LiftedSurface(visible, occluder, visible_points, center, scale, encoder_input)


def build_decoder(cfg: ModelConfig, text_embedder=None) -> PointDecoder:
    """The point decoder of a model with config ``cfg`` alone (``ZeroShapeW.decoder``'s shape and
    parameter names without the ``decoder.`` prefix). Builds nothing from timm."""
    return PointDecoder(
        cfg.decoder,
        cfg.encoder.token_dim,
        cfg.token_grid,
        cfg.text.dim if cfg.text.enabled else 0,
        text_embedder=text_embedder,
        view_channels=cfg.encoder.in_channels + 1,  # visible xyz (+ occluder mask), plus the visible mask
    )


class ZeroShapeW(nn.Module):
    """The full model; build it with :func:`build_model`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.kernel_impl = "auto"  # the decoder's kernels, as set_kernel_impl last set them
        text_dim = cfg.text.dim if cfg.text.enabled else 0
        self.text = PromptEmbedder(cfg.text) if cfg.text.enabled else None
        self.pixel = PixelModel(cfg.pixel, text_dim)
        self.encoder = ShapeEncoder(cfg.encoder)
        self.decoder = build_decoder(cfg, text_embedder=self.text)

    # ---------------------------------------------------------------------------------------

    def _check_image(self, image: Tensor) -> None:
        s = self.config.pixel.image_size
        if not isinstance(image, Tensor):
            raise InputError(f"image must be a torch.Tensor [B, 3, {s}, {s}], got {type(image).__name__}")
        if image.dim() != 4 or image.shape[1] != 3 or image.shape[2:] != (s, s):
            raise InputError(f"image must be [B, 3, {s}, {s}] with values in [0, 1], got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise InputError(f"image must be a floating-point tensor in [0, 1], got {image.dtype}")
        if image.shape[0] == 0:
            raise InputError("image batch is empty (0 images)")
        # A sync per call, so only outside training (where a non-finite loss is caught per step):
        # a NaN pixel would otherwise come back as NaN depth and occupancy with no word.
        if not self.training and image.device.type != "meta" and (bad := int((~torch.isfinite(image)).sum())):
            raise InputError(f"image has {bad} NaN or infinite values: give RGB in [0, 1]")

    def _check_mask(self, mask: Tensor, name: str, image: Tensor) -> None:
        expected = (image.shape[0], 1, *image.shape[2:])
        if not isinstance(mask, Tensor) or tuple(mask.shape) != expected:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise InputError(f"{name} must be a tensor of shape {list(expected)}, got {got}")

    def embed_prompts(self, prompt: Prompt, batch: int) -> Tensor | None:  # [B, T]
        """CLIP embeddings of the prompt(s); None for a model without text conditioning."""
        if self.text is None:
            return None
        if isinstance(prompt, str):
            prompt = [prompt]
        return self.text(prompt, batch)

    def forward(
        self,
        image: Tensor,  # [B, 3, S, S] in [0, 1]
        prompt: Prompt = None,
        mask: Tensor | None = None,  # [B, 1, S, S]: use this visible mask instead of predicting one
        occluder_mask: Tensor | None = None,  # [B, 1, S, S]: use this occluder mask (ZeroShape-W)
    ) -> ModelOutput:
        """Predict depth, intrinsics and masks, lift and encode the visible surface.

        Args:
            image: RGB in [0, 1] at the model's resolution (224 by default).
            prompt: category prompt(s), one per image or one for all; None = "object".
            mask: a visible mask (> 0.5 = visible) replacing the predicted one; required by the
                ``zeroshape`` preset, which has no mask head.
            occluder_mask: an occluder mask (> 0.5 = occluder) replacing the predicted one.

        Returns:
            A :class:`ModelOutput`; decode points with :meth:`decode` or ``model.decoder``.
        """
        self._check_image(image)
        weights = next(self.parameters()).dtype  # float64 from numpy / 255. meets float32 weights
        image = image.to(weights) if image.dtype != weights else image
        B = image.shape[0]
        if mask is not None:
            self._check_mask(mask, "mask", image)
        elif not self.config.pixel.mask_heads:
            S = image.shape[-1]
            raise InputError(f"the {self.config.name} model has no mask head: pass mask=[B, 1, {S}, {S}]")
        if occluder_mask is not None:
            self._check_mask(occluder_mask, "occluder_mask", image)
        text = self.embed_prompts(prompt, B)
        return self.encode_surface(self.pixel(image, text), text, mask, occluder_mask)

    def encode_surface(
        self,
        pix: PixelOutput,  # depth and K to lift (predicted, ground truth or a mix of both)
        text: Tensor | None,  # [B, T] prompt embeddings
        mask: Tensor | None = None,  # [B, 1, S, S]: visible mask instead of pix's logits
        occluder_mask: Tensor | None = None,  # [B, 1, S, S]: occluder mask instead of pix's logits
    ) -> ModelOutput:
        """Lift ``pix`` to the normalised visible surface and encode it into tokens: the second
        half of :meth:`forward`, also used by training on ground-truth surfaces."""
        lifted = lift_surface(pix, self.config, mask, occluder_mask)
        tokens = self.encoder(lifted.encoder_input)
        return ModelOutput(**SurfacePrediction.fields(pix, lifted), tokens=tokens, text=text)

    def latents(self, out: ModelOutput) -> DecoderLatents:
        """Per-image latent K/V for decoding many points (see :meth:`PointDecoder.decode`)."""
        latents = self.decoder.encode(out.tokens, out.text)
        if self.config.decoder.pixel_aligned:
            latents.view = out.pixel_view()
        return latents

    def decode(self, out: ModelOutput, points: Tensor) -> Tensor:  # [B, N, 3] -> [B, N]
        """Occupancy logits of points in the normalised frame of ``out``."""
        return self.decoder.decode(self.latents(out), points)

    def set_kernel_impl(self, impl: str) -> None:
        """Route the decoder's attention and MLP to ``"auto"``, ``"triton"`` or ``"torch"``."""
        from zsw import kernels

        if impl not in kernels.IMPLS:
            raise ValueError(f"impl must be one of {kernels.IMPLS}, got {impl!r}")
        for m in self.modules():
            if hasattr(m, "impl") and isinstance(m.impl, str):
                m.impl = impl
        self.kernel_impl = impl


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN statistics and fixed embeddings excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _load_pretrained(model: ZeroShapeW) -> list[str]:
    """ImageNet weights for the hybrid ViT and the ResNet, CLIP for the default prompt."""
    import timm

    cfg = model.config
    notes = []
    if cfg.pixel.timm_name:
        src = timm.create_model(cfg.pixel.timm_name, pretrained=True, num_classes=0).state_dict()
        src = {k: v for k, v in src.items() if not k.startswith(("norm.", "head."))}
        model.pixel.vit.load_state_dict(src, strict=True)
        notes.append(f"pixel.vit <- timm {cfg.pixel.timm_name}")
    if cfg.encoder.timm_name:
        src = timm.create_model(cfg.encoder.timm_name, pretrained=True, num_classes=0).state_dict()
        conv1 = src["conv1.weight"]
        if cfg.encoder.in_channels > conv1.shape[1]:  # extra channels (occluder mask) start at zero
            extra = conv1.new_zeros(conv1.shape[0], cfg.encoder.in_channels - conv1.shape[1], *conv1.shape[2:])
            src["conv1.weight"] = torch.cat([conv1, extra], dim=1)
        model.encoder.resnet.load_state_dict(src, strict=True)
        notes.append(f"encoder.resnet <- timm {cfg.encoder.timm_name}")
    if model.text is not None:
        notes.append(f"text.default_embedding <- {model.text.init_default_embedding(use_clip=True)}")
    return notes


def build_model(
    spec: str | ModelConfig = "zeroshape-w",
    *,
    pretrained: bool = False,
    device: str | torch.device | None = None,
) -> ZeroShapeW:
    """Build a model from a preset name (``zeroshape-w``, ``zeroshape``, ``tiny``), a YAML file
    or a :class:`~zsw.config.ModelConfig`.

    Args:
        spec: preset name, YAML path or config.
        pretrained: initialise the hybrid ViT and the ResNet from timm's ImageNet weights and the
            default prompt from CLIP (network or a filled Hugging Face cache needed). Without it
            the model is randomly initialised and the default-prompt embedding is a fixed
            pseudo-random unit vector.
        device: build directly on this device (``"meta"`` builds without allocating memory).

    Example::

        model = build_model("tiny").eval()
        out = model(torch.rand(1, 3, 224, 224))
        logits = model.decode(out, torch.rand(1, 1000, 3) * 2 - 1)   # [1, 1000]
    """
    cfg = get_model_config(spec)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = ZeroShapeW(cfg)
    if str(device) == "meta":
        return model
    if pretrained:
        _load_pretrained(model)
    elif model.text is not None:
        model.text.init_default_embedding(use_clip=False)
    return model
