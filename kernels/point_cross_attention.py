"""Point cross-attention: each query point attends to its image's L latent tokens plus its own key.

ZeroShape's decoder lets every 3D query point attend to the 197 image tokens and to itself, never
to other points. Per batch b, head h and point n, with ``s = scale`` (``D ** -0.5`` by default)::

    logits = [s * q_n . k_latent_j  for j < L]  +  [s * q_n . k_n]        # L + 1 logits
    w      = softmax(logits)
    out_n  = sum_j w_j v_latent_j  +  w_L v_n

Shapes: ``q, k, v [B, H, N, D]``, ``k_latent, v_latent [B, H, L, D]``, ``out [B, H, N, D]``.

Forward (``_point_attn_fwd_kernel``). The grid is ``(P, B*H)``: the P programs of one (b, h) stride
over its query tiles (a persistent loop). Per tile the latent K/V stream in chunks of 64 tokens (32
for IEEE fp32) through the software pipeline; they come from L1/L2, since every tile of the head
reads the same 25 KB. (Holding the whole [256, D] block on chip for the program's lifetime made
the logits tile [BLOCK_N, 256] and spilled; see docs/kernels.md.) A latent set that fits one chunk
is loaded once per program. Each tile runs an online softmax in the log2 domain that *starts from
the self term* (``m = s_self, l = 1, acc = v_n``), so no row is ever all ``-inf``, then merges the
latent chunks; it stores ``out = acc / l`` and the row log-sum-exp ``lse = m + log2(l)`` (base 2)
for the backward.

Backward (``_point_attn_bwd_kernel``), with ``p = exp2(s * log2e * logits - lse)`` recomputed and
``delta_n = dO_n . out_n``::

    dS      = p * (dO . v - delta)          for the latent and the self logit
    dq      = s * (dS_latent @ k_latent + dS_self k_n)
    dk_n    = s * dS_self q_n,    dv_n = p_self dO_n
    dk_lat  = s * sum_n dS_latent^T q_n,    dv_lat = sum_n p_latent^T dO_n      (sums over points)

Same grid; the loop order is latent chunk (outer) x query tiles (inner), so a program keeps one
chunk of K/V and its dK/dV accumulators on chip while it sweeps its tiles. Each program writes its
partial dK/dV of the latents to ``[B*H, P, L, D]`` (fp32), summed over P afterwards: deterministic,
no atomics. ``dq`` accumulates over chunks in an fp32 buffer owned by the program's tiles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from zsw.kernels._utils import (
    autotune,
    cast,
    check_dtype,
    compute_dtype,
    custom_op,
    dot,
    dot_precision,
    fits_shared_memory,
    interp_bf16,
    interpreting,
    maybe_contiguous,
    next_pow2,
    persistent_programs,
    size_class,
)

__all__ = ["point_cross_attention", "point_attn_fwd", "point_attn_bwd"]

_LOG2E = 1.4426950408889634
# the smallest query tile of any config: the number of programs P is derived from it, so the
# partial-gradient buffer has the same shape whatever config the autotuner picks
_MIN_BLOCK_N = 32
# latent chunk of the forward (see _latent_block)
_LATENT_CHUNK = 64
_IEEE_LATENT_CHUNK = 32


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _merge_latent_chunk(
    q, kl, vl, l_valid, m, l_sum, acc, qk_scale, INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr
):
    """One online-softmax step over a chunk of latent keys. q [BN, BD], kl/vl [BL, BD]."""
    s = dot(q, tl.trans(kl), INTERP_BF16, PRECISION) * qk_scale  # [BN, BL], log2 domain
    s = tl.where(l_valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))  # m is finite: it starts at the self logit
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_sum = l_sum * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + dot(cast(p, vl.dtype, INTERP_BF16), vl, INTERP_BF16, PRECISION)
    return m_new, l_sum, acc


@triton.jit
def _point_attn_fwd_kernel(
    Q, K, V, KL, VL, O, LSE,
    stride_qb, stride_qh, stride_qn,  # q, k and v share strides
    stride_lb, stride_lh, stride_ll,  # k_latent and v_latent share strides
    stride_ob, stride_oh, stride_on,
    H, N, L, D,
    qk_scale,  # scale * log2(e)
    SIZE_CLASS,  # autotuning bucket of N (not used by the kernel)
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,  # all L latent tokens fit one BLOCK_L block
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_progs = tl.num_programs(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    q_base = b * stride_qb + h * stride_qh
    l_base = b * stride_lb + h * stride_lh
    o_base = b * stride_ob + h * stride_oh
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < D
    offs_l = tl.arange(0, BLOCK_L)

    if SINGLE_CHUNK:
        # the head's latent K/V: loaded once, reused by every tile of this program
        l_valid = offs_l < L
        lv_mask = l_valid[:, None] & d_valid[None, :]
        l_off = l_base + offs_l[:, None] * stride_ll + offs_d[None, :]
        kl = tl.load(KL + l_off, mask=lv_mask, other=0.0)
        vl = tl.load(VL + l_off, mask=lv_mask, other=0.0)

    num_tiles = tl.cdiv(N, BLOCK_N)
    for tile in range(pid, num_tiles, num_progs):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        n_valid = offs_n < N
        nd_mask = n_valid[:, None] & d_valid[None, :]
        offs_n64 = offs_n.to(tl.int64)
        q_off = q_base + offs_n64[:, None] * stride_qn + offs_d[None, :]
        q = tl.load(Q + q_off, mask=nd_mask, other=0.0)
        k_self = tl.load(K + q_off, mask=nd_mask, other=0.0)
        v_self = tl.load(V + q_off, mask=nd_mask, other=0.0)

        # the online softmax starts from the point's own key: m = its logit, l = 1, acc = v_n
        m = tl.sum(q.to(tl.float32) * k_self.to(tl.float32), axis=1) * qk_scale
        l_sum = tl.full([BLOCK_N], 1.0, dtype=tl.float32)
        acc = v_self.to(tl.float32)
        if SINGLE_CHUNK:
            m, l_sum, acc = _merge_latent_chunk(q, kl, vl, l_valid, m, l_sum, acc, qk_scale, INTERP_BF16, PRECISION)
        else:
            for l0 in range(0, L, BLOCK_L):
                lc_valid = (l0 + offs_l) < L
                lc_mask = lc_valid[:, None] & d_valid[None, :]
                lc_off = l_base + (l0 + offs_l)[:, None] * stride_ll + offs_d[None, :]
                kc = tl.load(KL + lc_off, mask=lc_mask, other=0.0)
                vc = tl.load(VL + lc_off, mask=lc_mask, other=0.0)
                m, l_sum, acc = _merge_latent_chunk(
                    q, kc, vc, lc_valid, m, l_sum, acc, qk_scale, INTERP_BF16, PRECISION
                )

        out = acc / l_sum[:, None]
        o_off = o_base + offs_n64[:, None] * stride_on + offs_d[None, :]
        tl.store(O + o_off, cast(out, O.dtype.element_ty, INTERP_BF16), mask=nd_mask)
        tl.store(LSE + bh * N + offs_n64, m + tl.log2(l_sum), mask=n_valid)


@triton.jit
def _point_attn_bwd_kernel(
    Q, K, V, KL, VL, O, DO, LSE,
    DQ, DK, DV,  # DQ: fp32, contiguous [B, H, N, D]; DK, DV: contiguous [B, H, N, D]
    DKL_PART, DVL_PART,  # fp32 [B*H, P, L, D]: one partial sum per program
    stride_qb, stride_qh, stride_qn,
    stride_lb, stride_lh, stride_ll,
    stride_ob, stride_oh, stride_on,
    stride_gb, stride_gh, stride_gn,  # dO
    H, N, L, D,
    L_LOOP,  # max(L, 1): the chunk loop runs at least once (it writes dq, dk, dv)
    scale, qk_scale,
    SIZE_CLASS,  # autotuning bucket of N (not used by the kernel)
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_progs = tl.num_programs(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    q_base = b * stride_qb + h * stride_qh
    l_base = b * stride_lb + h * stride_lh
    o_base = b * stride_ob + h * stride_oh
    g_base = b * stride_gb + h * stride_gh
    dq_base = bh * N * D
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < D
    num_tiles = tl.cdiv(N, BLOCK_N)

    for l0 in range(0, L_LOOP, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        l_valid = offs_l < L
        ld_mask = l_valid[:, None] & d_valid[None, :]
        l_off = l_base + offs_l[:, None] * stride_ll + offs_d[None, :]
        kl = tl.load(KL + l_off, mask=ld_mask, other=0.0)  # this chunk stays on chip for all tiles
        vl = tl.load(VL + l_off, mask=ld_mask, other=0.0)
        dkl = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
        dvl = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)

        for tile in range(pid, num_tiles, num_progs):
            offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            n_valid = offs_n < N
            nd_mask = n_valid[:, None] & d_valid[None, :]
            offs_n64 = offs_n.to(tl.int64)
            q_off = q_base + offs_n64[:, None] * stride_qn + offs_d[None, :]
            q = tl.load(Q + q_off, mask=nd_mask, other=0.0)
            do = tl.load(DO + g_base + offs_n64[:, None] * stride_gn + offs_d[None, :], mask=nd_mask, other=0.0)
            o = tl.load(O + o_base + offs_n64[:, None] * stride_on + offs_d[None, :], mask=nd_mask, other=0.0)
            lse = tl.load(LSE + bh * N + offs_n64, mask=n_valid, other=0.0)
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)  # [BN]

            s = dot(q, tl.trans(kl), INTERP_BF16, PRECISION) * qk_scale
            p = tl.exp2(s - lse[:, None])
            p = tl.where(n_valid[:, None] & l_valid[None, :], p, 0.0)
            dp = dot(do, tl.trans(vl), INTERP_BF16, PRECISION)
            ds = p * (dp - delta[:, None])
            dvl += dot(tl.trans(cast(p, do.dtype, INTERP_BF16)), do, INTERP_BF16, PRECISION)
            ds_lo = cast(ds, q.dtype, INTERP_BF16)
            dkl += dot(tl.trans(ds_lo), q, INTERP_BF16, PRECISION)
            dq = dot(ds_lo, kl, INTERP_BF16, PRECISION) * scale  # [BN, BD]

            dq_off = dq_base + offs_n64[:, None] * D + offs_d[None, :]
            if l0 == 0:
                # the self term, once per point
                k_self = tl.load(K + q_off, mask=nd_mask, other=0.0).to(tl.float32)
                v_self = tl.load(V + q_off, mask=nd_mask, other=0.0).to(tl.float32)
                q32 = q.to(tl.float32)
                do32 = do.to(tl.float32)
                p_self = tl.exp2(tl.sum(q32 * k_self, axis=1) * qk_scale - lse)
                p_self = tl.where(n_valid, p_self, 0.0)
                ds_self = p_self * (tl.sum(do32 * v_self, axis=1) - delta)
                dq += (ds_self * scale)[:, None] * k_self
                tl.store(
                    DK + dq_off, cast((ds_self * scale)[:, None] * q32, DK.dtype.element_ty, INTERP_BF16), mask=nd_mask
                )
                tl.store(DV + dq_off, cast(p_self[:, None] * do32, DV.dtype.element_ty, INTERP_BF16), mask=nd_mask)
            else:
                dq += tl.load(DQ + dq_off, mask=nd_mask, other=0.0)
            tl.store(DQ + dq_off, dq, mask=nd_mask)

        part = (bh * num_progs + pid) * L * D + offs_l[:, None] * D + offs_d[None, :]
        tl.store(DKL_PART + part, dkl * scale, mask=ld_mask)
        tl.store(DVL_PART + part, dvl, mask=ld_mask)
        # dq of this program's tiles is read back by the next chunk, maybe by other threads
        tl.debug_barrier()


# ----------------------------------------------------------------------------------------------
# Launch configurations
# ----------------------------------------------------------------------------------------------


# (BLOCK_N, warps, stages) per operand family. 16-bit (and TF32) tiles have >= 64 rows, one wgmma
# warpgroup tile on sm_90; IEEE fp32 dots are FMA loops with their operands in registers, so that
# family streams the latents in chunks of 32 and keeps smaller tiles (see _latent_block).
_FWD_FAMILIES = {
    "16bit": [(64, 4, 2), (128, 4, 2), (128, 8, 2)],
    "tf32": [(64, 4, 2), (64, 8, 2), (128, 8, 2)],
    "ieee": [(32, 4, 2), (64, 8, 2)],
}
_FWD_CONFIGS = {
    name: [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s) for bn, w, s in rows]
    for name, rows in _FWD_FAMILIES.items()
}
# (BLOCK_N, BLOCK_L, warps, stages): the backward's dots are [BLOCK_N x BLOCK_L] and, transposed,
# [BLOCK_L x BLOCK_N], so both are >= 64 for wgmma
# The backward holds more tiles at once (logits, probabilities and their gradients, the dK/dV
# accumulators): 8 warps and no pipelining (num_stages=1) keep it spill-free on sm_90 and sm_80.
# TF32 operands are twice the size of 16-bit ones: 128 x 64 sits at 255 registers and spills
# 20-24 B with triton 3.6 (the lent GPU's), so that family's larger tile halves BLOCK_L instead
# (128 x 32: 190 registers on sm_90, wgmma still in its PTX).
_BWD_FAMILIES = {
    "16bit": [(64, 64, 8, 1), (128, 64, 8, 1)],
    "tf32": [(64, 64, 8, 1), (128, 32, 8, 1)],
    "ieee": [(32, 32, 4, 1), (64, 32, 8, 1)],
}
_BWD_CONFIGS = {
    name: [triton.Config({"BLOCK_N": bn, "BLOCK_L": bl}, num_warps=w, num_stages=s) for bn, bl, w, s in rows]
    for name, rows in _BWD_FAMILIES.items()
}


def _family(dtype: torch.dtype, precision: str) -> str:
    if dtype != torch.float32:
        return "16bit"
    return "ieee" if precision == "ieee" else "tf32"


def _fwd_shared_bytes(config: triton.Config, block_l: int, block_d: int, itemsize: int) -> int:
    """Upper estimate of the forward's shared memory: the latent K/V block and the pipelined
    q/k/v tiles of every stage."""
    bn = config.kwargs["BLOCK_N"]
    return 2 * block_l * block_d * itemsize + config.num_stages * 3 * bn * block_d * itemsize


def _bwd_shared_bytes(config: triton.Config, block_d: int, itemsize: int) -> int:
    """Upper estimate of the backward's shared memory: the K/V chunk, the pipelined q/dO/out tiles
    and the probability tile staged for the transposed dots."""
    bn, bl = config.kwargs["BLOCK_N"], config.kwargs["BLOCK_L"]
    return 2 * bl * block_d * itemsize + config.num_stages * 3 * bn * block_d * itemsize + 2 * bn * bl * 4


def _prune_fwd(configs, named_args, **kwargs):
    q = named_args["Q"]
    kept = [c for c in configs if c in _FWD_CONFIGS[_family(q.dtype, kwargs["PRECISION"])]]
    est = lambda c: _fwd_shared_bytes(c, kwargs["BLOCK_L"], kwargs["BLOCK_D"], q.element_size())  # noqa: E731
    return fits_shared_memory(kept, q.device, est)


def _prune_bwd(configs, named_args, **kwargs):
    # the family's configs, never a latent block larger than the padded L (it would only compute
    # masked zeros), and those that fit the device's shared memory
    kl = named_args["KL"]
    family = [c for c in configs if c in _BWD_CONFIGS[_family(kl.dtype, kwargs["PRECISION"])]]
    cap = max(16, next_pow2(named_args["L"]))
    kept = [c for c in family if c.kwargs["BLOCK_L"] <= cap] or [min(family, key=lambda c: c.kwargs["BLOCK_L"])]
    est = lambda c: _bwd_shared_bytes(c, kwargs["BLOCK_D"], kl.element_size())  # noqa: E731
    return fits_shared_memory(kept, kl.device, est)


def _all(families: dict[str, list[triton.Config]]) -> list[triton.Config]:
    """Every family's configs, each once (families share some): the autotuner's list."""
    out: list[triton.Config] = []
    for configs in families.values():
        out += [c for c in configs if c not in out]
    return out


_fwd_tuned = autotune(
    _all(_FWD_CONFIGS),
    key=["L", "D", "SINGLE_CHUNK", "SIZE_CLASS", "PRECISION"],
    prune_configs_by={"early_config_prune": _prune_fwd},
)(_point_attn_fwd_kernel)
_bwd_tuned = autotune(
    _all(_BWD_CONFIGS),
    key=["L", "D", "SIZE_CLASS", "PRECISION"],
    prune_configs_by={"early_config_prune": _prune_bwd},
)(_point_attn_bwd_kernel)

# Under the interpreter the cost is per operation: few, large tiles.
_INTERP_FWD = {"BLOCK_N": 256}
_INTERP_BWD = {"BLOCK_N": 256, "BLOCK_L": 64}


def _latent_block(L: int, block_d: int, itemsize: int, precision: str) -> tuple[int, bool]:
    """(BLOCK_L, SINGLE_CHUNK) of the forward. The latents stream in chunks of 64 tokens (32 for
    IEEE fp32, whose FMA dots hold their operands in registers) through the software pipeline,
    from L1/L2 (25 KB per head in bf16): the logits tile is then [BLOCK_N, 64], not [BLOCK_N, 256],
    which is what made the one-block version spill (a [256, 32] fp32 block even made ptxas give
    up: 32 registers and 20-80 KB of spills). A set that fits one chunk is loaded once per program."""
    chunk = _IEEE_LATENT_CHUNK if (itemsize == 4 and precision == "ieee") else _LATENT_CHUNK
    block_l = max(16, next_pow2(L))
    return (block_l, True) if block_l <= chunk else (chunk, False)


# ----------------------------------------------------------------------------------------------
# Launchers (registered as custom ops: opaque to torch.compile, with fake implementations)
# ----------------------------------------------------------------------------------------------


def _empty_out(q: Tensor) -> Tensor:  # [B, H, N, D] stored as [B, N, H, D]
    # Stored point-major so that the model's head merge (transpose(1, 2).reshape) is a free view.
    B, H, N, D = q.shape
    return q.new_empty(B, N, H, D).permute(0, 2, 1, 3)


def _shared_strides(*ts: Tensor) -> tuple[Tensor, ...]:
    """The tensors themselves if they share strides with a unit last stride, else contiguous copies."""
    ts = tuple(maybe_contiguous(t) for t in ts)
    if any(t.stride() != ts[0].stride() for t in ts):
        ts = tuple(t.contiguous() for t in ts)
    return ts


@custom_op("zsw::point_attn_fwd")
def point_attn_fwd(
    q: Tensor,  # [B, H, N, D]
    k: Tensor,  # [B, H, N, D]
    v: Tensor,  # [B, H, N, D]
    k_latent: Tensor,  # [B, H, L, D]
    v_latent: Tensor,  # [B, H, L, D]
    scale: float,
) -> tuple[Tensor, Tensor]:  # out [B, H, N, D], lse [B, H, N] (fp32, base 2)
    """Launch the forward kernel: the attended values and the base-2 row log-sum-exp."""
    B, H, N, D = q.shape
    L = k_latent.shape[2]
    out = _empty_out(q)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    q, k, v = _shared_strides(q, k, v)
    k_latent, v_latent = _shared_strides(k_latent, v_latent)
    precision = dot_precision(q.dtype)
    block_l, single = _latent_block(L, max(16, next_pow2(D)), q.element_size(), precision)
    programs = persistent_programs(triton.cdiv(N, _MIN_BLOCK_N), B * H, q.device)
    # fmt: off
    args = (
        q, k, v, k_latent, v_latent, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k_latent.stride(0), k_latent.stride(1), k_latent.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        H, N, L, D, scale * _LOG2E, size_class(N),
    )
    # fmt: on
    meta = dict(
        BLOCK_L=block_l,
        BLOCK_D=max(16, next_pow2(D)),
        SINGLE_CHUNK=single,
        INTERP_BF16=interp_bf16(q.dtype),
        PRECISION=precision,
    )
    grid = (programs, B * H)
    if interpreting():
        _point_attn_fwd_kernel[grid](*args, **meta, **_INTERP_FWD)
    else:
        _fwd_tuned[grid](*args, **meta)
    return out, lse


@point_attn_fwd.register_fake
def _(q, k, v, k_latent, v_latent, scale):
    B, H, N, D = q.shape
    return _empty_out(q), q.new_empty(B, H, N, dtype=torch.float32)


@custom_op("zsw::point_attn_bwd")
def point_attn_bwd(
    grad_out: Tensor,  # [B, H, N, D]
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_latent: Tensor,  # [B, H, L, D]
    v_latent: Tensor,
    out: Tensor,  # [B, H, N, D]
    lse: Tensor,  # [B, H, N]
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # dq, dk, dv [B, H, N, D]; dk_latent, dv_latent [B, H, L, D]
    """Launch the backward kernel: gradients of q, k, v and of the latent keys and values."""
    B, H, N, D = q.shape
    L = k_latent.shape[2]
    dq32 = torch.empty(B, H, N, D, device=q.device, dtype=torch.float32)
    dk = torch.empty(B, H, N, D, device=q.device, dtype=q.dtype)
    dv = torch.empty_like(dk)
    programs = persistent_programs(triton.cdiv(N, _MIN_BLOCK_N), B * H, q.device)
    dkl_part = torch.empty(B * H, programs, L, D, device=q.device, dtype=torch.float32)
    dvl_part = torch.empty_like(dkl_part)
    if B * H * N * D > 0:
        q, k, v = _shared_strides(q, k, v)
        k_latent, v_latent = _shared_strides(k_latent, v_latent)
        grad_out = maybe_contiguous(grad_out)
        # fmt: off
        args = (
            q, k, v, k_latent, v_latent, out, grad_out, lse, dq32, dk, dv, dkl_part, dvl_part,
            q.stride(0), q.stride(1), q.stride(2),
            k_latent.stride(0), k_latent.stride(1), k_latent.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
            H, N, L, D, max(L, 1), scale, scale * _LOG2E, size_class(N),
        )
        # fmt: on
        meta = dict(BLOCK_D=max(16, next_pow2(D)), INTERP_BF16=interp_bf16(q.dtype), PRECISION=dot_precision(q.dtype))
        grid = (programs, B * H)
        if interpreting():
            _point_attn_bwd_kernel[grid](*args, **meta, **_INTERP_BWD)
        else:
            _bwd_tuned[grid](*args, **meta)
    else:  # no points: the latents get zero gradients
        dkl_part.zero_()
        dvl_part.zero_()
    dkl = dkl_part.sum(dim=1).view(B, H, L, D).to(q.dtype)
    dvl = dvl_part.sum(dim=1).view(B, H, L, D).to(q.dtype)
    return dq32.to(q.dtype), dk, dv, dkl, dvl


@point_attn_bwd.register_fake
def _(grad_out, q, k, v, k_latent, v_latent, out, lse, scale):
    B, H, N, D = q.shape
    L = k_latent.shape[2]
    return (
        q.new_empty(B, H, N, D),
        q.new_empty(B, H, N, D),
        q.new_empty(B, H, N, D),
        q.new_empty(B, H, L, D),
        q.new_empty(B, H, L, D),
    )


# ----------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    q, k, v, k_latent, v_latent, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, k_latent, v_latent, out, lse)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, k_latent, v_latent, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, dkl, dvl = point_attn_bwd(grad_out, q, k, v, k_latent, v_latent, out, lse, ctx.scale)
    return dq, dk, dv, dkl, dvl, None


point_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------


def point_cross_attention(
    q: Tensor,  # [B, H, N, D]
    k: Tensor,  # [B, H, N, D]
    v: Tensor,  # [B, H, N, D]
    k_latent: Tensor,  # [B, H, L, D]
    v_latent: Tensor,  # [B, H, L, D]
    scale: float | None = None,
) -> Tensor:  # [B, H, N, D]
    """Attention of every point over the L latent keys plus its own key, in Triton.

    Same semantics as :func:`zsw.kernels.reference.point_cross_attention`: per point, a softmax over
    ``[scale * q . k_latent_j for j < L] + [scale * q . k_self]`` weighting ``[v_latent; v_self]``.
    Differentiable in all five tensors. Any B, H, N and L (L = 0 gives ``v``); head dims up to 256
    (16, 32 and 64 are the tuned ones); fp32, fp16 or bf16 with fp32 softmax and accumulation.

    Args:
        q, k, v: per-point query, key and value; the last dimension must be contiguous for the
            kernel to read them in place (slices of one fused qkv projection are).
        k_latent, v_latent: keys and values of the latent tokens, shared by all points of a batch
            element.
        scale: logit scale, ``D ** -0.5`` by default.

    Returns:
        The attended values ``[B, H, N, D]`` in the compute dtype (the autocast dtype under autocast,
        else ``q``'s), stored point-major (``[B, N, H, D]`` memory) so that merging heads is free.

    Example::

        q, k, v = torch.randn(3, 1, 8, 4096, 32, device="cuda", dtype=torch.bfloat16).unbind(0)
        kl, vl = torch.randn(2, 1, 8, 197, 32, device="cuda", dtype=torch.bfloat16).unbind(0)
        out = point_cross_attention(q, k, v, kl, vl)  # [1, 8, 4096, 32]
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"point_cross_attention: q, k, v must be [B, H, N, D] alike, got {q.shape}, {k.shape}, {v.shape}"
        )
    B, H, N, D = q.shape
    if (
        k_latent.dim() != 4
        or k_latent.shape != v_latent.shape
        or k_latent.shape[:2] != (B, H)
        or k_latent.shape[3] != D
    ):
        raise ValueError(
            f"point_cross_attention: k_latent, v_latent must be [B={B}, H={H}, L, D={D}], "
            f"got {tuple(k_latent.shape)} and {tuple(v_latent.shape)}"
        )
    if not 1 <= D <= 256:
        raise ValueError(f"point_cross_attention: head dim must be in 1..256, got {D}")
    dtype = compute_dtype(q)
    tensors = [t.to(dtype) for t in (q, k, v, k_latent, v_latent)]
    check_dtype("point_cross_attention", *tensors)
    if scale is None:
        scale = D**-0.5
    out, _ = point_attn_fwd(*tensors, float(scale))
    return out
