"""Assertion and error-ratio utilities for kernel tests and benchmarks.

Test modules run with ``--import-mode=importlib`` and cannot import each other, so what they share
lives here (as Liger, FLA and pytorch3d keep theirs in the package).

Tolerance policy (DESIGN section 3):

* fp32: :func:`assert_close` with explicit ``atol``/``rtol``;
* fp16/bf16: :func:`assert_relative`, the flash-attention rule -- the kernel's error against an fp32
  (or fp64) reference may be at most ``factor`` times the error of PyTorch doing the same math in
  the low dtype (2x for outputs, 3x for gradients), plus a tiny floor. It calibrates itself per
  dtype and shape instead of relying on hand-tuned tolerances.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "max_error",
    "rms_ratio",
    "describe_mismatch",
    "assert_close",
    "assert_relative",
    "nan_poison",
    "nn_margin",
]


def max_error(actual: Tensor, expected: Tensor) -> float:
    """Largest absolute difference (in fp64); ``inf`` if NaN/inf appear in one tensor but not the other."""
    a, e = actual.detach().double(), expected.detach().double()
    if not torch.equal(torch.isnan(a), torch.isnan(e)) or not torch.equal(torch.isinf(a), torch.isinf(e)):
        return float("inf")
    finite = torch.isfinite(e)
    if not torch.equal(a[~finite], e[~finite]):  # same infinities, same signs
        return float("inf")
    if not finite.any():
        return 0.0
    return (a[finite] - e[finite]).abs().max().item()


def rms_ratio(actual: Tensor, expected: Tensor) -> float:
    """``||actual - expected||_2 / ||expected||_2`` over finite entries (FLA's error ratio)."""
    a, e = actual.detach().double(), expected.detach().double()
    finite = torch.isfinite(a) & torch.isfinite(e)
    denom = e[finite].norm().item()
    return (a[finite] - e[finite]).norm().item() / max(denom, 1e-300)


def describe_mismatch(name: str, actual: Tensor, expected: Tensor) -> str:
    """One paragraph: shapes, max error with its location and values, RMS ratio, NaN counts."""
    a, e = actual.detach().double(), expected.detach().double()
    lines = [f"{name}: shape {tuple(actual.shape)} {actual.dtype} vs {tuple(expected.shape)} {expected.dtype}"]
    if a.shape == e.shape and a.numel():
        diff = (a - e).abs().nan_to_num(nan=float("inf"))
        flat = int(diff.argmax())
        loc = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
        lines.append(
            f"  max |diff| {diff.reshape(-1)[flat].item():.3e} at {loc}: "
            f"actual {a.reshape(-1)[flat].item():.6g}, expected {e.reshape(-1)[flat].item():.6g}"
        )
        lines.append(f"  rms ratio {rms_ratio(actual, expected):.3e}; max |expected| {e.abs().max().item():.3e}")
        lines.append(f"  NaN: actual {int(torch.isnan(a).sum())}, expected {int(torch.isnan(e).sum())}")
    return "\n".join(lines)


def assert_close(actual: Tensor, expected: Tensor, *, atol: float, rtol: float, name: str = "tensor") -> None:
    """``|actual - expected| <= atol + rtol * |expected|`` elementwise (NaN never equal), verbosely."""
    if actual.shape != expected.shape:
        raise AssertionError(describe_mismatch(name, actual, expected))
    a, e = actual.detach().double(), expected.detach().double()
    ok = (a - e).abs() <= atol + rtol * e.abs()
    ok |= (a == e) & torch.isinf(e)
    if not bool(ok.all()):
        bad = int((~ok).sum())
        raise AssertionError(
            f"{bad} of {ok.numel()} elements differ beyond atol={atol:g}, rtol={rtol:g}\n"
            + describe_mismatch(name, actual, expected)
        )


def assert_relative(
    actual: Tensor,
    reference: Tensor,
    low_precision: Tensor,
    *,
    factor: float = 2.0,
    floor: float = 1e-5,
    name: str = "tensor",
) -> tuple[float, float]:
    """The flash-attention rule: ``err(actual, reference) <= factor * err(low_precision, reference) + floor``.

    Args:
        actual: the kernel's result in the low dtype.
        reference: the same computation in fp32 or fp64 from the same (low-dtype) inputs.
        low_precision: the PyTorch reference run in the low dtype.
        factor: 2 for outputs, 3 for gradients.
        floor: absolute slack for the case where PyTorch happens to be exact.

    Returns:
        ``(kernel error, torch error)``, for logging.
    """
    if actual.shape != reference.shape or low_precision.shape != reference.shape:
        raise AssertionError(describe_mismatch(name, actual, reference))
    err = max_error(actual, reference)
    err_pt = max_error(low_precision, reference)
    if not err <= factor * err_pt + floor:
        raise AssertionError(
            f"{name}: kernel error {err:.3e} > {factor:g} x torch-{low_precision.dtype} error {err_pt:.3e} "
            f"+ {floor:g}\n" + describe_mismatch(name, actual, reference)
        )
    return err, err_pt


def _poison(t: Tensor) -> Tensor:
    if t.is_floating_point() or t.is_complex():
        return t.fill_(float("nan"))
    if t.dtype != torch.bool and t.numel():
        return t.fill_(torch.iinfo(t.dtype).min)  # an impossible index / length
    return t


@contextlib.contextmanager
def nan_poison() -> Iterator[None]:
    """Fill every tensor from ``torch.empty*`` / ``Tensor.new_empty`` with NaN (ints: their minimum).

    Inside it, an output element that a kernel forgets to write shows up as NaN (or a huge negative
    index) instead of passing by luck with whatever the allocator handed back (FLA's conftest trick).
    """
    originals = {
        "empty": torch.empty,
        "empty_like": torch.empty_like,
        "empty_strided": torch.empty_strided,
    }
    new_empty = torch.Tensor.new_empty

    def wrap(fn):
        def poisoned(*args, **kwargs):
            t = fn(*args, **kwargs)
            return _poison(t) if isinstance(t, Tensor) and t.device.type != "meta" else t

        return poisoned

    try:
        for name, fn in originals.items():
            setattr(torch, name, wrap(fn))
        torch.Tensor.new_empty = wrap(new_empty)
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)
        torch.Tensor.new_empty = new_empty


@torch.no_grad()
def nn_margin(a: Tensor, b: Tensor) -> float:
    """Smallest relative gap between the nearest and the second-nearest point of ``b`` over the
    points of ``a`` (fp64). Indices can only be compared exactly when it is well above fp32 noise."""
    if b.shape[1] < 2 or a.shape[1] == 0:
        return float("inf")
    d = torch.cdist(a.double(), b.double()).square()  # [B, N, M]
    two = d.topk(2, dim=-1, largest=False).values
    return ((two[..., 1] - two[..., 0]) / two[..., 1].clamp_min(1e-300)).min().item()
