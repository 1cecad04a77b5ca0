"""Nearest neighbours and Chamfer distance between 3D point clouds: a brute-force Triton search.

For clouds ``a [B, N, 3]`` and ``b [B, M, 3]``::

    idx_ab[n] = argmin_m |a_n - b_m|^2          (ties -> lowest m)
    sq_ab[n]  = |a_n - b_idx_ab[n]|^2           (and the same from b to a for Chamfer)

**Search** (``_nn_kernel``): the grid is ``(N / BLOCK_N, B, SPLITS)``; a program holds BLOCK_N
points of a in registers and sweeps its share of b in BLOCK_M tiles, computing every pair's squared
distance by direct differences in fp32 (never the GEMM expansion ``|a|^2 + |b|^2 - 2ab``, which
loses the small distances the F-score thresholds care about). The minimum of each tile *row*
updates a running nearest neighbour of a's points; for Chamfer the minimum of each tile *column*
is the nearest point of a for b's points, so **one sweep serves both directions**. Results meet in
``int64`` keys ``float_bits(d) << 32 | index``: for ``d >= 0`` the float bits order like the floats,
so the smallest key is the nearest point and, among equal distances, the lowest index. Programs
combine them with ``atomic_max`` on ``INT64_MAX - key`` (0 = no candidate yet, so the buffers start
zeroed): deterministic whatever the order of the programs. Splitting b over ``SPLITS``
programs fills the GPU even for one pair of 10k-point clouds.

**Distances and gradients**: the kernel returns indices only. The squared distances are then
computed from the chosen pairs by the same differentiable torch expression as the reference
(``((a - b[idx]) ** 2).sum(-1)`` in fp32), so they match it bit for bit, and autograd's gather/scatter
gives the coordinate gradients ``2 (a_n - b_idx) g_n`` (and its negation scattered to ``b``): an
O(N) step next to the O(N M) search, with nothing to gain from a custom kernel.

Padding (``lengths_a``, ``lengths_b``): padded points of a get distance 0 and index -1; padded
points of b are never chosen; a batch element whose other cloud is empty gets ``inf`` and -1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from zsw.kernels._utils import autotune, cdiv, check_dtype, custom_op, interpreting, num_sms, size_class
from zsw.kernels.reference import Chamfer, NearestNeighbors

__all__ = ["nearest_neighbors", "chamfer_distance", "nn_index"]

_INT64_MAX = torch.iinfo(torch.int64).max


# ----------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------


@triton.jit
def _score(d, idx):
    """``INT64_MAX - key`` with the key ordered by (d, idx) for d >= 0: higher is nearer, 0 is none."""
    key = (d.to(tl.int32, bitcast=True).to(tl.int64) << 32) | idx.to(tl.int64)
    return 0x7FFFFFFFFFFFFFFF - key


@triton.jit
def _nn_kernel(
    A,  # [B, 3, N] fp32 (coordinates as rows)
    Bp,  # [B, 3, M] fp32
    BEST_AB,  # [B, N] int64 scores, zeroed
    BEST_BA,  # [B, M] int64 scores, zeroed (BOTH only)
    LEN_A,  # [B] int64 (HAS_LEN_A only)
    LEN_B,
    N,
    M,
    SPLITS,  # programs sharing the points of b of one tile of a
    SIZE_CLASS,  # autotuning bucket of N * M (not used by the kernel)
    HAS_LEN_A: tl.constexpr,
    HAS_LEN_B: tl.constexpr,
    BOTH: tl.constexpr,  # also the nearest point of a for every point of b
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    n_len = N
    if HAS_LEN_A:
        n_len = tl.minimum(tl.load(LEN_A + b).to(tl.int32), N)
    m_len = M
    if HAS_LEN_B:
        m_len = tl.minimum(tl.load(LEN_B + b).to(tl.int32), M)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < n_len
    a_row = A + b * 3 * N + offs_n
    ax = tl.load(a_row, mask=n_valid, other=0.0)
    ay = tl.load(a_row + N, mask=n_valid, other=0.0)
    az = tl.load(a_row + 2 * N, mask=n_valid, other=0.0)

    # this program's range of b: whole BLOCK_M tiles; nothing to do for a tile of padding only
    per_split = tl.cdiv(tl.cdiv(M, BLOCK_M), SPLITS) * BLOCK_M
    m_start = split * per_split
    m_end = tl.minimum(m_start + per_split, m_len)
    m_end = tl.where(pid_n * BLOCK_N < n_len, m_end, m_start)

    best_d = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_i = tl.zeros([BLOCK_N], dtype=tl.int32)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_valid = offs_m < m_end
        b_row = Bp + b * 3 * M + offs_m
        bx = tl.load(b_row, mask=m_valid, other=0.0)
        by = tl.load(b_row + M, mask=m_valid, other=0.0)
        bz = tl.load(b_row + 2 * M, mask=m_valid, other=0.0)
        dx = ax[:, None] - bx[None, :]
        dy = ay[:, None] - by[None, :]
        dz = az[:, None] - bz[None, :]
        d = dx * dx + dy * dy + dz * dz  # [BLOCK_N, BLOCK_M]
        d = tl.where(m_valid[None, :], d, float("inf"))
        tile_d, tile_i = tl.min(d, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_d < best_d  # strict: an earlier tile (lower index) wins a tie
        best_i = tl.where(better, m0 + tile_i, best_i)
        best_d = tl.where(better, tile_d, best_d)
        if BOTH:
            d = tl.where(n_valid[:, None], d, float("inf"))
            col_d, col_i = tl.min(d, axis=0, return_indices=True, return_indices_tie_break_left=True)
            score = _score(col_d, pid_n * BLOCK_N + col_i)
            tl.atomic_max(BEST_BA + b * M + offs_m, score, mask=m_valid & (col_d < float("inf")))
    score = _score(best_d, best_i)
    tl.atomic_max(BEST_AB + b * N + offs_n, score, mask=n_valid & (best_d < float("inf")))


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------


def _configs() -> list[triton.Config]:
    # A thread holds (BLOCK_N / warps) rows of the tile, each with its point of a, running best
    # distance and index, times its share of the columns, plus the index tensors of both
    # minima. Spill-free for both kernels on sm_90 and sm_80 with triton 3.6 (the lent GPU's) and
    # 3.8 (CI's): 64 x 64 per 8 warps (101-176 registers), 128 x 32 per 8 (100-149), 64 x 32 per 4
    # (96-128). 128 x 64 per 8 warps and 64 x 64 per 4 are spill-free with 3.8 but spill 56 B in
    # the two-way search on sm_90 with 3.6; 64 x 128 per 4, 128 x 128 per 8 or 16 and 64 x 256 per
    # 8 spill 0.2-0.6 KB (docs/kernels.md, compile tables). No shared memory to speak of.
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=1)
        for bn, bm, w in [(64, 64, 8), (128, 32, 8), (64, 32, 4)]
    ]


# the scores accumulate through atomics: the autotuner zeroes them before every trial
_nn_tuned = autotune(
    _configs(), key=["HAS_LEN_A", "HAS_LEN_B", "BOTH", "SIZE_CLASS"], reset_to_zero=["BEST_AB", "BEST_BA"]
)(_nn_kernel)
_INTERP = {"BLOCK_N": 256, "BLOCK_M": 256}
_MIN_BLOCK_N = 64
_MIN_BLOCK_M = 64


def _splits(B: int, N: int, M: int, device: torch.device) -> int:
    """Programs per tile of a: about four waves over the SMs, never more than b has tiles."""
    tiles_a = max(1, cdiv(N, _MIN_BLOCK_N)) * B
    return max(1, min(cdiv(M, _MIN_BLOCK_M), cdiv(4 * num_sms(device), tiles_a)))


# ----------------------------------------------------------------------------------------------
# Launcher (custom op; indices are not differentiable)
# ----------------------------------------------------------------------------------------------


def _unpack(score: Tensor) -> Tensor:  # int64 scores -> int64 indices, -1 where no candidate
    return torch.where(score == 0, -1, (_INT64_MAX - score) & 0xFFFFFFFF)


@custom_op("zsw::nn_index")
def nn_index(
    a: Tensor,  # [B, N, 3]
    b: Tensor,  # [B, M, 3]
    lengths_a: Tensor | None,  # [B]
    lengths_b: Tensor | None,  # [B]
    both: bool,
) -> tuple[Tensor, Tensor]:  # idx_ab [B, N], idx_ba [B, M] (or [0] when not both); -1: none
    """Launch the search: index of the nearest point of b for each point of a (and of a for b)."""
    B, N, _ = a.shape
    M = b.shape[1]
    best_ab = torch.zeros(B, N, dtype=torch.int64, device=a.device)
    best_ba = torch.zeros((B, M) if both else (0,), dtype=torch.int64, device=a.device)
    if B * N * M > 0:
        a_rows = a.detach().float().transpose(1, 2).contiguous()  # [B, 3, N]: coalesced loads
        b_rows = b.detach().float().transpose(1, 2).contiguous()
        len_a = lengths_a.to(device=a.device, dtype=torch.int64) if lengths_a is not None else best_ab
        len_b = lengths_b.to(device=a.device, dtype=torch.int64) if lengths_b is not None else best_ab
        splits = _splits(B, N, M, a.device)
        args = (a_rows, b_rows, best_ab, best_ba, len_a, len_b, N, M, splits, size_class(N * M))
        meta = dict(HAS_LEN_A=lengths_a is not None, HAS_LEN_B=lengths_b is not None, BOTH=both)
        if interpreting():
            _nn_kernel[(cdiv(N, _INTERP["BLOCK_N"]), B, splits)](*args, **meta, **_INTERP)
        else:
            _nn_tuned[lambda META: (cdiv(N, META["BLOCK_N"]), B, splits)](*args, **meta)
    return _unpack(best_ab), _unpack(best_ba)


@nn_index.register_fake
def _(a, b, lengths_a, lengths_b, both):
    B, N, _ = a.shape
    M = b.shape[1]
    return a.new_empty(B, N, dtype=torch.int64), a.new_empty((B, M) if both else (0,), dtype=torch.int64)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------


def _check(a: Tensor, b: Tensor, lengths_a: Tensor | None, lengths_b: Tensor | None) -> None:
    if a.dim() != 3 or b.dim() != 3 or a.shape[-1] != 3 or b.shape[-1] != 3 or a.shape[0] != b.shape[0]:
        raise ValueError(f"point clouds must be [B, N, 3] and [B, M, 3], got {tuple(a.shape)} and {tuple(b.shape)}")
    for name, lengths in (("lengths_a", lengths_a), ("lengths_b", lengths_b)):
        if lengths is not None and tuple(lengths.shape) != (a.shape[0],):
            raise ValueError(f"{name} must be [B={a.shape[0]}], got {tuple(lengths.shape)}")
    check_dtype("nearest_neighbors", a, b)


def _finish(
    a: Tensor,  # [B, N, 3]
    b: Tensor,  # [B, M, 3]
    idx: Tensor,  # [B, N] int64, -1 where b had no candidate
    lengths_a: Tensor | None,
    lengths_b: Tensor | None,
) -> NearestNeighbors:
    """Distances of the chosen pairs (differentiable, as the reference) and the padding rules."""
    if b.shape[1] == 0:
        shape = a.shape[:2]
        return NearestNeighbors(a.new_full(shape, float("inf")), torch.full(shape, -1, device=a.device))
    nearest = torch.gather(b, 1, idx.clamp(min=0)[..., None].expand(-1, -1, 3))  # [B, N, 3]
    diff = a.float() - nearest.float()
    sq_dist = (diff * diff).sum(dim=-1).to(a.dtype)
    if lengths_a is not None:
        pad = torch.arange(a.shape[1], device=a.device)[None, :] >= lengths_a.to(a.device)[:, None]
        sq_dist = sq_dist.masked_fill(pad, 0.0)
        idx = idx.masked_fill(pad, -1)
    if lengths_b is not None:
        empty = (lengths_b.to(a.device) == 0)[:, None].expand_as(idx)
        sq_dist = sq_dist.masked_fill(empty, float("inf"))
        idx = idx.masked_fill(empty, -1)
    return NearestNeighbors(sq_dist, idx)


def nearest_neighbors(
    a: Tensor,  # [B, N, 3]
    b: Tensor,  # [B, M, 3]
    lengths_a: Tensor | None = None,  # [B] int
    lengths_b: Tensor | None = None,  # [B] int
) -> NearestNeighbors:
    """For every point of ``a``, the squared distance to and the index of its nearest point in ``b``.

    Same semantics as :func:`zsw.kernels.reference.nearest_neighbors`, and the same distances bit
    for bit: the search runs in Triton (fp32 direct differences, ties to the lowest index), the
    distance of the chosen pair is then computed in torch, differentiably in both clouds.

    Args:
        a, b: point clouds (fp32, fp16 or bf16; the search is fp32).
        lengths_a: valid points per cloud of ``a``; padded entries get distance 0 and index -1.
        lengths_b: valid points per cloud of ``b``; padded points are never chosen; an empty
            cloud gives distance ``inf`` and index -1.

    Returns:
        ``NearestNeighbors(sq_dist [B, N] in a's dtype, idx [B, N] int64)``.

    Example::

        a, b = torch.rand(2, 1, 10_000, 3, device="cuda").unbind(0)
        d, i = nearest_neighbors(a, b)   # accuracy = d.sqrt().mean()
    """
    _check(a, b, lengths_a, lengths_b)
    idx, _ = nn_index(a.detach(), b.detach(), lengths_a, lengths_b, False)
    return _finish(a, b, idx, lengths_a, lengths_b)


def chamfer_distance(
    a: Tensor,  # [B, N, 3]
    b: Tensor,  # [B, M, 3]
    lengths_a: Tensor | None = None,  # [B]
    lengths_b: Tensor | None = None,  # [B]
) -> Chamfer:
    """Nearest-neighbour squared distances and indices in both directions, from one sweep.

    Same semantics as :func:`zsw.kernels.reference.chamfer_distance`; reductions (square root,
    means, F-score) are left to the caller. Differentiable in the coordinates of both clouds.

    Returns:
        ``Chamfer(sq_dist_ab [B, N], sq_dist_ba [B, M], idx_ab [B, N], idx_ba [B, M])``.
    """
    _check(a, b, lengths_a, lengths_b)
    idx_ab, idx_ba = nn_index(a.detach(), b.detach(), lengths_a, lengths_b, True)
    ab = _finish(a, b, idx_ab, lengths_a, lengths_b)
    ba = _finish(b, a, idx_ba, lengths_b, lengths_a)
    return Chamfer(ab.sq_dist, ba.sq_dist, ab.idx, ba.idx)
