"""A transformer block's feed-forward, ``fc2(GELU(fc1(x)))``, fused: the hidden layer never leaves the SM.

Math (``GELU`` exact, with erf, as ``torch.nn.GELU()``)::

    y = GELU(x @ W1^T + b1) @ W2^T + b2          # x [M, C], W1 [H, C], W2 [C, H]

The decoder runs it on every query point of every block (C = 256, H = 1024 in ZeroShape's decoder):
as two cuBLAS calls and a GELU it writes and reads the ``[M, H]`` hidden activations three times,
4.4 GB each time for a 129^3 grid in bf16, more memory traffic than anything else in the decoder.

**Kernel** (``_ffn_fwd_kernel``; Hopper and newer: TMA): a persistent grid over tiles of BLOCK_M
rows. A tile loads x ``[BLOCK_M, C]`` once by TMA, then walks the hidden units BLOCK_H at a time:
``z = x @ W1^T[:, h0:h0+BLOCK_H] + b1`` (wgmma, fp32 accumulator), GELU in registers, cast to the
input dtype, and ``acc += GELU(z) @ W2^T[h0:h0+BLOCK_H, :]`` into the fp32 ``[BLOCK_M, C]`` output
accumulator; the weight slices come by TMA, software-pipelined over the hidden loop. The result
(plus b2) is stored by TMA. Memory traffic: x once and y once.

Inference only (no autograd), 16-bit inputs, C a power of two from 16 to 256, H a multiple of
BLOCK_H: elsewhere :func:`feed_forward` runs the reference. It has not run on a GPU yet, so
``auto`` times it against the reference on first use (:func:`zsw.kernels._utils.measured_choice`)
and keeps the faster.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from zsw.kernels import reference
from zsw.kernels._utils import (
    autotune,
    cast,
    compute_dtype,
    custom_op,
    device_capability,
    dot_acc,
    interp_bf16,
    interpreting,
    measured_choice,
    persistent_programs,
    shared_memory_limit,
    size_class,
)

__all__ = ["feed_forward", "ffn_fwd", "fused_applies"]


@triton.jit
def _gelu(z):
    """Exact GELU, ``z * Phi(z)`` with the erf (fp32), as ``torch.nn.functional.gelu``."""
    return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))


@triton.jit
def _ffn_fwd_kernel(
    x_desc,  # x [M, C]; blocks [BLOCK_M, C]
    w1_desc,  # W1^T [C, H]; blocks [C, BLOCK_H]
    w2_desc,  # W2^T [H, C]; blocks [BLOCK_H, C]
    B1,  # [H]
    B2,  # [C]
    y_desc,  # y [M, C]; blocks [BLOCK_M, C]
    M,
    H,
    SIZE_CLASS,  # autotuning bucket of M (not used by the kernel)
    C: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_H: tl.constexpr,
    INTERP_BF16: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_h = tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, C)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        row0 = tile * BLOCK_M
        x = x_desc.load([row0, 0])  # rows past M read as zeros
        acc = tl.zeros([BLOCK_M, C], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            z = dot_acc(x, w1_desc.load([0, h0]), tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32), INTERP_BF16)
            z += tl.load(B1 + h0 + offs_h).to(tl.float32)[None, :]
            hidden = cast(_gelu(z), x.dtype, INTERP_BF16)
            acc = dot_acc(hidden, w2_desc.load([h0, 0]), acc, INTERP_BF16)
        acc += tl.load(B2 + offs_c).to(tl.float32)[None, :]  # here, not held across the loop: registers
        y_desc.store([row0, 0], cast(acc, x.dtype, INTERP_BF16))  # rows past M are not written


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_H, warps, stages) at C = 256, H = 1024 on sm_90 (triton 3.8; docs/kernels.md):
# 128 x 32 on 8 warps with 3 stages, 179 registers, 224 KB of shared memory, no spills (b2 is
# loaded after the hidden loop: held across it, its per-thread columns spilled). Also spill-free:
# 64 x 64 on 4 warps with 2 stages (227 registers, 192 KB) and 128 x 64 on 8 without pipelining
# (235, 96 KB); 128 x 64 with 2 stages needs 262 KB, more than a block may have. One config, so no
# autotuning in each process: Triton keeps no disk cache for configs with a pre-hook (the
# descriptors' block shapes), and the first call already pays for measured_choice's timing.
_ROWS = [(128, 32, 8, 3)]


def _block_shapes(nargs: dict) -> None:
    """Descriptor blocks follow the config (autotuning pre-hook)."""
    bm, bh, c = nargs["BLOCK_M"], nargs["BLOCK_H"], nargs["C"]
    nargs["x_desc"].block_shape = [bm, c]
    nargs["y_desc"].block_shape = [bm, c]
    nargs["w1_desc"].block_shape = [c, bh]
    nargs["w2_desc"].block_shape = [bh, c]


def _shared_bytes(config: triton.Config, c: int, itemsize: int) -> int:
    """x and y tiles, every stage's two weight slices and 1 KB for the TMA barriers."""
    bm, bh = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_H"]
    return 2 * bm * c * itemsize + config.num_stages * 2 * c * bh * itemsize + 1024


_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_H": bh}, num_warps=w, num_stages=s, pre_hook=_block_shapes)
    for bm, bh, w, s in _ROWS
]
_tuned = autotune(_CONFIGS, key=["C", "H", "SIZE_CLASS"])(_ffn_fwd_kernel)
_INTERP = {"BLOCK_M": 64, "BLOCK_H": 32}


# ----------------------------------------------------------------------------------------------
# Launcher (custom op) and the public function
# ----------------------------------------------------------------------------------------------


def fused_applies(x: Tensor, w1: Tensor, w2: Tensor) -> bool:
    """Whether the fused kernel runs these operands: 16-bit ``x [M, C]`` with C a power of two
    from 16 to 256, a hidden width that whole BLOCK_H slices cover, on a GPU with TMA (compute
    capability 9.0 or newer) and the shared memory the config needs (not a 99 KB consumer part),
    or the interpreter."""
    C, H = x.shape[-1], w1.shape[0]
    if not (x.dtype in (torch.float16, torch.bfloat16) and 16 <= C <= 256 and C & (C - 1) == 0 and H % 64 == 0):
        return False
    if interpreting():
        return True
    needed = max(_shared_bytes(c, C, x.element_size()) for c in _CONFIGS)
    return x.is_cuda and device_capability(x.device) >= 90 and shared_memory_limit(x.device) >= needed


def _aligned(t: Tensor) -> Tensor:
    """``t`` itself if TMA can read it (unit last stride, 16-byte aligned rows and start), else a copy."""
    if t.stride(-1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0:
        return t
    return t.contiguous()


@custom_op("zsw::ffn_fwd")
def ffn_fwd(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """Launch the fused feed-forward on ``x [M, C]`` (weights as ``nn.Linear`` stores them)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    M, C = x.shape
    H = w1.shape[0]
    y = x.new_empty(M, C)
    if M == 0:
        return y
    x = _aligned(x)
    w1t, w2t = w1.t().contiguous(), w2.t().contiguous()  # [C, H], [H, C]: K-major slices for TMA
    bm, bh = _INTERP["BLOCK_M"], _INTERP["BLOCK_H"]  # the tuner's pre-hook sets its own
    descs = (
        TensorDescriptor.from_tensor(x, [bm, C]),
        TensorDescriptor.from_tensor(w1t, [C, bh]),
        TensorDescriptor.from_tensor(w2t, [bh, C]),
    )
    args = (*descs, b1.contiguous(), b2.contiguous(), TensorDescriptor.from_tensor(y, [bm, C]), M, H, size_class(M))
    meta = dict(C=C, INTERP_BF16=interp_bf16(x.dtype))
    programs = persistent_programs(triton.cdiv(M, 64), 1, x.device, per_sm=1)
    if interpreting():
        _ffn_fwd_kernel[(programs,)](*args, **meta, **_INTERP)
    else:
        _tuned[(programs,)](*args, **meta)
    return y


@ffn_fwd.register_fake
def _(x, w1, b1, w2, b2):
    return x.new_empty(x.shape)


def feed_forward(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, *, fused: str = "auto") -> Tensor:
    """``fc2(GELU(fc1(x)))`` for ``x [..., C]``, fused where it applies (:func:`fused_applies`, no
    gradient needed), else the reference (:func:`zsw.kernels.reference.feed_forward`).

    ``fused``: ``"auto"`` runs the fused kernel where it applies on a GPU if it was the faster of
    the two on first use (timed once per GPU and shape and kept on disk,
    :func:`zsw.kernels._utils.measured_choice`; the interpreter runs the reference), ``"always"``
    wherever it applies, ``"never"`` the reference.
    """
    if fused not in ("auto", "always", "never"):
        raise ValueError(f"feed_forward: fused must be auto, always or never, got {fused!r}")
    dtype = compute_dtype(x)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w1, b1, w2, b2))
    x2 = x.reshape(-1, x.shape[-1]).to(dtype)
    if fused == "never" or needs_grad or b1 is None or b2 is None or not fused_applies(x2, w1, w2):
        return reference.feed_forward(x, w1, b1, w2, b2)
    weights = [t.to(dtype) for t in (w1, b1, w2, b2)]
    run_fused = functools.partial(ffn_fwd, x2, *weights)
    if fused == "auto":
        if interpreting() or torch.compiler.is_compiling():  # nothing to time (a trace holds no numbers)
            return reference.feed_forward(x, w1, b1, w2, b2)
        run_reference = functools.partial(reference.feed_forward, x2, *weights)
        key = ("feed_forward", x.device, dtype, x2.shape[1], w1.shape[0], size_class(x2.shape[0]))
        if measured_choice(key, {"fused": run_fused, "reference": run_reference}, __file__) == "reference":
            return reference.feed_forward(x, w1, b1, w2, b2)
    return run_fused().reshape(*x.shape[:-1], x2.shape[1])
