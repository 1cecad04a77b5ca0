"""The precision a reconstruction computes in: ``--precision auto|fp32|bf16|fp16``.

``auto`` is bf16 autocast on CUDA devices that support it (the Triton kernels' tensor-core paths)
and fp32 on the CPU. Exported engines keep the precision they were built with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zsw.errors import ConfigError, OptionError
from zsw.hub import device_type
from zsw.infer.settings import PRECISIONS

if TYPE_CHECKING:  # resolving a precision for the CPU needs no PyTorch (a rerun's plan)
    import torch

__all__ = ["resolve_precision", "run_precision", "autocast"]


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto``: bf16 on CUDA devices that support it (tensor cores), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = device_type(device)
    if precision == "auto":
        if kind == "cuda":
            import torch

            if torch.cuda.is_bf16_supported():
                return "bf16"
        return "fp32"
    if precision == "fp16" and kind != "cuda":
        raise OptionError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


def run_precision(kind: str, precision: str, device: torch.device | str) -> str:
    """The precision a backend of ``kind`` computes in, as ``result.json`` records it: the PyTorch
    model's autocast (:func:`resolve_precision`); fp32 for ``onnxruntime+torch`` (fp32 graphs and
    an fp32 decoder); ``engine`` for exported engines, which keep the precision they were built with."""
    if kind == "torch":
        return resolve_precision(precision, device)
    return "fp32" if kind == "onnxruntime+torch" else "engine"


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision (a no-op for fp32 and exported engines)."""
    import contextlib

    import torch

    if precision not in ("bf16", "fp16"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
