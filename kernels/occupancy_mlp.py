"""Occupancy MLP: ZeroShape's Softplus skip-MLP, all layers in one kernel per tile of points.

Math (``s = 1/sqrt(2)``, Softplus exactly as ``torch.nn.functional.softplus(z, beta, threshold=20)``)::

    h = x                                                      # x [M, C_in], e.g. cat(xyz, feature)
    for l in range(NL):
        if l in skip_in: h = cat(h, x) * s                     # skip layers read the input again
        z = h @ W_l^T + b_l
        h = softplus_beta(z) if l < NL - 1 else z               # softplus(z) = z if beta*z > 20
    y = h                                                      #            else log1p(exp(beta*z)) / beta

Decoder shapes: C_in = 259, 8 hidden layers of width W = 256 (skips at 2, 4, 6 take 515 inputs),
C_out = 1. Any C_in, W, C_out, number of layers and skip set (not layer 0) work.

**Weights** are packed per call into one tensor ``[NL, R, W + C_in]`` (R = max(W, C_out)): columns
``[0, W)`` multiply the previous activation, columns ``[W, W + C_in)`` the input x (layer 0 and the
skip layers). The packing is differentiable torch code, so gradients reach the original weights.

**Forward** (``_occ_mlp_fwd_kernel``): a persistent grid; per tile of BLOCK_M points, each layer is
computed BLOCK_N output columns at a time, each a K-loop ``acc[BLOCK_M, BLOCK_N] += A[:, k] @ W_l[n, k]^T``
over the previous activation and, for layer 0 and skips, over x (so the concat is never built and
``* s`` is one multiply of the fp32 accumulator), then bias and Softplus in registers. Weights
stream from L2 in BLOCK_K slices (tensor cores for fp16/bf16, software-pipelined). The hidden
layers are a loop, not unrolled. Between layers the activation tile round-trips through two
per-program scratch tiles used in turn (layer l writes one while it reads the other), which stay
in L2; with ``SAVE`` (training) it is written to ``[NL-1, M, W]`` instead, the activations the
backward needs.

**Backward** ("stored" mode, the default): with ``dz_l = dL/dz_l``, ``dz_{NL-1} = dy`` and the
Softplus derivative written in terms of its *output*, ``sigmoid(beta z) = 1 - exp(-beta h)``
(exact, including the linear region where it is 1)::

    dz_l   = (dz_{l+1} @ W_{l+1}[:, :W]) * (s if l+1 is a skip else 1) * (1 - exp(-beta h_l))
    dW_l   = s_l dz_l^T @ [h_{l-1}, x],    db_l = sum_m dz_l,    dx = sum_{l reads x} s_l dz_l @ W_l[:, W:]

The chain ``dz`` (``_occ_mlp_bwd_kernel``, same structure as the forward, layers in reverse) is
fused in Triton; the weight gradients are reductions over all points, i.e. large GEMMs, and go to
cuBLAS (batched over the hidden layers). "recompute" mode stores nothing in the forward and reruns
it (with ``SAVE``) in the backward: one more fused forward for ``(NL-1) * M * W`` elements less
memory between forward and backward. ``zsw bench kernels`` times both; see docs/kernels.md.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from zsw.kernels._utils import (
    autotune,
    cast,
    check_dtype,
    compute_dtype,
    custom_op,
    device_capability,
    dot,
    dot_acc,
    dot_precision,
    fits_shared_memory,
    interp_bf16,
    interpreting,
    measured_choice,
    next_pow2,
    persistent_programs,
    size_class,
)

__all__ = ["occupancy_mlp", "occ_mlp_fwd", "occ_mlp_bwd", "pack_weights", "forward_variant", "onchip_applies"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _softplus(z, beta, inv_beta, FAST: tl.constexpr):
    """torch's Softplus, z where beta*z > 20, else log1p(exp(beta*z)) / beta, computed as
    ``(max(t, 0) + log1p(exp(-|t|))) / beta`` with ``t = beta*z`` (fp32), so that the exponential
    and the logarithm only ever see (0, 1] and (1, 2]. log1p(e) without cancellation: ``log(u) *
    e / (u - 1)`` with ``u = 1 + e`` (Goldberg), and e itself where u rounds to 1.

    ``FAST`` (16-bit outputs, compiled): the logarithm and the division by the special-function
    unit's approximations (``lg2.approx``, ``rcp.approx``) instead of the precise library calls,
    whose range handling these operands never need: about 27 SASS instructions an element on
    sm_90 instead of the 56 of the first version (``log1p(exp(t)) / beta``, precise), which ran
    once per hidden activation, 4.4 billion times on a 129^3 grid. The log's absolute error (~1e-7
    on (1, 2]) is far below a bf16 or fp16 output's rounding."""
    t = z * beta
    e = tl.exp(-tl.abs(t))  # (0, 1]
    u = 1.0 + e
    d = u - 1.0  # exact
    tiny = d == 0.0
    d = tl.where(tiny, 1.0, d)
    if FAST:
        lp = libdevice.fast_logf(u) * libdevice.fast_dividef(e, d)
    else:
        lp = tl.log(u) * (e / d)
    lp = tl.where(tiny, e, lp)
    return tl.where(t > 20.0, z, (tl.maximum(t, 0.0) + lp) * inv_beta)


@triton.jit
def _softplus_grad_from_output(h, beta):
    """d softplus / dz = sigmoid(beta z) = 1 - exp(-beta h), from the output h = softplus(z)."""
    t = h * beta
    series = t * (1.0 - t * (0.5 - t * (1.0 / 6.0 - t * (1.0 / 24.0))))  # -expm1(-t), t < 1e-2
    return tl.where(t < 1e-2, series, 1.0 - tl.exp(-t))


@triton.jit
def _acc_matmul(
    acc, A, stride_am, rows, row_valid, K,  # A [rows, :K]
    B, stride_bk, stride_bn, offs_n, n_valid,  # B [:K, offs_n]
    BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """``acc[BM, BN] += A[rows, :K] @ B[:K, offs_n]`` in BLOCK_K slices; ``B[k, n]`` is at
    ``B + k * stride_bk + n * stride_bn`` (a weight slot read as ``W^T`` or as ``W``).

    ``EVEN_K`` (K a multiple of BLOCK_K) and ``EVEN_N`` (no masked column) drop those masks: a mask
    is a predicate per loaded element, and in the pipelined loops they cost registers."""
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        a_ptr = A + rows[:, None] * stride_am + k[None, :]
        b_ptr = B + k[:, None] * stride_bk + offs_n[None, :] * stride_bn
        if EVEN_K:
            a = tl.load(a_ptr, mask=row_valid[:, None], other=0.0)
            if EVEN_N:
                b = tl.load(b_ptr)
            else:
                b = tl.load(b_ptr, mask=n_valid[None, :], other=0.0)
        else:
            k_valid = k < K
            a = tl.load(a_ptr, mask=row_valid[:, None] & k_valid[None, :], other=0.0)
            b = tl.load(b_ptr, mask=k_valid[:, None] & n_valid[None, :], other=0.0)
        acc += dot(a, b, INTERP_BF16, PRECISION)
    return acc


@triton.jit
def _fwd_hidden_layer(
    X, stride_xm, rows, m_valid, C_IN,  # the input x (rows of this tile)
    H_IN, H_OUT, stride_hm, h_rows, W: tl.constexpr,  # previous activation (read) and this layer's (written)
    w_slot, stride_wr, b_row, beta, inv_beta,
    reads_x, scale,  # whether the layer reads x, and 1/sqrt(2) for the skips (else 1)
    READS_H: tl.constexpr,  # False for layer 0, which reads x only
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
):  # fmt: skip
    """``H_OUT = softplus(scale * ([H_IN, x] @ W_l^T) + b_l)`` for one tile, BLOCK_N output columns at
    a time: the fp32 accumulator is [BLOCK_M, BLOCK_N], never the whole [BLOCK_M, W] row."""
    for n0 in range(0, W, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_valid = offs_n < W
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if READS_H:
            acc = _acc_matmul(
                acc, H_IN, stride_hm, h_rows, m_valid, W,
                w_slot, 1, stride_wr, offs_n, n_valid,
                BLOCK_K, W % BLOCK_K == 0, W % BLOCK_N == 0, INTERP_BF16, PRECISION,
            )  # fmt: skip
        if reads_x:
            acc = _acc_matmul(
                acc, X, stride_xm, rows, m_valid, C_IN,
                w_slot + W, 1, stride_wr, offs_n, n_valid,
                BLOCK_K, False, False, INTERP_BF16, PRECISION,
            )  # fmt: skip
        acc = acc * scale  # cat(h, x) / sqrt(2), applied to the product
        acc += tl.load(b_row + offs_n, mask=n_valid, other=0.0).to(tl.float32)[None, :]
        h = _softplus(acc, beta, inv_beta, FAST_MATH)
        h_off = h_rows[:, None] * stride_hm + offs_n[None, :]
        tl.store(H_OUT + h_off, cast(h, H_OUT.dtype.element_ty, INTERP_BF16), mask=m_valid[:, None] & n_valid[None, :])


@triton.jit
def _occ_mlp_fwd_kernel(
    X, Wp, Bp, Y, Hs,
    M, C_IN, W: tl.constexpr, C_OUT,
    stride_xm, stride_ym, stride_wl, stride_wr, stride_bl,
    stride_hl, stride_hm,  # Hs: [NL-1, M, W] (SAVE) or the ping-pong scratch [2, programs * BLOCK_M, W]
    beta,
    SIZE_CLASS,  # autotuning bucket of M (not used by the kernel)
    NUM_LAYERS: tl.constexpr,
    X_LAYERS: tl.constexpr,  # bit l set: layer l reads x (layer 0 and the skips)
    SAVE: tl.constexpr,  # write every hidden activation to Hs[l, m] (training) instead of scratch
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, OUT_PAD: tl.constexpr,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
    FAST_MATH: tl.constexpr,  # the Softplus on the special-function unit's approximations (16-bit outputs)
):  # fmt: skip
    pid = tl.program_id(0)
    num_progs = tl.num_programs(0)
    inv_beta = 1.0 / beta
    offs_o = tl.arange(0, OUT_PAD)
    o_valid = offs_o < C_OUT
    num_tiles = tl.cdiv(M, BLOCK_M)
    for tile in range(pid, num_tiles, num_progs):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        m_valid = offs_m < M
        rows = offs_m.to(tl.int64)
        if SAVE:
            h_rows = rows
        else:
            h_rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        # The hidden layers: layer 0 reads x only, the others a loop (not unrolled: nine copies of
        # the K loops made ptxas take minutes). Without SAVE, layer l writes scratch buffer l % 2
        # while it reads the other one, so one barrier per layer orders all reads and writes.
        if NUM_LAYERS > 1:
            _fwd_hidden_layer(
                X, stride_xm, rows, m_valid, C_IN,
                Hs, Hs, stride_hm, h_rows, W,
                Wp, stride_wr, Bp, beta, inv_beta, True, 1.0, False,
                BLOCK_M, BLOCK_N, BLOCK_K, INTERP_BF16, PRECISION, FAST_MATH,
            )  # fmt: skip
            tl.debug_barrier()
        for l in range(1, NUM_LAYERS - 1):
            h_in = Hs + ((l - 1) if SAVE else ((l - 1) % 2)) * stride_hl
            h_out = Hs + (l if SAVE else (l % 2)) * stride_hl
            reads_x = ((X_LAYERS >> l) & 1) != 0
            _fwd_hidden_layer(
                X, stride_xm, rows, m_valid, C_IN,
                h_in, h_out, stride_hm, h_rows, W,
                Wp + l * stride_wl, stride_wr, Bp + l * stride_bl, beta, inv_beta,
                reads_x, tl.where(reads_x, 0.7071067811865476, 1.0), True,
                BLOCK_M, BLOCK_N, BLOCK_K, INTERP_BF16, PRECISION, FAST_MATH,
            )  # fmt: skip
            tl.debug_barrier()
        # the output layer: C_OUT (1 in the model) columns, no Softplus
        last = NUM_LAYERS - 1
        acc = tl.zeros([BLOCK_M, OUT_PAD], dtype=tl.float32)
        w_slot = Wp + last * stride_wl
        if last > 0:
            h_in = Hs + ((last - 1) if SAVE else ((last - 1) % 2)) * stride_hl
            acc = _acc_matmul(
                acc, h_in, stride_hm, h_rows, m_valid, W,
                w_slot, 1, stride_wr, offs_o, o_valid,
                BLOCK_K, W % BLOCK_K == 0, False, INTERP_BF16, PRECISION,
            )  # fmt: skip
        if (X_LAYERS >> last) & 1:
            acc = _acc_matmul(
                acc, X, stride_xm, rows, m_valid, C_IN,
                w_slot + W, 1, stride_wr, offs_o, o_valid,
                BLOCK_K, False, False, INTERP_BF16, PRECISION,
            )  # fmt: skip
            if last > 0:
                acc = acc * 0.7071067811865476
        acc += tl.load(Bp + last * stride_bl + offs_o, mask=o_valid, other=0.0).to(tl.float32)[None, :]
        y_off = rows[:, None] * stride_ym + offs_o[None, :]
        tl.store(Y + y_off, cast(acc, Y.dtype.element_ty, INTERP_BF16), mask=m_valid[:, None] & o_valid[None, :])
        tl.debug_barrier()  # the next tile overwrites the scratch this one has just read


@triton.jit
def _occ_mlp_bwd_kernel(
    DY, Wp, Hs, DZ,
    M, W: tl.constexpr, C_OUT,
    stride_dym, stride_wl, stride_wr,
    stride_hl, stride_hm,  # Hs and DZ: [NL-1, M, W] alike
    beta,
    SIZE_CLASS,  # autotuning bucket of M (not used by the kernel)
    NUM_LAYERS: tl.constexpr, X_LAYERS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_progs = tl.num_programs(0)
    num_tiles = tl.cdiv(M, BLOCK_M)
    for tile in range(pid, num_tiles, num_progs):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        m_valid = offs_m < M
        rows = offs_m.to(tl.int64)
        # a loop over the layers, not unrolled (see the forward); dz_l from dz_{l+1}, last first
        for i in range(NUM_LAYERS - 1):
            l = NUM_LAYERS - 2 - i
            # dz_{l+1} @ W_{l+1}[:, :W]: the weight slot read as it is stored, [rows of W_{l+1}, W]
            w_slot = Wp + (l + 1) * stride_wl
            scale = tl.where(((X_LAYERS >> (l + 1)) & 1) != 0, 0.7071067811865476, 1.0)
            for n0 in range(0, W, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                n_valid = offs_n < W
                acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
                if l + 1 == NUM_LAYERS - 1:
                    acc = _acc_matmul(
                        acc, DY, stride_dym, rows, m_valid, C_OUT,
                        w_slot, stride_wr, 1, offs_n, n_valid,
                        BLOCK_K, False, False, INTERP_BF16, PRECISION,
                    )  # fmt: skip
                else:
                    acc = _acc_matmul(
                        acc, DZ + (l + 1) * stride_hl, stride_hm, rows, m_valid, W,
                        w_slot, stride_wr, 1, offs_n, n_valid,
                        BLOCK_K, W % BLOCK_K == 0, W % BLOCK_N == 0, INTERP_BF16, PRECISION,
                    )  # fmt: skip
                hw_off = l * stride_hl + rows[:, None] * stride_hm + offs_n[None, :]
                hw_mask = m_valid[:, None] & n_valid[None, :]
                h = tl.load(Hs + hw_off, mask=hw_mask, other=0.0).to(tl.float32)
                dz = acc * scale * _softplus_grad_from_output(h, beta)
                tl.store(DZ + hw_off, cast(dz, DZ.dtype.element_ty, INTERP_BF16), mask=hw_mask)
            tl.debug_barrier()  # the next layer reads this tile of dz


# ----------------------------------------------------------------------------------------------
# Forward with the activations on chip (Hopper and newer: TMA descriptors)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _quarters(h, BLOCK_M: tl.constexpr, W: tl.constexpr):
    """The four ``[BLOCK_M, W / 4]`` column blocks of ``h [BLOCK_M, W]``, in order (a reshape and
    split of the register tile: the K slices of the next layer's product)."""
    a, b = h.reshape([BLOCK_M, 2, W // 2]).permute(0, 2, 1).split()
    a0, a1 = a.reshape([BLOCK_M, 2, W // 4]).permute(0, 2, 1).split()
    b0, b1 = b.reshape([BLOCK_M, 2, W // 4]).permute(0, 2, 1).split()
    return a0, a1, b0, b1


@triton.jit
def _x_product(acc, x_desc, row0, wt_desc, base, KX: tl.constexpr, BK: tl.constexpr, INTERP_BF16: tl.constexpr):
    """``acc + x[rows] @ Wx^T``: the input's K slices and the slot's x rows, both through TMA
    (columns past C_in and rows past M read as zeros)."""
    for kc in tl.static_range(KX):
        acc = dot_acc(x_desc.load([row0, kc * BK]), wt_desc.load([base + kc * BK, 0]), acc, INTERP_BF16)
    return acc


@triton.jit
def _occ_mlp_fwd_onchip_kernel(
    x_desc,  # x [M, C_in], 16-byte aligned rows; blocks [BLOCK_M, W / 4]
    wt_desc,  # [(NL - 1) * SLOT, W]: layer l's W_l^T, rows [0, W) for h, [W, W + C_in) for x; blocks [W / 4, W]
    WL,  # [W, OUT_PAD]: the output layer's W^T (zero columns past C_out)
    Bp,  # [NL, W] fp32 biases (the output layer's in its first C_out entries)
    Y,  # [M, C_out]
    M, C_OUT, stride_ym, beta,
    SIZE_CLASS,  # autotuning bucket of M (not used by the kernel)
    NUM_LAYERS: tl.constexpr, X_LAYERS: tl.constexpr, W: tl.constexpr,
    KX: tl.constexpr,  # K slices of x: cdiv(C_in, W / 4)
    OUT_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
    INTERP_BF16: tl.constexpr, FAST_MATH: tl.constexpr,
):  # fmt: skip
    BK: tl.constexpr = W // 4
    SLOT: tl.constexpr = W + KX * BK
    dtype = Y.dtype.element_ty
    pid = tl.program_id(0)
    num_progs = tl.num_programs(0)
    inv_beta = 1.0 / beta
    offs_w = tl.arange(0, W)
    offs_o = tl.arange(0, OUT_PAD)
    num_tiles = tl.cdiv(M, BLOCK_M)
    for tile in range(pid, num_tiles, num_progs):
        row0 = tile * BLOCK_M
        # layer 0 reads x only: its slot's x rows
        acc = tl.zeros([BLOCK_M, W], dtype=tl.float32)
        acc = _x_product(acc, x_desc, row0, wt_desc, W, KX, BK, INTERP_BF16)
        acc += tl.load(Bp + offs_w)[None, :]
        h = cast(_softplus(acc, beta, inv_beta, FAST_MATH), dtype, INTERP_BF16)
        # the hidden layers: h never leaves the SM; the weights stream in by TMA, W / 4 rows at a time
        for l in range(1, NUM_LAYERS - 1):
            base = l * SLOT
            h0, h1, h2, h3 = _quarters(h, BLOCK_M, W)
            acc = tl.zeros([BLOCK_M, W], dtype=tl.float32)
            acc = dot_acc(h0, wt_desc.load([base, 0]), acc, INTERP_BF16)
            acc = dot_acc(h1, wt_desc.load([base + BK, 0]), acc, INTERP_BF16)
            acc = dot_acc(h2, wt_desc.load([base + 2 * BK, 0]), acc, INTERP_BF16)
            acc = dot_acc(h3, wt_desc.load([base + 3 * BK, 0]), acc, INTERP_BF16)
            if ((X_LAYERS >> l) & 1) != 0:  # a skip: cat(h, x) / sqrt(2), applied to the product
                acc = _x_product(acc, x_desc, row0, wt_desc, base + W, KX, BK, INTERP_BF16) * 0.7071067811865476
            acc += tl.load(Bp + l * W + offs_w)[None, :]
            h = cast(_softplus(acc, beta, inv_beta, FAST_MATH), dtype, INTERP_BF16)
        # the output layer: C_out (1 in the model) columns, no Softplus
        out = tl.zeros([BLOCK_M, OUT_PAD], dtype=tl.float32)
        out = dot_acc(h, tl.load(WL + offs_w[:, None] * OUT_PAD + offs_o[None, :]), out, INTERP_BF16)
        out += tl.load(Bp + (NUM_LAYERS - 1) * W + offs_o, mask=offs_o < C_OUT, other=0.0)[None, :]
        rows = (row0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        y_mask = (rows < M)[:, None] & (offs_o < C_OUT)[None, :]
        tl.store(Y + rows[:, None] * stride_ym + offs_o[None, :], cast(out, dtype, INTERP_BF16), mask=y_mask)


# ----------------------------------------------------------------------------------------------
# Launch configurations
# ----------------------------------------------------------------------------------------------


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, oldest target) per kernel and operand family: a row is
# tried on devices of compute capability >= its last entry (80: both targets, 90: Hopper only). Every
# row is spill-free on each target it is kept for (the compile table in docs/kernels.md; registers on
# sm_90 / sm_80 from compile_check with triton 3.8 -- the H200 run had 3.6, whose counts may differ --
# bf16, at the model's shapes W = 256, C_in = 259). Each layer's output
# is computed BLOCK_N columns at a time, so the fp32 accumulator is BLOCK_M * BLOCK_N / (32 * warps)
# registers a thread; what fills the rest of the 255 is the software pipeline (a 64-bit pointer and a
# predicate per loaded element and stage), which is why there are 8 warps and no 4-warp config. Every
# 16-bit tile has >= 64 rows (one wgmma warpgroup tile).
#
# Forward, 16-bit (the 129^3 grid's kernel): 128x64x64 s3 240 regs (sm_90 only: 128-row tiles spill on
# sm_80, where mma.sync holds the A tile in registers too), 64x64x64 s3 230 / 255. BLOCK_N = 128 at 64
# rows, 8 warps: 64x128x64 s3 and s4 254 regs, 0 spills on sm_90 (the layer input is re-read W / 128 = 2
# times instead of 4), but 36-180 B spills on sm_80 (s2-s3; 64x128x32 s3 12 B): sm_90 only. Tried and
# rejected (spills on sm_90): BLOCK_N = 256 = W, one accumulator per row (64x256 with BLOCK_K 16/32/64,
# 2-3 stages: 108-720 B with 8 warps, 5.4 KB with 4), 64x128x64 with 4 warps (300 B), 128x128 (K 32
# s3: 4 B, K 64 s2: 72 B). 64x128x32 s4 (192 regs, spill-free) is left out only so that a 100 KB device
# keeps a single 64-row config (its ~80 KB estimate fits there; see test_compile.py).
# A wider-N path that keeps the whole [BLOCK_M, W] activation on chip between layers would add its bf16
# copy (another 32 registers a thread at 64 x 256 and 8 warps) to that already spilling 64x256 tile:
# not feasible in this kernel's structure (pointer-tensor loads), so not attempted.
#
# Backward, 16-bit (the dz chain: no Softplus, no x, far fewer live registers): 128x64x64 s3 179 regs
# (sm_90), 64x64x64 s3 73 / 128, and BLOCK_N = 256 = W (dz_{l+1} read once per layer, not four times):
# 64x256x64 s3 237 regs on sm_90 (its ~184 KB estimate exceeds sm_80's 163 KB: pruned there),
# 64x256x32 s3 236 / 236 regs, all spill-free.
_FAMILIES = {
    "16bit": [(128, 64, 64, 8, 3, 90), (64, 64, 64, 8, 3, 80), (64, 128, 64, 8, 3, 90), (64, 128, 64, 8, 4, 90)],
    # 64 x 128 with three stages spills 4 B on sm_80 with triton 3.6 (the lent GPU's); two do not
    "tf32": [(64, 64, 32, 8, 3, 80), (64, 128, 16, 8, 2, 80)],
    # IEEE fp32 dots are FMA loops with their operands in registers: small tiles, no pipelining
    "ieee": [(32, 64, 32, 4, 1, 80)],
}
# the backward's own rows where they differ from the forward's
_BWD_FAMILIES = {
    **_FAMILIES,
    "16bit": [(128, 64, 64, 8, 3, 90), (64, 64, 64, 8, 3, 80), (64, 256, 64, 8, 3, 80), (64, 256, 32, 8, 3, 80)],
}


def _family_configs(families: dict) -> dict[str, list[triton.Config]]:
    return {
        name: [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s, _ in rows
        ]
        for name, rows in families.items()
    }


_FAMILY_CONFIGS = {"fwd": _family_configs(_FAMILIES), "bwd": _family_configs(_BWD_FAMILIES)}
# the oldest compute capability each (kernel, family, config) is tried on
_MIN_ARCH = {
    (kind, name, config): row[5]
    for kind, families in (("fwd", _FAMILIES), ("bwd", _BWD_FAMILIES))
    for name, rows in families.items()
    for config, row in zip(_FAMILY_CONFIGS[kind][name], rows)
}


def _configs(kind: str = "fwd") -> list[triton.Config]:
    return [c for configs in _FAMILY_CONFIGS[kind].values() for c in configs]


def _family(dtype: torch.dtype, precision: str) -> str:
    if dtype != torch.float32:
        return "16bit"
    return "ieee" if precision == "ieee" else "tf32"


def _shared_bytes(config: triton.Config, itemsize: int) -> int:
    """Upper estimate of a config's shared memory: the pipelined A and B slices of every stage,
    plus an fp32 [BLOCK_M, BLOCK_N] tile for the accumulator's layout conversion."""
    bm, bn, bk = (config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return config.num_stages * (bm * bk + bk * bn) * itemsize + bm * bn * 4


def _prune(configs, named_args, kind="fwd", **kwargs):
    # the configs of the kernel ("fwd" or "bwd") and operand family meant for the device's
    # architecture, without column blocks wider than the layer needs, then those that fit the
    # device's shared memory
    wp = named_args["Wp"]
    name = _family(wp.dtype, kwargs["PRECISION"])
    family = _FAMILY_CONFIGS[kind][name]
    kept = [c for c in configs if c in family]
    arch = device_capability(wp.device)
    kept = [c for c in kept if _MIN_ARCH[kind, name, c] <= arch] or kept
    width = named_args.get("W")
    if isinstance(width, int) and width > 0:
        # e.g. the tiny model's W = 64: a 256-column block would compute 192 masked columns
        kept = [c for c in kept if c.kwargs["BLOCK_N"] <= max(64, next_pow2(width))] or kept
    return fits_shared_memory(kept, wp.device, lambda c: _shared_bytes(c, wp.element_size()))


_KEY = ["W", "C_IN", "C_OUT", "NUM_LAYERS", "X_LAYERS", "SIZE_CLASS", "PRECISION"]
_fwd_tuned = autotune(_configs("fwd"), key=[*_KEY, "SAVE"], prune_configs_by={"early_config_prune": _prune})(
    _occ_mlp_fwd_kernel
)
_bwd_tuned = autotune(
    _configs("bwd"), key=_KEY, prune_configs_by={"early_config_prune": functools.partial(_prune, kind="bwd")}
)(_occ_mlp_bwd_kernel)
# Under the interpreter the cost is per operation: large tiles (K slices still narrower than 259,
# so that the K loops of the real model run several iterations with a masked tail, and column
# blocks narrower than its width 256, so that the column loop runs twice).
_INTERP = {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128}


# The on-chip forward (Hopper and newer, 16-bit): (BLOCK_M, warps). The fp32 accumulator is the
# whole [BLOCK_M, W] row block and h its 16-bit copy: at W = 256, 128 rows on 8 warps (one 64-row
# wgmma per warpgroup) compile to 241 registers without spills on sm_90 (triton 3.8); 64 rows spill
# 36 B on 4 warps and ~160 B on 8. No software pipelining: the weights come by TMA, W / 4 rows a
# product.
_ONCHIP_ROWS = [(128, 8)]


def _onchip_block_shapes(nargs: dict) -> None:
    """The x descriptor's block follows the config's BLOCK_M (autotuning pre-hook)."""
    nargs["x_desc"].block_shape = [nargs["BLOCK_M"], nargs["W"] // 4]


def _onchip_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=1, pre_hook=_onchip_block_shapes)
        for bm, w in _ONCHIP_ROWS
    ]


_onchip_tuned = autotune(_onchip_configs(), key=["W", "KX", "NUM_LAYERS", "X_LAYERS", "SIZE_CLASS"])(
    _occ_mlp_fwd_onchip_kernel
)
_INTERP_ONCHIP = {"BLOCK_M": 64}


def _programs(M: int, device: torch.device) -> int:
    return persistent_programs(triton.cdiv(M, 64), 1, device, per_sm=2)


# ----------------------------------------------------------------------------------------------
# The on-chip forward: when it runs, and its launcher
# ----------------------------------------------------------------------------------------------

#: which forward inference runs: "auto" (on-chip where it applies and measured faster on this
#: device, see :func:`forward_variant`), "layered" or "onchip" (where it applies)
_variant = "auto"


@contextlib.contextmanager
def forward_variant(name: str) -> Iterator[None]:
    """Choose the inference forward (no saved activations) inside the block.

    ``"layered"``: :func:`_occ_mlp_fwd_kernel`, each layer through per-program scratch tiles in L2.
    ``"onchip"``: :func:`_occ_mlp_fwd_onchip_kernel`, the activation tile kept in registers from the
    first layer to the last and the weights loaded by TMA (16-bit inputs, hidden width 64, 128 or
    256, at most 16 outputs, no skip into the output layer; elsewhere the layered one runs).
    ``"auto"`` (outside any block): the on-chip forward where it applies on a CUDA device of compute
    capability 9.0 or newer, if it was the faster of the two on first use -- both are timed once
    per GPU, shape and size class (:func:`zsw.kernels._utils.measured_choice`: a few tens of ms,
    kept on disk) and the winner is kept. Under the interpreter ``auto`` is the layered forward.
    """
    global _variant
    if name not in ("auto", "layered", "onchip"):
        raise ValueError(f"occupancy_mlp: forward variant must be auto, layered or onchip, got {name!r}")
    before, _variant = _variant, name
    try:
        yield
    finally:
        _variant = before


def onchip_applies(x: Tensor, w_packed: Tensor, width: int, c_out: int, x_layers: int) -> bool:
    """Whether the on-chip forward can run these operands (see :func:`forward_variant`)."""
    NL = w_packed.shape[0]
    return (
        x.dtype in (torch.float16, torch.bfloat16)
        and NL >= 2
        and width in (64, 128, 256)
        and w_packed.shape[1] == width
        and c_out <= 16
        and not (x_layers >> (NL - 1)) & 1
        and (interpreting() or (x.is_cuda and device_capability(x.device) >= 90))
    )


def _onchip_operands(x: Tensor, w_packed: Tensor, b_packed: Tensor, width: int, c_out: int):
    """The on-chip kernel's layout: x with 16-byte aligned rows (copied only when they are not),
    the hidden layers' transposed weights ``[(NL - 1) * SLOT, W]`` (h rows, then x rows padded to
    whole K slices), the output layer's ``W^T [W, OUT_PAD]`` and fp32 biases ``[NL, W]``."""
    NL, _, KS = w_packed.shape
    C_in = KS - width
    BK = width // 4
    KX = triton.cdiv(C_in, BK)
    slot = width + KX * BK
    wt = w_packed.new_zeros(NL - 1, slot, width)
    wt[:, : width + C_in] = w_packed[: NL - 1].transpose(1, 2)
    out_pad = max(16, next_pow2(c_out))
    wl = w_packed.new_zeros(width, out_pad)
    wl[:, :c_out] = w_packed[NL - 1, :c_out, :width].t()
    item = x.element_size()
    if x.stride(1) != 1 or (x.stride(0) * item) % 16 or x.data_ptr() % 16:
        padded = x.new_empty(x.shape[0], triton.cdiv(C_in * item, 16) * 16 // item)
        padded[:, :C_in] = x
        x = padded[:, :C_in]
    return x, wt.reshape(-1, width), wl, b_packed.float().contiguous(), KX, out_pad


def _fwd_onchip(x: Tensor, w_packed: Tensor, b_packed: Tensor, width: int, c_out: int, x_layers: int, beta: float):
    """Launch the on-chip forward (inference: no activations kept); ``y [M, C_out]``."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    M = x.shape[0]
    y = x.new_empty(M, c_out)
    if M == 0:
        return y
    x, wt, wl, bias, KX, out_pad = _onchip_operands(x, w_packed, b_packed, width, c_out)
    BK = width // 4
    x_desc = TensorDescriptor.from_tensor(x, [_INTERP_ONCHIP["BLOCK_M"], BK])  # the tuner's pre-hook resizes it
    wt_desc = TensorDescriptor.from_tensor(wt, [BK, width])
    args = (x_desc, wt_desc, wl, bias, y, M, c_out, y.stride(0), beta, size_class(M))
    meta = dict(
        NUM_LAYERS=w_packed.shape[0], X_LAYERS=x_layers, W=width, KX=KX, OUT_PAD=out_pad,
        INTERP_BF16=interp_bf16(x.dtype), FAST_MATH=not interpreting(),
    )  # fmt: skip
    programs = _programs(M, x.device)
    if interpreting():
        _occ_mlp_fwd_onchip_kernel[(programs,)](*args, **meta, **_INTERP_ONCHIP)
    else:
        _onchip_tuned[(programs,)](*args, **meta)
    return y


# ----------------------------------------------------------------------------------------------
# Launchers (custom ops)
# ----------------------------------------------------------------------------------------------


@custom_op("zsw::occ_mlp_fwd")
def occ_mlp_fwd(
    x: Tensor,  # [M, C_in]
    w_packed: Tensor,  # [NL, R, W + C_in]
    b_packed: Tensor,  # [NL, R]
    width: int,
    c_out: int,
    x_layers: int,
    beta: float,
    save: bool,
) -> tuple[Tensor, Tensor]:  # y [M, C_out]; hidden activations [NL-1, M, W] if save, else [0]
    """Launch the fused forward. ``x_layers``: bitmask of the layers that read x. Without ``save``
    (inference) the on-chip forward may run instead (:func:`forward_variant`)."""
    M, C_in = x.shape
    NL = w_packed.shape[0]
    if not save and _variant != "layered" and M > 0 and onchip_applies(x, w_packed, width, c_out, x_layers):
        run_onchip = functools.partial(_fwd_onchip, x, w_packed, b_packed, width, c_out, x_layers, beta)
        if _variant == "onchip":
            return run_onchip(), x.new_empty(0)
        if not interpreting():

            def run_layered():
                return _fwd_layered(x, w_packed, b_packed, width, c_out, x_layers, beta, False)[0]

            key = ("occupancy_mlp", x.device, x.dtype, C_in, width, c_out, NL, x_layers, size_class(M))
            if measured_choice(key, {"layered": run_layered, "onchip": run_onchip}, __file__) == "onchip":
                return run_onchip(), x.new_empty(0)
    return _fwd_layered(x, w_packed, b_packed, width, c_out, x_layers, beta, save)


def _fwd_layered(
    x: Tensor, w_packed: Tensor, b_packed: Tensor, width: int, c_out: int, x_layers: int, beta: float, save: bool
) -> tuple[Tensor, Tensor]:
    M, C_in = x.shape
    NL = w_packed.shape[0]
    y = x.new_empty(M, c_out)
    hs = x.new_empty(NL - 1, M, width) if save else x.new_empty(0)
    if M == 0:
        return y, hs
    programs = _programs(M, x.device)
    max_block_m = _INTERP["BLOCK_M"] if interpreting() else max(c.kwargs["BLOCK_M"] for c in _configs())
    # without save: two scratch tiles per program (ping-pong between layers), which stay in L2
    scratch = hs if save else x.new_empty(2, programs * max_block_m, width)
    stride_hl, stride_hm = scratch.stride(0), scratch.stride(1)
    # fmt: off
    args = (
        x, w_packed, b_packed, y, scratch,
        M, C_in, width, c_out,
        x.stride(0), y.stride(0), w_packed.stride(0), w_packed.stride(1), b_packed.stride(0),
        stride_hl, stride_hm,
        beta, size_class(M),
    )
    # fmt: on
    meta = dict(
        NUM_LAYERS=NL,
        X_LAYERS=x_layers,
        SAVE=save,
        OUT_PAD=max(16, next_pow2(c_out)),
        INTERP_BF16=interp_bf16(x.dtype),
        PRECISION=dot_precision(x.dtype),
        # the interpreter has no libdevice: it runs the precise Softplus (the same formula)
        FAST_MATH=x.dtype != torch.float32 and not interpreting(),
    )
    if interpreting():
        _occ_mlp_fwd_kernel[(programs,)](*args, **meta, **_INTERP)
    else:
        _fwd_tuned[(programs,)](*args, **meta)
    return y, hs


@occ_mlp_fwd.register_fake
def _(x, w_packed, b_packed, width, c_out, x_layers, beta, save):
    M = x.shape[0]
    hs = x.new_empty(w_packed.shape[0] - 1, M, width) if save else x.new_empty(0)
    return x.new_empty(M, c_out), hs


@custom_op("zsw::occ_mlp_bwd")
def occ_mlp_bwd(
    grad_y: Tensor,  # [M, C_out]
    x: Tensor,  # [M, C_in]
    w_packed: Tensor,  # [NL, R, W + C_in]
    hs: Tensor,  # [NL-1, M, W]
    width: int,
    c_out: int,
    x_layers: int,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:  # dx [M, C_in], dw_packed [NL, R, W + C_in], db_packed [NL, R]
    """The backward: the fused dz chain in Triton, then the weight gradients as (batched) GEMMs."""
    M, C_in = x.shape
    NL, R, KS = w_packed.shape
    W = width
    grad_y = grad_y.contiguous()
    dz = x.new_empty(NL - 1, M, W)
    if M > 0 and NL > 1:
        programs = _programs(M, x.device)
        # fmt: off
        args = (
            grad_y, w_packed, hs, dz,
            M, W, c_out,
            grad_y.stride(0), w_packed.stride(0), w_packed.stride(1),
            hs.stride(0), hs.stride(1),
            beta, size_class(M),
        )
        # fmt: on
        meta = dict(
            NUM_LAYERS=NL,
            X_LAYERS=x_layers,
            INTERP_BF16=interp_bf16(x.dtype),
            PRECISION=dot_precision(x.dtype),
        )
        if interpreting():
            _occ_mlp_bwd_kernel[(programs,)](*args, **meta, **_INTERP)
        else:
            _bwd_tuned[(programs,)](*args, **meta)

    def dz_of(l: int) -> Tensor:  # [M, rows of layer l]
        return grad_y if l == NL - 1 else dz[l]

    def scale_of(l: int) -> float:
        return _INV_SQRT2 if (l > 0 and (x_layers >> l) & 1) else 1.0

    dw = torch.zeros_like(w_packed)
    db = torch.zeros(NL, R, device=x.device, dtype=w_packed.dtype)
    # h-part of the hidden layers 1..NL-2 in one batched GEMM: dW_l[:, :W] = s_l dz_l^T @ h_{l-1}
    if NL > 2:
        dw[1 : NL - 1, :W, :W] = torch.bmm(dz[1:].transpose(1, 2), hs[:-1])
    if NL > 1:
        dw[NL - 1, :c_out, :W] = grad_y.t() @ hs[NL - 2]
    dx = torch.zeros(M, C_in, device=x.device, dtype=torch.float32)
    for l in range(NL):
        rows = c_out if l == NL - 1 else W
        s = scale_of(l)
        g = dz_of(l)
        db[l, :rows] = g.sum(dim=0, dtype=torch.float32).to(db.dtype)
        if s != 1.0:
            dw[l, :rows, :W] *= s
        if (x_layers >> l) & 1:
            dw[l, :rows, W:] = (g.t() @ x) * s
            dx += (g @ w_packed[l, :rows, W:]).float() * s
    return dx.to(x.dtype), dw, db


@occ_mlp_bwd.register_fake
def _(grad_y, x, w_packed, hs, width, c_out, x_layers, beta):
    return torch.empty_like(x), torch.empty_like(w_packed), w_packed.new_empty(w_packed.shape[:2])


def _setup_context(ctx, inputs, output):
    x, w_packed, b_packed, width, c_out, x_layers, beta, save = inputs
    _, hs = output
    ctx.save_for_backward(x, w_packed, b_packed, hs)
    ctx.meta = (width, c_out, x_layers, beta)
    ctx.recompute = not save


def _backward(ctx, grad_y, grad_hs):
    x, w_packed, b_packed, hs = ctx.saved_tensors
    width, c_out, x_layers, beta = ctx.meta
    if ctx.recompute:  # nothing was stored: rerun the fused forward, keeping the activations
        _, hs = occ_mlp_fwd(x, w_packed, b_packed, width, c_out, x_layers, beta, True)
    dx, dw, db = occ_mlp_bwd(grad_y, x, w_packed, hs, width, c_out, x_layers, beta)
    return dx, dw, db, None, None, None, None, None


occ_mlp_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------


def pack_weights(
    weights: Sequence[Tensor],  # layer l: [C_out_l, C_in_l]
    biases: Sequence[Tensor | None],  # layer l: [C_out_l] or None
    skip_in: Sequence[int],
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, int, int, int, int]:
    """Check the layer shapes and pack them (differentiably) into the kernel's layout.

    Returns:
        ``(w_packed [NL, R, W + C_in], b_packed [NL, R], W, C_in, C_out, x_layers)``.
    """
    NL = len(weights)
    if NL == 0 or len(biases) != NL:
        raise ValueError(f"occupancy_mlp: need as many biases as weights (>= 1), got {NL} and {len(biases)}")
    skips = {int(l) for l in skip_in if 0 <= int(l) < NL}
    if 0 in skips:
        raise ValueError("occupancy_mlp (triton): a skip connection at layer 0 is not supported")
    C_out = weights[-1].shape[0]
    C_in = weights[0].shape[1]
    W = weights[0].shape[0] if NL > 1 else 0
    x_layers = 1 | sum(1 << l for l in skips)
    for l, w in enumerate(weights):
        rows = C_out if l == NL - 1 else W
        cols = (C_in if l == 0 else W) + (C_in if l in skips else 0)
        if w.dim() != 2 or tuple(w.shape) != (rows, cols):
            raise ValueError(
                f"occupancy_mlp (triton): layer {l} weight should be [{rows}, {cols}] "
                f"(hidden width {W}, input {C_in}, skips {sorted(skips)}), got {tuple(w.shape)}"
            )
        b = biases[l]
        if b is not None and tuple(b.shape) != (rows,):
            raise ValueError(f"occupancy_mlp (triton): layer {l} bias should be [{rows}], got {tuple(b.shape)}")
    R, KS = max(W, C_out), W + C_in
    slots, bias_rows = [], []
    for l, w in enumerate(weights):
        left = W if l == 0 else 0  # layer 0 reads only x: its columns go to the x part of the slot
        w = w.to(dtype)
        slots.append(F.pad(w, (left, KS - left - w.shape[1], 0, R - w.shape[0])))
        b = biases[l]
        bias_rows.append(F.pad(b.to(dtype), (0, R - b.shape[0])) if b is not None else w.new_zeros(R))
    return torch.stack(slots), torch.stack(bias_rows), W, C_in, C_out, x_layers


def occupancy_mlp(
    x: Tensor,  # [..., C_in]
    weights: Sequence[Tensor],  # layer l: [C_out_l, C_in_l]
    biases: Sequence[Tensor | None],  # layer l: [C_out_l] or None
    skip_in: Sequence[int] = (2, 4, 6),
    beta: float = 100.0,
    *,
    recompute: bool = False,
) -> Tensor:  # [..., C_out]
    """ZeroShape's occupancy MLP (Linears, Softplus(beta), input skips) as one fused Triton kernel.

    Same semantics as :func:`zsw.kernels.reference.occupancy_mlp`. Differentiable in ``x``, every
    weight and every bias.

    Args:
        x: input features; for the decoder ``cat(xyz, point_feature)``, ``C_in = 259``.
        weights, biases: one entry per layer as stored by ``nn.Linear``; all hidden layers share
            one width, and the skip layers take ``width + C_in`` inputs (``[h, x]``, in that order).
        skip_in: layers whose input is ``cat(h, x) / sqrt(2)``; layer 0 cannot be one.
        beta: Softplus sharpness (threshold 20, as torch).
        recompute: store no activations for the backward and recompute them there (less memory,
            one more forward pass); see docs/kernels.md.

    Returns:
        The last layer's output in the compute dtype (autocast dtype under autocast, else x's).

    Example::

        mlp = zsw.model.layers.OccupancyMLP(259, 256).cuda()
        x = torch.randn(65536, 259, device="cuda", dtype=torch.bfloat16)
        logits = occupancy_mlp(x, [l.weight for l in mlp.layers], [l.bias for l in mlp.layers])
    """
    dtype = compute_dtype(x)
    w_packed, b_packed, W, C_in, C_out, x_layers = pack_weights(weights, biases, skip_in, dtype)
    if x.shape[-1] != C_in:
        raise ValueError(f"occupancy_mlp: x has {x.shape[-1]} features, layer 0 expects {C_in}")
    x2 = x.reshape(-1, C_in).to(dtype)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    check_dtype("occupancy_mlp", x2, w_packed)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(t is not None and t.requires_grad for t in (*weights, *biases))
    )
    y, _ = occ_mlp_fwd(x2, w_packed, b_packed, W, C_out, x_layers, float(beta), needs_grad and not recompute)
    return y.reshape(*x.shape[:-1], C_out)
