"""The dispatch behind :mod:`zsw.kernels`' public functions (re-exported there): which of a Triton
kernel, a CPU inference path and the pure-PyTorch reference runs each call.

====================  ===========================================================================
``impl``              what runs
====================  ===========================================================================
``"torch"``           the reference, always
``"triton"``          the Triton kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)
``"auto"`` / None     ``ZSW_KERNELS=torch|triton`` if set, else Triton for CUDA tensors -- except
                      where the reference was measured faster on a GPU (below) -- and PyTorch
                      for CPU tensors: the inference paths of :mod:`zsw.kernels.cpu` when no
                      gradient is needed (same math, fused CPU attention), the reference otherwise
====================  ===========================================================================

Measured faster on an NVIDIA H200 (``bench/results/h200/README.md``), so ``auto`` runs the reference
there: the attention and the occupancy MLP in IEEE fp32 (no TF32; image to mesh 0.48 s on the
references against 0.82 s on the kernels), and the occupancy MLP when it needs a gradient
(forward and backward at training size 16.6 ms against 21.1 ms). Asking for ``"triton"`` (or
``ZSW_KERNELS=triton``) still runs the kernels.

Kernels that no GPU has timed yet decide on the device itself: the occupancy MLP's on-chip
inference forward and the fused feed-forward (Hopper and newer, 16-bit, inference) are timed
against the layered forward and the reference on the first call of each shape and size class, and
the faster one runs from then on (``zsw.kernels._utils.measured_choice``; docs/kernels.md).

Inside :func:`exportable` (and during ONNX export) everything runs the reference, because Triton
kernels do not trace. A Triton implementation registers itself by living in
``kernels/<module>.py``, defining the public function of the same name, and being named in
``_TRITON_MODULES``; modules that are absent or fail to import (no triton on this platform) leave
only the reference available.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from zsw.kernels import cpu, reference
from zsw.kernels.reference import Chamfer, NearestNeighbors

__all__ = [
    "linear",
    "feed_forward",
    "point_cross_attention",
    "occupancy_mlp",
    "nearest_neighbors",
    "chamfer_distance",
    "NearestNeighbors",
    "Chamfer",
    "exportable",
    "set_exportable",
    "is_exportable",
    "resolve_impl",
    "requested_impl",
    "interpreting",
    "triton_available",
    "reference",
    "IMPLS",
]

#: accepted values of ``impl`` and of the ``ZSW_KERNELS`` environment variable
IMPLS = ("auto", "torch", "triton")

# public function -> module in kernels/ that holds its Triton implementation
_TRITON_MODULES = {
    "feed_forward": "feed_forward",
    "point_cross_attention": "point_cross_attention",
    "occupancy_mlp": "occupancy_mlp",
    "nearest_neighbors": "chamfer",
    "chamfer_distance": "chamfer",
}
_triton_impls: dict[str, Callable] = {}
_triton_errors: dict[str, str] = {}


def _load_triton_impls() -> None:
    # Importing a submodule sets the package attribute of the same name (``zsw.kernels.occupancy_mlp``
    # = the module); the package keeps its public functions over them (``zsw.kernels._Package``).
    for name, module in _TRITON_MODULES.items():
        if not os.path.exists(os.path.join(os.path.dirname(__file__), f"{module}.py")):
            _triton_errors[name] = f"kernels/{module}.py is not part of this build"
            continue
        try:
            mod = importlib.import_module(f"zsw.kernels.{module}")
            _triton_impls[name] = getattr(mod, name)
        except (ImportError, AttributeError) as e:  # no triton on this platform, or no such function
            _triton_errors[name] = f"{type(e).__name__}: {e}"


_triton_loaded = False


def _ensure_triton() -> None:
    """Import the Triton kernel modules once (triton's import costs ~0.2-0.3 s of a CPU process
    that never runs them: done at import time only where CUDA or the interpreter can use them)."""
    global _triton_loaded
    if not _triton_loaded:
        _triton_loaded = True
        _load_triton_impls()


_exportable = False


def set_exportable(flag: bool) -> None:
    """Globally route every kernel call to the PyTorch reference (for ONNX/TensorRT export)."""
    global _exportable
    _exportable = bool(flag)


def is_exportable() -> bool:
    """True inside :func:`exportable` or while ``torch.onnx`` is exporting."""
    # torch.onnx is imported by whoever exports (importing it here would cost ~0.1 s of every process)
    return _exportable or ("torch.onnx" in sys.modules and torch.onnx.is_in_onnx_export())


@contextlib.contextmanager
def exportable(flag: bool = True) -> Iterator[None]:
    """Context manager form of :func:`set_exportable`."""
    previous = _exportable
    set_exportable(flag)
    try:
        yield
    finally:
        set_exportable(previous)


def interpreting() -> bool:
    """Whether Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``): for
    correctness, not speed."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available(name: str) -> bool:
    """Whether the Triton implementation of kernel ``name`` could be imported."""
    _ensure_triton()
    return name in _triton_impls


def _requested(impl: str | None) -> str:
    """``impl``, with ``auto`` / None replaced by ``ZSW_KERNELS`` when that is set; both checked."""
    impl = "auto" if impl is None else impl
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = os.environ.get("ZSW_KERNELS", "auto").strip().lower() or "auto"
        if impl not in IMPLS:
            raise ValueError(f"ZSW_KERNELS must be one of {IMPLS}, got {impl!r}")
    return impl


def requested_impl(impl: str | None = None) -> str:
    """The implementation asked for: ``impl``, or ``ZSW_KERNELS`` in place of ``auto`` / None.
    Raises ValueError naming a value that is not one of :data:`IMPLS`."""
    return _requested(impl)


def resolve_impl(name: str, impl: str | None, device: torch.device) -> str:
    """Decide whether kernel ``name`` runs ``"torch"`` or ``"triton"`` for tensors on ``device``."""
    impl = _requested(impl)
    if is_exportable():
        return "torch"
    if impl == "auto":
        if device.type == "cuda" and triton_available(name):
            return "triton"
        if device.type == "cuda" and name not in _warned:
            _warned.add(name)
            warnings.warn(
                f"zsw.kernels.{name}: Triton kernel unavailable ({_triton_errors.get(name)}); "
                "using the PyTorch reference",
                stacklevel=3,
            )
        return "torch"
    if impl == "triton":
        if not triton_available(name):
            raise RuntimeError(f"zsw.kernels.{name}: Triton kernel unavailable ({_triton_errors.get(name)})")
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(
                f"zsw.kernels.{name}: Triton needs CUDA tensors, or TRITON_INTERPRET=1 to run on {device.type}"
            )
    return impl


_warned: set[str] = set()


def _reference_measured_faster(name: str, *tensors: Tensor) -> bool:
    """Whether kernel ``name`` on these inputs is a case where the reference beat the Triton kernel
    on a GPU (the table in this module's docstring), so that ``auto`` runs the reference. Asked only
    once a Triton kernel was resolved, so the kernels' helpers (and triton) are loaded."""
    if name not in ("point_cross_attention", "occupancy_mlp") or not tensors:
        return False
    from zsw.kernels._utils import compute_dtype, dot_precision  # the kernels' own dtype and precision rules

    if dot_precision(compute_dtype(tensors[0])) == "ieee":
        return True
    return name == "occupancy_mlp" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _pick(name: str, impl: str | None, device: torch.device, *tensors: Tensor) -> Callable:
    """The implementation to call. A PyTorch call that nothing forced to the reference (``impl``
    or ``ZSW_KERNELS``), on CPU tensors without autograd and outside export, takes the inference
    path of :mod:`zsw.kernels.cpu` where there is one."""
    if resolve_impl(name, impl, device) == "triton":
        if _requested(impl) == "auto" and _reference_measured_faster(name, *tensors):
            return getattr(reference, name)
        return _triton_impls[name]
    if _requested(impl) == "auto" and name in cpu.__all__ and not is_exportable() and cpu.usable(*tensors):
        return getattr(cpu, name)
    return getattr(reference, name)


def point_cross_attention(
    q: Tensor,  # [B, H, N, D]
    k: Tensor,  # [B, H, N, D]
    v: Tensor,  # [B, H, N, D]
    k_latent: Tensor,  # [B, H, L, D]
    v_latent: Tensor,  # [B, H, L, D]
    scale: float | None = None,
    *,
    impl: str | None = None,
) -> Tensor:  # [B, H, N, D]
    """Each point attends to the L latent keys plus its own key; see
    :func:`zsw.kernels.reference.point_cross_attention` for the exact semantics."""
    return _pick("point_cross_attention", impl, q.device, q, k, v, k_latent, v_latent)(
        q, k, v, k_latent, v_latent, scale
    )


def linear(
    x: Tensor,  # [..., C_in]
    weight: Tensor,  # [C_out, C_in]
    bias: Tensor | None = None,  # [C_out]
    activation: str | None = None,  # None or "gelu" (exact)
    *,
    impl: str | None = None,
) -> Tensor:  # [..., C_out]
    """``F.linear`` (then GELU); see :func:`zsw.kernels.reference.linear`. No Triton kernel (cuBLAS
    is the GEMM on a GPU): CPU inference under ``auto`` takes :func:`zsw.kernels.cpu.linear`."""
    if _requested(impl) == "auto" and not is_exportable() and cpu.usable(x, weight):
        return cpu.linear(x, weight, bias, activation)
    return reference.linear(x, weight, bias, activation)


def feed_forward(
    x: Tensor,  # [..., C]
    w1: Tensor,  # [H, C]
    b1: Tensor | None,  # [H]
    w2: Tensor,  # [C, H]
    b2: Tensor | None,  # [C]
    *,
    impl: str | None = None,
) -> Tensor:  # [..., C]
    """A transformer block's MLP, ``fc2(GELU(fc1(x)))``; see :func:`zsw.kernels.reference.feed_forward`.
    The Triton path (:mod:`zsw.kernels.feed_forward`) fuses it where it applies for inference on a
    GPU with TMA, if it measured faster there on first use, and runs the reference elsewhere."""
    return _pick("feed_forward", impl, x.device, x, w1, w2)(x, w1, b1, w2, b2)


def occupancy_mlp(
    x: Tensor,  # [..., C_in]
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None],
    skip_in: Sequence[int] = (2, 4, 6),
    beta: float = 100.0,
    *,
    impl: str | None = None,
) -> Tensor:  # [..., C_out]
    """The Softplus skip-MLP; see :func:`zsw.kernels.reference.occupancy_mlp`."""
    if not (math.isfinite(beta) and beta > 0):  # Softplus(beta) approximates ReLU only for beta > 0
        raise ValueError(f"occupancy_mlp: beta must be a finite number > 0, got {beta}")
    return _pick("occupancy_mlp", impl, x.device, x, *weights)(x, weights, biases, skip_in, beta)


def nearest_neighbors(
    a: Tensor,  # [B, N, 3]
    b: Tensor,  # [B, M, 3]
    lengths_a: Tensor | None = None,
    lengths_b: Tensor | None = None,
    *,
    impl: str | None = None,
) -> NearestNeighbors:
    """Squared distance and index of each point's nearest neighbour; see
    :func:`zsw.kernels.reference.nearest_neighbors`."""
    return _pick("nearest_neighbors", impl, a.device)(a, b, lengths_a, lengths_b)


def chamfer_distance(
    a: Tensor,  # [B, N, 3]
    b: Tensor,  # [B, M, 3]
    lengths_a: Tensor | None = None,
    lengths_b: Tensor | None = None,
    *,
    impl: str | None = None,
) -> Chamfer:
    """Nearest-neighbour squared distances in both directions; see
    :func:`zsw.kernels.reference.chamfer_distance`."""
    return _pick("chamfer_distance", impl, a.device)(a, b, lengths_a, lengths_b)


if interpreting() or torch.cuda.is_available():
    _ensure_triton()  # now, not inside a function that torch.compile is tracing
