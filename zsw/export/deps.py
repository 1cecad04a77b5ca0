"""Optional dependencies of the export and runtime paths, with one-line answers when they are missing.

ONNX export and ONNX Runtime come with ``pip install "zsw[export]"``; TensorRT, torch-tensorrt and
pycuda with ``pip install "zsw[trt]"``. Nothing here is imported before it is needed, so the rest of
zsw works without them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from zsw.errors import ZswError, reason

__all__ = ["require", "require_cuda", "EXTRAS"]

#: import name -> (pip distribution, zsw extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "tensorrt": ("tensorrt", "trt"),
    "torch_tensorrt": ("torch-tensorrt", "trt"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise a :class:`ZswError` naming the extra that installs it. A package
    that is installed but cannot load its native libraries counts as missing too: torch-tensorrt
    raises ``FileNotFoundError`` ("Could not find libnvinfer...") when TensorRT's libraries are absent."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as e:
        dist, extra = EXTRAS.get(module, (module, "export"))
        raise ZswError(
            f"{purpose} needs the `{dist}` package, which cannot be imported ({reason(e)}); "
            f'install it with: pip install "zsw[{extra}]"'
        ) from None


def require_cuda(purpose: str) -> None:
    """Raise a :class:`ZswError` unless PyTorch sees a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        raise ZswError(f"{purpose} needs an NVIDIA GPU with CUDA, and PyTorch sees none on this machine")
