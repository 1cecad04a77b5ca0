"""Open an export directory as an inference backend: ONNX Runtime, TensorRT or torch-tensorrt.

The one place that knows all three runtimes; :mod:`zsw.registry` names
:func:`load_runtime_backend` as the loader of those backend kinds, so ``zsw.infer`` reaches them
without importing ``zsw.export``.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    decoder_weights: str | os.PathLike | None = None,
) -> RuntimeBackend:
    """A backend running the export in ``engine_dir``.

    Args:
        kind: ``onnxruntime``; ``tensorrt`` (TensorRT engines, or torch-tensorrt programs when the
            directory holds no engines); or ``torch-tensorrt``.
        engine_dir: a directory written by ``zsw export``.
        device: ``cpu`` or ``cuda[:i]``; default CUDA when available (ONNX Runtime falls back to the
            CPU, with a warning, when it has no CUDA provider).
        decoder_weights: ``onnxruntime`` only: the zsw checkpoint the graphs were exported from;
            its decoder then runs in PyTorch instead of the decoder graph (``onnxruntime+torch``).
            A checkpoint other than the export's source (by SHA-256) is refused.
    """
    if kind not in RUNTIMES:
        raise ConfigError(f"runtime backend must be one of {', '.join(RUNTIMES)}, got {kind!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    manifest = read_manifest(engine_dir)
    if kind == "onnxruntime":
        decoder = None
        if decoder_weights is not None:
            decoder = _source_decoder(manifest, decoder_weights)
        return OnnxRuntimeBackend(manifest, device, decoder=decoder)
    if decoder_weights is not None:
        raise ConfigError(f"decoder_weights is for the onnxruntime backend, not {kind}")
    if kind == "tensorrt" and not (manifest.data.get("tensorrt") or {}).get("engines"):
        if (manifest.data.get("torch_tensorrt") or {}).get("programs"):
            kind = "torch-tensorrt"
    if kind == "torch-tensorrt":
        return TorchTensorRTBackend(manifest, device)
    return TensorRTBackend(manifest, device)


def _source_decoder(manifest, weights: str | os.PathLike):
    """The decoder of ``weights``, which must be the checkpoint ``manifest``'s graphs came from."""
    from zsw import checkpoint
    from zsw.io import checkpoint_sha256

    source = (manifest.data.get("source") or {}).get("sha256")
    if not Path(weights).is_file():
        raise ConfigError(f"decoder weights {weights} do not exist")
    if source is None or checkpoint_sha256(weights) != source:
        raise ConfigError(
            f"{weights} is not the checkpoint the graphs in {manifest.root} were exported from; "
            "export them again from it (`zsw export --weights ...`)"
        )
    return checkpoint.load_decoder(weights)
