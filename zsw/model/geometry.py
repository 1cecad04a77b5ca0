"""Camera geometry of ZeroShape / ZeroShape-W.

Conventions (ZeroShape's): pixel x = column, y = row, integer coordinates 0..W-1 with no +0.5
offset; camera frame x right, y down, z forward; K in pixels of the network input (224 px).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "intrinsics_from_params",
    "pixel_grid",
    "unproject_depth",
    "normalize_visible",
    "sincos_pos_embed_2d",
    "default_intrinsics",
]


def intrinsics_from_params(
    params: Tensor,  # [B, 3]: (a, b, c) from the intrinsics head
    height: int,
    width: int,
    default_focal: float = 1.3875,
) -> Tensor:  # [B, 3, 3]
    """Map the head's outputs to a pixel-unit K.

    ``fx = f0 * W * 4**tanh(a)``, ``fy = f0 * H * 4**tanh(a)`` (the focal scale stays in
    [1/4, 4] around the default), ``cx = W/2 + tanh(b) * W/2``, ``cy = H/2 + tanh(c) * H/2``.
    With zeros in (the zero-initialised head) this is the default K of ZeroShape.
    """
    scale = torch.pow(4.0, torch.tanh(params[:, 0]))
    zero = torch.zeros_like(scale)
    one = torch.ones_like(scale)
    fx = default_focal * width * scale
    fy = default_focal * height * scale
    cx = width / 2 + torch.tanh(params[:, 1]) * (width / 2)
    cy = height / 2 + torch.tanh(params[:, 2]) * (height / 2)
    rows = [
        torch.stack([fx, zero, cx], dim=-1),
        torch.stack([zero, fy, cy], dim=-1),
        torch.stack([zero, zero, one], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def default_intrinsics(size: int, default_focal: float = 1.3875, batch: int = 1) -> Tensor:  # [B, 3, 3]
    """ZeroShape's fixed K for a square ``size`` image (f = 1.3875 * size, centred)."""
    return intrinsics_from_params(torch.zeros(batch, 3), size, size, default_focal)


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:  # [H*W, 3]
    """Homogeneous pixel coordinates (x = column, y = row, 1), row-major."""
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)], dim=-1).reshape(-1, 3)


def unproject_depth(
    depth: Tensor,  # [B, 1, H, W]
    intrinsics: Tensor,  # [B, 3, 3]
) -> Tensor:  # [B, H*W, 3]
    """Camera-frame 3D points ``depth * K^-1 [x, y, 1]^T`` for every pixel (row-major)."""
    B, _, H, W = depth.shape
    k_inv = torch.linalg.inv(intrinsics.float())  # [B, 3, 3]
    rays = pixel_grid(H, W, device=depth.device) @ k_inv.transpose(1, 2)  # [B, H*W, 3]
    return rays * depth.reshape(B, H * W, 1).float()


def normalize_visible(
    points: Tensor,  # [B, P, 3]
    mask: Tensor,  # [B, P] bool
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor, Tensor]:  # [B, P, 3], [B, 3], [B]
    """Centre the visible points on their centroid and divide by their largest distance to it.

    Returns the normalised points (invalid points set to 0), the centroid and the scale, so that
    ``camera_point = normalised * scale + centroid``. An image with no visible pixel gets
    centroid 0 and scale 1 (its map is all zeros) instead of NaNs.
    """
    m = mask.to(points.dtype).unsqueeze(-1)  # [B, P, 1]
    count = m.sum(dim=1)  # [B, 1]
    center = (points * m).sum(dim=1) / count.clamp(min=1)  # [B, 3]
    dist = (points - center[:, None]).norm(dim=-1)  # [B, P]
    scale = torch.where(mask, dist, torch.zeros_like(dist)).amax(dim=1)  # [B]
    empty = count[:, 0] == 0
    scale = torch.where(empty, torch.ones_like(scale), scale.clamp(min=eps))
    normalized = (points - center[:, None]) / scale[:, None, None] * m
    return normalized, center, scale


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True) -> Tensor:  # [(1+)grid^2, dim]
    """The fixed 2-D sin-cos embedding of MAE (used by ZeroShape's decoder), in float32.

    The first half of the channels encodes the column index, the second half the row index; each
    half is ``[sin(pos * w), cos(pos * w)]`` with ``w_i = 10000 ** (-i / (dim / 4))``. The optional
    class-token row is zero.
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding width must be divisible by 4, got {dim}")
    omega = np.arange(dim // 4, dtype=np.float32) / np.float32(dim / 4)
    omega = 1.0 / 10000**omega  # [dim/4]
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

    def embed_1d(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([embed_1d(cols), embed_1d(rows)], axis=1)  # [grid^2, dim]
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim), dtype=emb.dtype), emb], axis=0)
    return torch.from_numpy(emb.astype(np.float32))
