"""Pure-PyTorch references of the zsw kernels.

Each function here has the same signature and semantics as its Triton twin in ``zsw.kernels``.
They are the CPU path, the ONNX-export path, the test oracle and the benchmark baseline, so they
favour clarity and exactness over speed: no fused tricks, no GEMM-expanded distances.

Shapes use B = batch, H = heads, N = query points, L = latent tokens, D = head dim,
M = points of the second cloud.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "linear",
    "feed_forward",
    "point_cross_attention",
    "occupancy_mlp",
    "nearest_neighbors",
    "chamfer_distance",
    "NearestNeighbors",
    "Chamfer",
]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, followed by the exact (erf) GELU when ``activation`` is
    ``"gelu"``: a transformer MLP's first layer in one call."""
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        return F.gelu(y)
    if activation is not None:
        raise ValueError(f"linear: activation must be None or 'gelu', got {activation!r}")
    return y


def feed_forward(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:
    """A transformer block's MLP, ``fc2(GELU(fc1(x)))`` with the exact GELU (``timm.layers.Mlp``)."""
    return linear(linear(x, w1, b1, "gelu"), w2, b2)


def point_cross_attention(
    q: Tensor,  # [B, H, N, D]
    k: Tensor,  # [B, H, N, D]
    v: Tensor,  # [B, H, N, D]
    k_latent: Tensor,  # [B, H, L, D]
    v_latent: Tensor,  # [B, H, L, D]
    scale: float | None = None,
) -> Tensor:  # [B, H, N, D]
    """Attention of every point over the L latent keys plus its own key (ZeroShape's decoder).

    For point n: ``logits = [q_n . k_latent_j for j < L] + [q_n . k_n]`` (times ``scale``),
    ``w = softmax(logits)`` over the L + 1 entries, and ``out_n = sum_j w_j v_latent_j + w_L v_n``.
    Points never see each other; the latent tokens are shared by all points of an image.

    Args:
        q, k, v: per-point query, key and value.
        k_latent, v_latent: keys and values of the latent tokens.
        scale: logit scale, ``D ** -0.5`` by default.

    Returns:
        The attended values, in the dtype of ``q``.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    logits_latent = (q @ k_latent.transpose(-2, -1)) * scale  # [B, H, N, L]
    logits_self = (q * k).sum(dim=-1, keepdim=True) * scale  # [B, H, N, 1]
    weights = torch.cat([logits_latent, logits_self], dim=-1).softmax(dim=-1)  # [B, H, N, L+1]
    num_latent = k_latent.shape[-2]
    return weights[..., :num_latent] @ v_latent + weights[..., num_latent:] * v


def occupancy_mlp(
    x: Tensor,  # [..., C_in]
    weights: Sequence[Tensor],  # layer l: [C_out_l, C_in_l]
    biases: Sequence[Tensor | None],  # layer l: [C_out_l] or None
    skip_in: Sequence[int] = (2, 4, 6),
    beta: float = 100.0,
) -> Tensor:  # [..., C_out]
    """ZeroShape's occupancy MLP: Linears with Softplus(beta) and input skip connections.

    ``h = x``; for each layer l: if ``l in skip_in`` then ``h = cat(h, x) / sqrt(2)``;
    ``h = h @ W_l^T + b_l``; then ``Softplus(beta, threshold=20)`` after every layer but the last
    (exactly ``torch.nn.functional.softplus``: linear where ``beta * h > 20``).

    Args:
        x: input features; for the decoder, ``cat(xyz, point_feature)``.
        weights, biases: one entry per layer, as stored by ``nn.Linear``.
        skip_in: layers whose input is concatenated with ``x``.
        beta: Softplus sharpness.

    Returns:
        The last layer's output (occupancy logits for the decoder, ``C_out = 1``).
    """
    if len(weights) != len(biases):
        raise ValueError(f"occupancy_mlp: {len(weights)} weights but {len(biases)} biases")
    h = x
    last = len(weights) - 1
    for l, (w, b) in enumerate(zip(weights, biases)):
        if l in skip_in:
            h = torch.cat([h, x], dim=-1) / math.sqrt(2)
        h = F.linear(h, w, b)
        if l < last:
            h = F.softplus(h, beta=beta, threshold=20.0)
    return h


class NearestNeighbors(NamedTuple):
    """Squared distance ``[B, N]`` and index ``[B, N]`` (int64) of each point's nearest neighbour."""

    sq_dist: Tensor
    idx: Tensor


class Chamfer(NamedTuple):
    """Per-point squared nearest-neighbour distances in both directions."""

    sq_dist_ab: Tensor  # [B, N]: a -> b
    sq_dist_ba: Tensor  # [B, M]: b -> a
    idx_ab: Tensor  # [B, N]
    idx_ba: Tensor  # [B, M]


def _check_clouds(a: Tensor, b: Tensor, lengths_a: Tensor | None, lengths_b: Tensor | None) -> None:
    if a.dim() != 3 or b.dim() != 3 or a.shape[-1] != 3 or b.shape[-1] != 3 or a.shape[0] != b.shape[0]:
        raise ValueError(f"point clouds must be [B, N, 3] and [B, M, 3], got {tuple(a.shape)} and {tuple(b.shape)}")
    for name, lengths in (("lengths_a", lengths_a), ("lengths_b", lengths_b)):
        if lengths is not None and tuple(lengths.shape) != (a.shape[0],):
            raise ValueError(f"{name} must be [B={a.shape[0]}], got {tuple(lengths.shape)}")


@torch.no_grad()
def _nn_index(a: Tensor, b: Tensor, lengths_b: Tensor | None, chunk_elems: int) -> Tensor:
    """argmin over b of ``sum((a_n - b_m)^2)``, computed by direct differences in fp32 chunks."""
    B, N, _ = a.shape
    M = b.shape[1]
    a32, b32 = a.float(), b.float()
    idx = torch.empty(B, N, dtype=torch.long, device=a.device)
    invalid_b = None
    if lengths_b is not None:
        invalid_b = torch.arange(M, device=a.device)[None, :] >= lengths_b[:, None]  # [B, M]
    step = max(1, chunk_elems // max(1, B * M * 3))
    for start in range(0, N, step):
        diff = a32[:, start : start + step, None, :] - b32[:, None, :, :]  # [B, n, M, 3]
        d = (diff * diff).sum(dim=-1)  # [B, n, M]
        if invalid_b is not None:
            d = d.masked_fill(invalid_b[:, None, :], float("inf"))
        idx[:, start : start + step] = d.argmin(dim=-1)
    return idx


def nearest_neighbors(
    a: Tensor,  # [B, N, 3]
    b: Tensor,  # [B, M, 3]
    lengths_a: Tensor | None = None,  # [B] int
    lengths_b: Tensor | None = None,  # [B] int
    *,
    chunk_elems: int = 1 << 24,
) -> NearestNeighbors:
    """For every point of ``a``, the squared distance to and index of its nearest point in ``b``.

    Distances use the direct difference ``sum((a - b)^2)`` in fp32 (never the GEMM expansion
    ``|a|^2 + |b|^2 - 2ab``, which loses precision at small distances). The distance is
    differentiable in both clouds; the index is not. Ties resolve to the lowest index.

    Args:
        a, b: point clouds; padded batches give their valid sizes in ``lengths_a`` / ``lengths_b``.
        lengths_a: valid points per cloud of ``a``; padded entries get distance 0 and index -1.
        lengths_b: valid points per cloud of ``b``; padded points are never chosen.
        chunk_elems: memory bound of the reference (elements of one difference tensor).

    Returns:
        ``NearestNeighbors(sq_dist [B, N] in a's dtype, idx [B, N] int64)``.
    """
    _check_clouds(a, b, lengths_a, lengths_b)
    if b.shape[1] == 0:
        shape = a.shape[:2]
        return NearestNeighbors(a.new_full(shape, float("inf")), torch.full(shape, -1, device=a.device))
    idx = _nn_index(a, b, lengths_b, chunk_elems)
    safe = idx.clamp(min=0)
    nearest = torch.gather(b, 1, safe[..., None].expand(-1, -1, 3))  # [B, N, 3]
    diff = a.float() - nearest.float()
    sq_dist = (diff * diff).sum(dim=-1).to(a.dtype)
    if lengths_a is not None:
        pad = torch.arange(a.shape[1], device=a.device)[None, :] >= lengths_a[:, None]
        sq_dist = sq_dist.masked_fill(pad, 0.0)
        idx = idx.masked_fill(pad, -1)
    if lengths_b is not None:
        empty = (lengths_b == 0)[:, None].expand_as(idx)
        sq_dist = sq_dist.masked_fill(empty, float("inf"))
        idx = idx.masked_fill(empty, -1)
    return NearestNeighbors(sq_dist, idx)


def chamfer_distance(
    a: Tensor,  # [B, N, 3]
    b: Tensor,  # [B, M, 3]
    lengths_a: Tensor | None = None,  # [B]
    lengths_b: Tensor | None = None,  # [B]
) -> Chamfer:
    """Nearest-neighbour squared distances in both directions (a -> b and b -> a).

    Reductions are left to the caller: ZeroShape's protocol takes the square root and averages
    (``zsw.eval.metrics``); a training loss may average the squared distances directly.
    """
    ab = nearest_neighbors(a, b, lengths_a, lengths_b)
    ba = nearest_neighbors(b, a, lengths_b, lengths_a)
    return Chamfer(ab.sq_dist, ba.sq_dist, ab.idx, ba.idx)
