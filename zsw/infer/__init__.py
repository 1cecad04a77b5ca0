"""Inference: backends, grid extraction, meshes, and the ``zsw.reconstruct`` API."""

from zsw.infer.backend import Backend, Prediction, TorchBackend, load_backend, predict

__all__ = ["Backend", "Prediction", "TorchBackend", "load_backend", "predict"]
