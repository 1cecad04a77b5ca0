"""Nearest neighbours and Chamfer distance between 3D point clouds: a brute-force Triton search.

For clouds ``a [B, N, 3]`` and ``b [B, M, 3]``::

    idx_ab[n] = argmin_m |a_n - b_m|^2          (ties -> lowest m)
    sq_ab[n]  = |a_n - b_idx_ab[n]|^2           (and the same from b to a for Chamfer)

**Search** (``_nn_kernel``): for query points ``q`` and searched points ``r``, the grid is
``(NQ / BLOCK_N, B, SPLITS)``; a program holds BLOCK_N query points in registers and sweeps its
share of ``r`` in BLOCK_M tiles, computing every pair's squared distance by direct differences in
fp32 (never the GEMM expansion ``|a|^2 + |b|^2 - 2ab``, which loses the small distances the F-score
thresholds care about). Nothing is reduced inside the sweep: each element of the ``[BLOCK_N,
BLOCK_M]`` tile keeps its own running minimum and the tile it came from, so a pair costs nine
instructions (three differences, three multiply-adds, a compare and two selects) and no thread
waits on another; the lanes are reduced once at the end. Chamfer runs the search twice, a against
b and b against a. The first version served both directions from one sweep (the column minima of
every tile), with cross-thread reductions and an atomic per column per tile every tile: its loop
compiled to 42-57 instructions a pair, and the H200 measured it at 3.26x chunked ``cdist``, a third
of the 10x target (docs/kernels.md). Results meet in ``int64`` keys
``float_bits(d) << 32 | index``: for ``d >= 0`` the float bits order like the floats, so the smallest
key is the nearest point and, among equal distances, the lowest index. Programs combine them with
``atomic_max`` on ``INT64_MAX - key`` (0 = no candidate yet, so the buffers start zeroed), one per
query point per program: deterministic whatever the order of the programs. Splitting ``r`` over
``SPLITS`` programs fills the GPU even for one pair of 10k-point clouds.

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
    Q,  # [B, 3, NQ] fp32: the points whose nearest neighbours are searched (coordinates as rows)
    R,  # [B, 3, NR] fp32: the points searched
    BEST,  # [B, NQ] int64 scores, zeroed
    LEN_Q,  # [B] int64 (HAS_LEN_Q only)
    LEN_R,
    NQ,
    NR,
    SPLITS,  # programs sharing the points of R of one tile of Q
    SIZE_CLASS,  # autotuning bucket of NQ * NR (not used by the kernel)
    HAS_LEN_Q: tl.constexpr,
    HAS_LEN_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    n_len = NQ
    if HAS_LEN_Q:
        n_len = tl.minimum(tl.load(LEN_Q + b).to(tl.int32), NQ)
    m_len = NR
    if HAS_LEN_R:
        m_len = tl.minimum(tl.load(LEN_R + b).to(tl.int32), NR)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < n_len
    q_row = Q + b * 3 * NQ + offs_n
    qx = tl.load(q_row, mask=n_valid, other=0.0)[:, None]
    qy = tl.load(q_row + NQ, mask=n_valid, other=0.0)[:, None]
    qz = tl.load(q_row + 2 * NQ, mask=n_valid, other=0.0)[:, None]

    # this program's range of R: whole BLOCK_M tiles; nothing to do for a tile of padding only
    per_split = tl.cdiv(tl.cdiv(NR, BLOCK_M), SPLITS) * BLOCK_M
    m_start = split * per_split
    m_end = tl.minimum(m_start + per_split, m_len)
    m_end = tl.where(pid_n * BLOCK_N < n_len, m_end, m_start)

    # Running minima per *element* of the tile: lane j of row i holds the nearest of the points
    # m0 + j seen so far and the tile start m0 it came from. The loop is then 9 instructions a pair
    # (3 differences, 3 multiply-adds, a compare, 2 selects) with nothing crossing threads; the
    # tile's lanes are reduced once, after the sweep. A point of R beyond m_end loads as +inf, so
    # its distance is inf (or NaN), which the strict compare never takes: no mask per pair.
    run_d = tl.full([BLOCK_N, BLOCK_M], float("inf"), dtype=tl.float32)
    run_m = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
    lanes = tl.arange(0, BLOCK_M)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + lanes
        m_valid = offs_m < m_end
        r_row = R + b * 3 * NR + offs_m
        rx = tl.load(r_row, mask=m_valid, other=float("inf"))[None, :]
        ry = tl.load(r_row + NR, mask=m_valid, other=float("inf"))[None, :]
        rz = tl.load(r_row + 2 * NR, mask=m_valid, other=float("inf"))[None, :]
        dx = qx - rx
        dy = qy - ry
        dz = qz - rz
        d = dx * dx + dy * dy + dz * dz  # [BLOCK_N, BLOCK_M]
        better = d < run_d  # strict: an earlier tile (lower index) keeps a tie
        run_d = tl.where(better, d, run_d)
        run_m = tl.where(better, m0, run_m)

    # the nearest over the lanes, and among equally near ones the lowest index
    best_d = tl.min(run_d, axis=1)
    index = tl.where(run_d == best_d[:, None], run_m + lanes[None, :], 0x7FFFFFFF)
    best_i = tl.min(index, axis=1)
    score = _score(best_d, best_i)
    tl.atomic_max(BEST + b * NQ + offs_n, score, mask=n_valid & (best_d < float("inf")))


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------


def _configs() -> list[triton.Config]:
    # A thread holds BLOCK_N * BLOCK_M / (32 * warps) elements of the running minima, two registers
    # each (distance and tile start), its rows' query points, its columns' points of R and a few
    # temporaries: 32 elements a thread compile to 213-223 registers without spills on sm_90 and
    # sm_80 (triton 3.8) and a loop of 9.6 SASS instructions a pair; 64 (128 x 128 per 8 warps)
    # spill ~550 B. docs/kernels.md has the compile tables.
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=1)
        for bn, bm, w in [(64, 64, 4), (128, 64, 8), (64, 128, 8), (32, 128, 4)]
    ]


# the scores accumulate through atomics: the autotuner zeroes them before every trial
_nn_tuned = autotune(_configs(), key=["HAS_LEN_Q", "HAS_LEN_R", "SIZE_CLASS"], reset_to_zero=["BEST"])(_nn_kernel)
_INTERP = {"BLOCK_N": 256, "BLOCK_M": 256}
_MIN_BLOCK_N = 32
_MIN_BLOCK_M = 64


def _splits(B: int, N: int, M: int, device: torch.device) -> int:
    """Programs per tile of the queries: about four waves over the SMs, never more than the
    searched cloud has tiles."""
    tiles = max(1, cdiv(N, _MIN_BLOCK_N)) * B
    return max(1, min(cdiv(M, _MIN_BLOCK_M), cdiv(4 * num_sms(device), tiles)))


# ----------------------------------------------------------------------------------------------
# Launcher (custom op; indices are not differentiable)
# ----------------------------------------------------------------------------------------------


def _unpack(score: Tensor) -> Tensor:  # int64 scores -> int64 indices, -1 where no candidate
    return torch.where(score == 0, -1, (_INT64_MAX - score) & 0xFFFFFFFF)


def _search(q_rows: Tensor, r_rows: Tensor, len_q: Tensor | None, len_r: Tensor | None) -> Tensor:
    """Scores ``[B, NQ]`` of the nearest point of ``r_rows [B, 3, NR]`` for each of ``q_rows [B, 3, NQ]``."""
    B, _, N = q_rows.shape
    M = r_rows.shape[2]
    best = torch.zeros(B, N, dtype=torch.int64, device=q_rows.device)
    if B * N * M == 0:
        return best
    splits = _splits(B, N, M, q_rows.device)
    args = (q_rows, r_rows, best, best if len_q is None else len_q, best if len_r is None else len_r)
    args += (N, M, splits, size_class(N * M))
    meta = dict(HAS_LEN_Q=len_q is not None, HAS_LEN_R=len_r is not None)
    if interpreting():
        _nn_kernel[(cdiv(N, _INTERP["BLOCK_N"]), B, splits)](*args, **meta, **_INTERP)
    else:
        _nn_tuned[lambda META: (cdiv(N, META["BLOCK_N"]), B, splits)](*args, **meta)
    return best


@custom_op("zsw::nn_index")
def nn_index(
    a: Tensor,  # [B, N, 3]
    b: Tensor,  # [B, M, 3]
    lengths_a: Tensor | None,  # [B]
    lengths_b: Tensor | None,  # [B]
    both: bool,
) -> tuple[Tensor, Tensor]:  # idx_ab [B, N], idx_ba [B, M] (or [0] when not both); -1: none
    """Launch the search: index of the nearest point of b for each point of a (and, with ``both``,
    a second search of a for each point of b)."""
    a_rows = a.detach().float().transpose(1, 2).contiguous()  # [B, 3, N]: coalesced loads
    b_rows = b.detach().float().transpose(1, 2).contiguous()
    len_a = lengths_a.to(device=a.device, dtype=torch.int64) if lengths_a is not None else None
    len_b = lengths_b.to(device=a.device, dtype=torch.int64) if lengths_b is not None else None
    idx_ab = _unpack(_search(a_rows, b_rows, len_a, len_b))
    if not both:
        return idx_ab, torch.zeros(0, dtype=torch.int64, device=a.device)
    return idx_ab, _unpack(_search(b_rows, a_rows, len_b, len_a))


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
    """Nearest-neighbour squared distances and indices in both directions (two searches).

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
