"""Open an export directory as an inference backend: ONNX Runtime, TensorRT or torch-tensorrt.

The one place that knows all three runtimes; :mod:`zsw.registry` names
:func:`load_runtime_backend` as the loader of those backend kinds, so ``zsw.infer`` reaches them
without importing ``zsw.export``.
"""

from __future__ import annotations

import os

import torch

from zsw.errors import ConfigError
from zsw.export.manifest import read_manifest
from zsw.export.runtime import OnnxRuntimeBackend, RuntimeBackend
from zsw.export.tensorrt import TensorRTBackend
from zsw.export.torch_tensorrt import TorchTensorRTBackend
from zsw.registry import RUNTIMES

__all__ = ["load_runtime_backend", "RUNTIMES"]


def load_runtime_backend(
    kind: str,
    engine_dir: str | os.PathLike,
    device: str | torch.device | None = None,
) -> RuntimeBackend:
    """A backend running the export in ``engine_dir``.

    Args:
        kind: ``onnxruntime``; ``tensorrt`` (TensorRT engines, or torch-tensorrt programs when the
            directory holds no engines); or ``torch-tensorrt``.
        engine_dir: a directory written by ``zsw export``.
        device: ``cpu`` or ``cuda[:i]``; default CUDA when available (ONNX Runtime falls back to the
            CPU, with a warning, when it has no CUDA provider).
    """
    if kind not in RUNTIMES:
        raise ConfigError(f"runtime backend must be one of {', '.join(RUNTIMES)}, got {kind!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    manifest = read_manifest(engine_dir)
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(manifest, device)
    if kind == "tensorrt" and not (manifest.data.get("tensorrt") or {}).get("engines"):
        if (manifest.data.get("torch_tensorrt") or {}).get("programs"):
            kind = "torch-tensorrt"
    if kind == "torch-tensorrt":
        return TorchTensorRTBackend(manifest, device)
    return TensorRTBackend(manifest, device)
