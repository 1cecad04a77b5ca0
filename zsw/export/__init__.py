"""Deployment: ONNX export, TensorRT engines, torch-tensorrt, and runtime backends.

A model is deployed as three graphs with the shared PyTorch glue between them
(:mod:`zsw.export.graphs`): ``pixel`` (image -> depth, intrinsics, masks), ``encoder`` (lifted
visible surface -> per-block latent K/V) and ``decoder`` (latents + query points -> occupancy
logits). An export directory holds them with an ``export.json`` manifest (:mod:`zsw.export.manifest`):

* :func:`zsw.export.onnx.export_onnx` -- ONNX graphs, checked and validated against eager PyTorch;
* :func:`zsw.export.tensorrt.build_engines` -- TensorRT engines built from them, fingerprinted;
* :func:`zsw.export.torch_tensorrt.compile_torch_tensorrt` -- torch-tensorrt programs;
* :func:`zsw.export.backends.load_runtime_backend` -- a :class:`zsw.infer.backend.Backend` over any
  of them (``zsw reconstruct --backend onnxruntime|tensorrt --engine DIR``).

Optional packages (``onnx``, ``onnxruntime``, ``tensorrt``, ``torch_tensorrt``) are imported only when
used; without them each entry point says which extra to install (:mod:`zsw.export.deps`).
"""

from __future__ import annotations

__all__ = ["export_onnx", "build_engines", "compile_torch_tensorrt", "load_runtime_backend", "read_manifest"]


def __getattr__(name: str):
    # lazy: importing zsw.export must not import torch, onnx or tensorrt
    if name == "export_onnx":
        from zsw.export.onnx import export_onnx

        return export_onnx
    if name == "build_engines":
        from zsw.export.tensorrt import build_engines

        return build_engines
    if name == "compile_torch_tensorrt":
        from zsw.export.torch_tensorrt import compile_torch_tensorrt

        return compile_torch_tensorrt
    if name == "load_runtime_backend":
        from zsw.export.backends import load_runtime_backend

        return load_runtime_backend
    if name == "read_manifest":
        from zsw.export.manifest import read_manifest

        return read_manifest
    raise AttributeError(f"module 'zsw.export' has no attribute {name!r}")
