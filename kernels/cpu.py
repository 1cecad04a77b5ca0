"""Inference paths of the decoder's kernels for CPU tensors.

:func:`zsw.kernels.point_cross_attention` and :func:`zsw.kernels.occupancy_mlp` run these for CPU
tensors under ``impl="auto"`` when no gradient is needed (``zsw reconstruct`` and ``zsw eval`` on
a CPU): the same math as :mod:`zsw.kernels.reference` to float rounding, arranged for PyTorch's CPU
kernels instead of for reading. ``impl="torch"`` still runs the reference (the benchmarks'
baseline and the tests' oracle).

* Attention: PyTorch's fused (flash) CPU attention over the L latent tokens, which returns the
  log-sum-exp ``lse`` of its logits, plus the point's own key folded in exactly:
  ``softmax([l_1..l_L, s]) = [(1 - w) softmax(l), w]`` with ``w = sigmoid(s - lse)``, so
  ``out = out_latent + w (v - out_latent)``. The ``[N, L + 1]`` weight matrix is never built:
  about 5x faster than the reference at N = 65,536, L = 198.
* Linear layers (the decoder's qkv and output projections and its MLP): oneDNN's fused GEMM with
  the bias (and the exact GELU) in its epilogue, the primitive PyTorch's own inductor emits for CPU
  linears: ``addmm`` first copies the broadcast bias into its ``[N, C_out]`` output and GELU is a
  second pass over it. 65,536 x 64 -> 256 with GELU, two cores: 90 -> 50 ms, bit-identical.
* Occupancy MLP: the skip layers split their weight instead of concatenating
  (``cat(h, x) W^T / sqrt 2 = (h W_h^T + x W_x^T) / sqrt 2``, one ``addmm`` each, no copy of
  ``[h, x]``), and Softplus first clamps its input at ``-threshold / beta``: below it the
  exponential underflows to subnormal floats, which x86 CPUs compute up to 10x slower, and a
  trained decoder's activations lie there by the million (best of 20 for 65,536 x 64 activations
  spread like a trained model's, one core: ``F.softplus`` 56 ms, ``relu + log1p(exp(-beta|z|))``
  35 ms, clamped ``F.softplus`` 21 ms). The clamp adds at most ``exp(-threshold) / beta``
  (2e-11) to an output. In fp32 it is then computed with ``log`` instead of ``log1p``, which is
  slow on some CPUs (:func:`_softplus`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zsw.kernels import reference

__all__ = ["point_cross_attention", "occupancy_mlp", "linear", "feed_forward", "usable"]


def usable(*tensors: Tensor) -> bool:
    """Whether the inference paths apply: CPU tensors and no gradient to compute."""
    if any(t.device.type != "cpu" for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


# fused CPU attention that also returns the log-sum-exp of its logits (None: not in this build)
_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def point_cross_attention(
    q: Tensor, k: Tensor, v: Tensor, k_latent: Tensor, v_latent: Tensor, scale: float | None = None
) -> Tensor:  # [B, H, N, D]
    """:func:`zsw.kernels.reference.point_cross_attention` through fused CPU attention."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    # the fused kernel computes in float32 and stops the process (SIGFPE) on 0 points or 0 tokens
    if _FLASH is None or q.dtype == torch.float64 or q.shape[-2] == 0 or k_latent.shape[-2] == 0:
        return reference.point_cross_attention(q, k, v, k_latent, v_latent, scale)
    dtype = q.dtype
    out, lse = _FLASH(q, k_latent.to(dtype), v_latent.to(dtype), 0.0, False, scale=scale)[:2]  # [B,H,N,D], [B,H,N]
    own = (q.float() * k.float()).sum(dim=-1, keepdim=True) * scale  # [B, H, N, 1]
    w = torch.sigmoid(own - lse[..., None])
    out = out.float()
    return out.add_(w * (v.float() - out)).to(dtype)


# oneDNN's fused linear + pointwise epilogue (None: not in this build)
_LINEAR_POINTWISE = None
if torch.backends.mkldnn.is_available():
    _LINEAR_POINTWISE = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_LINEAR_CHECKED: bool | None = None  # whether the fused linear computes what the reference does here


def _fused_linear_works() -> bool:
    """Once per process: the fused linear, registered but built for another CPU than this one (an
    Arm build's oneDNN), may raise or differ; then every linear takes the reference path."""
    global _LINEAR_CHECKED
    if _LINEAR_CHECKED is None:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=g) for shape in ((5, 7), (3, 7), (3,)))
        try:
            with torch.no_grad():
                ok = all(
                    torch.allclose(
                        _LINEAR_POINTWISE(x, w, b, attr, [], algorithm),
                        reference.linear(x, w, b, activation),
                        rtol=1e-4,
                        atol=1e-5,
                    )
                    for attr, algorithm, activation in (("none", "", None), ("gelu", "none", "gelu"))
                )
        except Exception:  # noqa: BLE001  (any failure of a private op means: do not use it)
            ok = False
        _LINEAR_CHECKED = ok
    return _LINEAR_CHECKED


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """:func:`zsw.kernels.reference.linear` through oneDNN's fused linear (fp32, no autocast)."""
    if (
        _LINEAR_POINTWISE is None
        or activation not in (None, "gelu")
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (bias is not None and bias.dtype != torch.float32)
        or _autocast_on()
        or not _fused_linear_works()
    ):
        return reference.linear(x, weight, bias, activation)
    lead = x.shape[:-1]
    attr, algorithm = ("gelu", "none") if activation == "gelu" else ("none", "")
    y = _LINEAR_POINTWISE(x.reshape(-1, x.shape[-1]), weight, bias, attr, [], algorithm)
    return y.reshape(*lead, y.shape[-1])


def feed_forward(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:
    """:func:`zsw.kernels.reference.feed_forward` through :func:`linear` (GELU fused into the first)."""
    return linear(linear(x, w1, b1, "gelu"), w2, b2)


def _softplus(z: Tensor, beta: float, threshold: float = 20.0) -> Tensor:
    """``F.softplus(z, beta, threshold)`` without subnormal exponentials and, in fp32, without
    ``log1p``: ``max(z, log(1 + exp(beta z)) / beta)``, the exponent clamped to +-threshold.

    ``log1p`` is PyTorch's slowest unary op on some CPUs (AMD EPYC, AVX-512: 5.9 ms per million
    floats against 2.2 ms for ``log``), which made Softplus 39 % of the packaged decoder's time
    there; this form takes a 16,384-point decoder call from 129 to 98 ms on it. ``1 + e`` drops
    ``e`` below 2^-24, so outputs differ from ``F.softplus`` by at most a unit in the last place
    (1.5e-8 measured; the clamps add at most ``exp(-threshold) / beta`` = 2e-11). In 16-bit
    floats that rounding would be 2^-8: there the clamped ``F.softplus`` runs. ``z`` is clamped
    in place."""
    if z.dtype != torch.float32:
        return F.softplus(z.clamp_(min=-threshold / beta), beta=beta, threshold=threshold)
    t = torch.mul(z, beta).clamp_(min=-threshold, max=threshold).exp_().add_(1.0).log_().div_(beta)
    return t.clamp_(min=z)  # = z where beta z > threshold, as F.softplus


def occupancy_mlp(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None],
    skip_in: Sequence[int] = (2, 4, 6),
    beta: float = 100.0,
) -> Tensor:  # [..., C_out]
    """:func:`zsw.kernels.reference.occupancy_mlp` with split skip weights."""
    if len(weights) != len(biases):
        raise ValueError(f"occupancy_mlp: {len(weights)} weights but {len(biases)} biases")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    h = x2
    last = len(weights) - 1
    r = 1.0 / math.sqrt(2)
    for l, (w, b) in enumerate(zip(weights, biases)):
        w = w.to(h.dtype)
        b = b.to(h.dtype) if b is not None else None
        if l in skip_in:
            n = h.shape[-1]
            z = x2 @ w[:, n:].t()
            z = z.addmm_(h, w[:, :n].t()).mul_(r)
            if b is not None:
                z.add_(b)
        else:
            z = torch.addmm(b, h, w.t()) if b is not None else h @ w.t()
        h = _softplus(z, beta) if l < last else z
    return h.reshape(*lead, h.shape[-1])
