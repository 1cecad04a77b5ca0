"""Pixel-level regression: DPT-Hybrid with intrinsics, depth, visible-mask and occluder-mask heads.

The backbone is timm's hybrid ViT (ResNetV2 stages (3, 4, 9) with StdConv2dSame and GroupNorm,
then ViT-B/16 with 12 blocks). DPT taps ResNet stages 0 and 1 (stride 4 and 8) and ViT blocks 8 and
11 (stride 16, "project" readout), reassembles them into maps at strides 4, 8, 16 and 32, and fuses
them back up to stride 2:

* ``X_G`` -- the stride-32 map of the last tap (768 x 7 x 7 at 224 px) feeds the intrinsics head;
* ``X_F`` -- the fused stride-2 map (256 x 112 x 112) feeds the depth and mask heads.

The visible-mask head sees ``X_F`` FiLM-modulated by the CLIP embedding of the category prompt,
``(1 + gamma) * X_F + beta``, with a zero-initialised FiLM layer (identity at start); the occluder
head sees ``X_F`` concatenated with the visible-mask probability at the same resolution.

Reference: Ranftl et al., "Vision Transformers for Dense Prediction" (DPT), ICCV 2021;
ZeroShape (Huang et al., CVPR 2024); ZeroShape-W (Cho et al., CVPR 2025).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from zsw.config import PixelConfig
from zsw.model.geometry import intrinsics_from_params
from zsw.model.layers import ResidualConvBlock

__all__ = ["PixelModel", "PixelOutput", "build_hybrid_vit"]


def build_hybrid_vit(cfg: PixelConfig) -> nn.Module:
    """timm's R50+ViT hybrid from the config, without classifier head and final norm (DPT uses
    neither). With the default config its parameters equal ``vit_base_r50_s16_384``'s minus those."""
    from timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer

    backbone = ResNetV2(
        layers=list(cfg.resnet_layers),
        channels=tuple(cfg.resnet_channels),
        stem_chs=cfg.stem_channels,
        num_classes=0,
        global_pool="",
        in_chans=3,
        preact=False,
        stem_type="same",
        conv_layer=partial(StdConv2dSame, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=cfg.norm_groups),
    )
    vit = VisionTransformer(
        img_size=cfg.vit_pos_grid * 16,
        patch_size=1,
        embed_dim=cfg.vit_dim,
        depth=cfg.vit_depth,
        num_heads=cfg.vit_heads,
        num_classes=0,
        embed_layer=partial(HybridEmbed, backbone=backbone),
    )
    vit.norm = nn.Identity()  # DPT reads blocks through taps; the final norm would be dead weight
    return vit


class ReadoutProject(nn.Module):
    """DPT's "project" readout: concat every patch token with the class token, Linear + GELU,
    and reshape to a map."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, tokens: Tensor, hw: tuple[int, int]) -> Tensor:  # [B, 1+P, C] -> [B, C, h, w]
        patches = tokens[:, 1:]
        cls = tokens[:, :1].expand_as(patches)
        x = F.gelu(self.proj(torch.cat([patches, cls], dim=-1)))
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)


class Reassemble(nn.Module):
    """Readout + 1x1 conv, and for the deepest tap a stride-2 3x3 conv (stride 16 -> 32)."""

    def __init__(self, dim: int, downsample: bool):
        super().__init__()
        self.readout = ReadoutProject(dim)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.down = nn.Conv2d(dim, dim, 3, stride=2, padding=1) if downsample else None

    def forward(self, tokens: Tensor, hw: tuple[int, int]) -> Tensor:
        x = self.proj(self.readout(tokens, hw))
        return self.down(x) if self.down is not None else x


class ResidualConvUnit(nn.Module):
    """ReLU - conv3x3 - ReLU - conv3x3, plus the input (DPT, without batch norm)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    """DPT feature fusion: add the refined skip, refine, upsample x2 (align_corners), 1x1 conv."""

    def __init__(self, features: int):
        super().__init__()
        self.res1 = ResidualConvUnit(features)  # applied to the skip input (unused by the deepest block)
        self.res2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.res1(skip)
        x = self.res2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Fusion(nn.Module):
    """DPT's "scratch": 3x3 convs to a common width, then four fusion blocks from stride 32 to 2."""

    def __init__(self, in_channels: tuple[int, int, int, int], features: int):
        super().__init__()
        self.proj1, self.proj2, self.proj3, self.proj4 = (
            nn.Conv2d(c, features, 3, padding=1, bias=False) for c in in_channels
        )
        self.refine1, self.refine2, self.refine3, self.refine4 = (FusionBlock(features) for _ in range(4))
        # the deepest block has no skip input, so its res1 never runs; it stays for checkpoint
        # compatibility with DPT/ZeroShape, frozen so that DDP sees no parameter without a gradient
        self.refine4.res1.requires_grad_(False)

    def forward(self, l1: Tensor, l2: Tensor, l3: Tensor, l4: Tensor) -> Tensor:
        x = self.refine4(self.proj4(l4))
        x = self.refine3(x, self.proj3(l3))
        x = self.refine2(x, self.proj2(l2))
        return self.refine1(x, self.proj1(l1))


class DepthHead(nn.Module):
    """conv3x3 -> x2 bilinear -> conv3x3 -> ReLU -> conv1x1 -> ReLU (DPT), clamped to [0, 1]."""

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(features // 2, hidden, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden, 1, 1)
        nn.init.constant_(self.conv3.bias, 0.05)

    def forward(self, x: Tensor) -> Tensor:  # [B, F, h, w] -> [B, 1, 2h, 2w]
        x = F.interpolate(self.conv1(x), scale_factor=2, mode="bilinear", align_corners=True)
        x = F.relu(self.conv3(F.relu(self.conv2(x))))
        # depth is only defined up to scale and shift; ZeroShape keeps it in [0, 1]
        return x.clamp(0.0, 1.0)


class MaskHead(nn.Module):
    """conv3x3 -> ReLU -> conv1x1 to one logit channel, at the resolution of its input."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class IntrinsicsHead(nn.Module):
    """Two residual 3x3 conv blocks on X_G, global average pooling and a zero-initialised Linear to
    (a, b, c); see :func:`zsw.model.geometry.intrinsics_from_params`."""

    def __init__(self, channels: int):
        super().__init__()
        self.blocks = nn.Sequential(ResidualConvBlock(channels, 3), ResidualConvBlock(channels, 3))
        self.proj = nn.Linear(channels, 3)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, h, w] -> [B, 3]
        return self.proj(self.blocks(x).mean(dim=(2, 3)))


@dataclass
class PixelOutput:
    depth: Tensor  # [B, 1, H, W], in [0, 1]
    intrinsics: Tensor  # [B, 3, 3], pixels
    visible_mask_logits: Tensor | None  # [B, 1, H, W]
    occluder_mask_logits: Tensor | None  # [B, 1, H, W]

    def rows(self, index: Sequence[int]) -> PixelOutput:
        """The outputs of the batch positions ``index``."""
        return PixelOutput(*(None if t is None else t[list(index)] for t in self._tensors()))

    @staticmethod
    def cat(parts: Sequence[PixelOutput]) -> PixelOutput:
        """One batch of ``parts`` in order (their fields present alike)."""
        columns = zip(*(p._tensors() for p in parts))
        return PixelOutput(*(None if c[0] is None else torch.cat(c) for c in columns))

    def exclusive(self) -> PixelOutput:
        """These outputs with each pixel that both masks claim (both logits >= 0) left to the more
        confident head (the visible one on a tie): the other head's logit there becomes negative.

        The two heads are independent sigmoids, so a pixel can come out both "the object, seen"
        and "an occluder in front of it"; it is then lifted into the visible surface *and* handed
        to the encoder as occluder. Inference reads the masks this way (``zsw.infer.tta.pixel_function``);
        training keeps the heads' own outputs. Unchanged without an occluder head."""
        v, o = self.visible_mask_logits, self.occluder_mask_logits
        if v is None or o is None:
            return self
        both = (v >= 0) & (o >= 0)
        visible = torch.where(both & (o > v), -v - 1e-3, v)  # a claimed pixel's logit is >= 0: now < 0
        occluder = torch.where(both & (v >= o), -o - 1e-3, o)
        return PixelOutput(self.depth, self.intrinsics, visible, occluder)

    def _tensors(self) -> tuple[Tensor | None, ...]:
        return self.depth, self.intrinsics, self.visible_mask_logits, self.occluder_mask_logits


class PixelModel(nn.Module):
    """Image in [0, 1] -> depth, intrinsics and (ZeroShape-W) visible and occluder mask logits."""

    def __init__(self, cfg: PixelConfig, text_dim: int = 0):
        super().__init__()
        self.cfg = cfg
        self.vit = build_hybrid_vit(cfg)
        c0, c1, _ = cfg.resnet_channels
        self.reassemble3 = Reassemble(cfg.vit_dim, downsample=False)
        self.reassemble4 = Reassemble(cfg.vit_dim, downsample=True)
        self.fusion = Fusion((c0, c1, cfg.vit_dim, cfg.vit_dim), cfg.features)
        self.depth_head = DepthHead(cfg.features, cfg.depth_hidden)
        self.intrinsics_head = IntrinsicsHead(cfg.vit_dim)
        if cfg.mask_heads:
            if text_dim <= 0:
                raise ValueError("mask heads need a text embedding width")
            self.film = nn.Linear(text_dim, 2 * cfg.features)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
            self.visible_head = MaskHead(cfg.features, cfg.mask_hidden)
            self.occluder_head = MaskHead(cfg.features + 1, cfg.mask_hidden)
        else:
            self.film = self.visible_head = self.occluder_head = None

    def _pos_embed(self, grid_h: int, grid_w: int) -> Tensor:  # [1, 1 + h*w, C]
        pos = self.vit.pos_embed
        n = self.cfg.vit_pos_grid
        cls, grid = pos[:, :1], pos[:, 1:]
        if (grid_h, grid_w) != (n, n):
            grid = grid.reshape(1, n, n, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([cls, grid], dim=1)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The fine map X_F ``[B, F, H/2, W/2]`` and the global map X_G ``[B, C, H/32, W/32]`` of
        an image already mapped to [-1, 1]."""
        B, _, H, W = x.shape
        embed = self.vit.patch_embed
        cnn = embed.backbone
        h = cnn.stem(x)
        taps = []
        for i, stage in enumerate(cnn.stages):
            h = stage(h)
            if i < 2:
                taps.append(h)  # stride 4 and stride 8 maps
        h = embed.proj(cnn.norm(h))
        hw = (h.shape[-2], h.shape[-1])
        tokens = h.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.vit.cls_token.expand(B, -1, -1), tokens], dim=1) + self._pos_embed(*hw)
        tokens = self.vit.norm_pre(self.vit.patch_drop(self.vit.pos_drop(tokens)))
        tap3, tap4 = self.cfg.vit_taps
        for i, block in enumerate(self.vit.blocks[: tap4 + 1]):
            tokens = block(tokens)
            if i == tap3:
                taps.append(self.reassemble3(tokens, hw))
        x_g = self.reassemble4(tokens, hw)
        x_f = self.fusion(taps[0], taps[1], taps[2], x_g)
        return x_f, x_g

    def forward(self, image: Tensor, text: Tensor | None = None) -> PixelOutput:
        """``image [B, 3, H, W]`` in [0, 1]; ``text [B, T]`` CLIP embeddings (mask heads only)."""
        B, _, H, W = image.shape
        x_f, x_g = self.features(image * 2 - 1)
        depth = self.depth_head(x_f)
        intrinsics = intrinsics_from_params(self.intrinsics_head(x_g), H, W, self.cfg.default_focal)
        visible = occluder = None
        if self.visible_head is not None:
            if text is None:
                raise ValueError("the visible-mask head needs the prompt's text embedding")
            gamma, beta = self.film(F.silu(text.to(x_f.dtype))).chunk(2, dim=-1)
            modulated = (1 + gamma[:, :, None, None]) * x_f + beta[:, :, None, None]
            visible_low = self.visible_head(modulated)  # [B, 1, H/2, W/2]
            occluder_low = self.occluder_head(torch.cat([x_f, torch.sigmoid(visible_low)], dim=1))
            visible = F.interpolate(visible_low, size=(H, W), mode="bilinear", align_corners=False)
            occluder = F.interpolate(occluder_low, size=(H, W), mode="bilinear", align_corners=False)
        return PixelOutput(depth, intrinsics, visible, occluder)
