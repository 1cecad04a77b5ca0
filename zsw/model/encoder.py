"""Visible-shape encoder: ResNet over the normalised visible surface (and occluder mask) -> tokens.

ZeroShape's ``CoordEncRes``: a torchvision-layout ResNet-50 whose classifier is replaced by two
residual 1x1 blocks and a Linear on the pooled layer-4 features (the global token), and whose
layer-3 map (stride 16) goes through two residual 1x1 blocks and a 1x1 conv (the local tokens).
At 224 px that is 1 + 14 x 14 = 197 tokens. ZeroShape-W feeds 4 channels: xyz and the occluder mask.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from zsw.config import EncoderConfig
from zsw.model.layers import ResidualConvBlock

__all__ = ["ShapeEncoder"]


class ShapeEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        from timm.models.resnet import Bottleneck, ResNet

        self.cfg = cfg
        # timm's ResNet has torchvision's parameter names (conv1, bn1, layer1..4, downsample.0/1)
        self.resnet = ResNet(
            block=Bottleneck,
            layers=tuple(cfg.layers),
            channels=tuple(cfg.channels),
            stem_width=cfg.stem_width,
            in_chans=cfg.in_channels,
            num_classes=0,
        )
        c3 = cfg.channels[2] * Bottleneck.expansion
        c4 = cfg.channels[3] * Bottleneck.expansion
        self.global_head = nn.Sequential(ResidualConvBlock(c4), ResidualConvBlock(c4))
        self.global_proj = nn.Linear(c4, cfg.token_dim)
        self.local_head = nn.Sequential(ResidualConvBlock(c3), ResidualConvBlock(c3))
        self.local_proj = nn.Conv2d(c3, cfg.token_dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, S, S] -> [B, 1 + (S/16)^2, token_dim]
        r = self.resnet
        h = r.maxpool(r.act1(r.bn1(r.conv1(x))))
        f3 = r.layer3(r.layer2(r.layer1(h)))  # [B, c3, S/16, S/16]
        f4 = r.layer4(f3)  # [B, c4, S/32, S/32]
        global_token = self.global_proj(self.global_head(f4.mean(dim=(2, 3))))  # [B, C]
        local = self.local_proj(self.local_head(f3)).flatten(2).transpose(1, 2)  # [B, (S/16)^2, C]
        return torch.cat([global_token[:, None], local], dim=1)
