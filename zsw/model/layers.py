"""Layers that own parameters and call :mod:`zsw.kernels`.

``PointCrossAttention`` and ``OccupancyMLP`` are the decoder's hot path. Each has an ``impl``
attribute (``"auto"``, ``"triton"`` or ``"torch"``) forwarded to the kernel dispatch; see
:func:`zsw.kernels.resolve_impl` for what each value means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from zsw import kernels

__all__ = ["ResidualConvBlock", "PointCrossAttention", "OccupancyMLP", "FeedForward", "LayerNorm"]


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` whose output keeps a 16-bit input's dtype under autocast.

    Autocast runs ``layer_norm`` in fp32 and returns fp32. On the decoder's point path (2.1M
    points x 256 channels on a 129^3 grid) that is a 2.2 GB fp32 tensor per norm, which the next
    Linear reads only to cast it back to bf16: 4.4 GB more memory traffic than a bf16 output, five
    times per decode. Here the norm runs in the input's dtype (PyTorch's kernels accumulate the
    statistics in fp32 either way) with the affine parameters cast to it, and the Linear takes
    the result as it is. Only without autograd (inference, validation): in training the norm's
    parameter gradients stay those of autocast's fp32 norm. Otherwise, outside autocast or for
    fp32 input, it is ``nn.LayerNorm``; the parameters and their names are the same.
    """

    def forward(self, x: Tensor) -> Tensor:
        device = x.device.type
        if (
            x.dtype not in (torch.float16, torch.bfloat16)
            or torch.is_grad_enabled()
            or not torch.is_autocast_enabled(device)
        ):
            return super().forward(x)
        with torch.autocast(device, enabled=False):
            weight = self.weight.to(x.dtype) if self.weight is not None else None
            bias = self.bias.to(x.dtype) if self.bias is not None else None
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class ResidualConvBlock(nn.Module):
    """conv - BN - ReLU - conv - BN, plus the input, then ReLU (ZeroShape's ``Bottleneck_Conv``).

    With ``kernel_size=1`` it also accepts pooled features ``[B, C]`` (treated as 1x1 maps), which
    is how ZeroShape's encoder heads use it.
    """

    def __init__(self, channels: int, kernel_size: int = 1):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:  # [B, C] or [B, C, H, W]
        flat = x.dim() == 2
        if flat:
            x = x[:, :, None, None]
        out = F.relu(_batch_norm(self.bn1, self.conv1(x)))
        out = F.relu(_batch_norm(self.bn2, self.conv2(out)) + x)
        return out.flatten(1) if flat else out


def _batch_norm(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """``bn(x)``, except that one value per channel (a pooled feature of a batch of one, which is
    what a rank gets from an odd batch split) has no batch statistics: it is normalised with the
    running statistics instead, and they are left as they are."""
    if bn.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return bn(x)


class PointCrossAttention(nn.Module):
    """Multi-head attention of ZeroShape's decoder, split into its two independent halves.

    Latent tokens self-attend among themselves and never see the points; each point attends to the
    latent keys plus its own key. :meth:`latent` runs once per image and returns the latent K/V
    every point needs; :meth:`points` runs for any number of points against them.
    """

    def __init__(self, dim: int, heads: int, impl: str = "auto"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.impl = impl

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # [B, T, C] -> 3 x [B, H, T, D]
        B, T, _ = x.shape
        qkv = kernels.linear(x, self.qkv.weight, self.qkv.bias, impl=self.impl)
        qkv = qkv.reshape(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, x: Tensor) -> Tensor:  # [B, H, T, D] -> [B, T, C]
        B, H, T, D = x.shape
        return x.transpose(1, 2).reshape(B, T, H * D)

    def latent(self, x: Tensor, update: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """Latent keys/values ``[B, H, L, D]`` and, if ``update``, the projected self-attention
        output ``[B, L, C]`` of the (already normalised) latent tokens ``x [B, L, C]``."""
        q, k, v = self._split(x)
        if not update:
            return k, v, None
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return k, v, self.proj(self._merge(out))

    def points(self, x: Tensor, k_latent: Tensor, v_latent: Tensor) -> Tensor:
        """Projected attention output ``[B, N, C]`` of the normalised point features ``x [B, N, C]``."""
        q, k, v = self._split(x)
        out = kernels.point_cross_attention(q, k, v, k_latent, v_latent, self.scale, impl=self.impl)
        return kernels.linear(self._merge(out), self.proj.weight, self.proj.bias, impl=self.impl)


class OccupancyMLP(nn.Module):
    """ZeroShape's MLP head: ``hidden_layers`` Softplus(beta) Linears with input skips, then a
    Linear to ``out_dim``. Runs through :func:`zsw.kernels.occupancy_mlp`."""

    def __init__(
        self,
        in_dim: int,
        width: int,
        hidden_layers: int = 8,
        out_dim: int = 1,
        skip_in: Sequence[int] = (2, 4, 6),
        beta: float = 100.0,
        impl: str = "auto",
    ):
        super().__init__()
        self.skip_in = tuple(skip_in)
        self.beta = float(beta)
        self.impl = impl
        dims = [in_dim] + [width] * hidden_layers + [out_dim]
        layers = []
        for l in range(len(dims) - 1):
            fan_in = dims[l] + (in_dim if l in self.skip_in else 0)
            layers.append(nn.Linear(fan_in, dims[l + 1]))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:  # [..., in_dim] -> [..., out_dim]
        weights = [layer.weight for layer in self.layers]
        biases = [layer.bias for layer in self.layers]
        return kernels.occupancy_mlp(x, weights, biases, self.skip_in, self.beta, impl=self.impl)

    def extra_repr(self) -> str:
        return f"skip_in={self.skip_in}, beta={self.beta}, impl={self.impl!r}"


class FeedForward(nn.Module):
    """A transformer block's MLP, ``fc2(GELU(fc1(x)))`` through :func:`zsw.kernels.feed_forward`
    (fused GEMM + bias + GELU for CPU inference; on a GPU with TMA one kernel that keeps the hidden
    layer on chip, where it measures faster), with the parameter names of timm's
    ``timm.layers.Mlp`` (``fc1.*``, ``fc2.*``), so checkpoints are the same either way.

    The decoder uses this instead of timm's class so that decoding needs no ``import timm``: that
    import pulls in torchvision and ``torch._dynamo`` (about 2 s of a 2-core CPU's start-up), and
    the packaged model's CPU path (ONNX Runtime for the pixel model and encoder, PyTorch for the
    decoder) otherwise never touches timm.
    """

    def __init__(self, dim: int, hidden: int, impl: str = "auto"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf); applied inside kernels.linear
        self.fc2 = nn.Linear(hidden, dim)
        self.impl = impl

    def forward(self, x: Tensor) -> Tensor:
        fc1, fc2 = self.fc1, self.fc2
        return kernels.feed_forward(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, impl=self.impl)
