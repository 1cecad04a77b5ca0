"""Inference backends: the three stages every runtime implements, and the glue between them.

A reconstruction runs three networks with fixed glue in between::

    pixel(image [B,3,S,S], text [B,T]) -> depth, K, visible/occluder mask logits   (PixelOutput)
    lift_surface(...)                   -> normalised visible surface + encoder input (shared glue)
    encode(encoder_input, text)         -> per-block latent K/V                       (DecoderLatents)
    decode(latents, points [B,N,3])     -> occupancy logits [B, N], called chunk by chunk

:class:`TorchBackend` runs them with the PyTorch model (Triton kernels on CUDA). ONNX Runtime and
TensorRT backends (``zsw.export.runtime``) implement the same :class:`Backend` protocol from the
exported graphs, so grid extraction, meshing and every output file are backend-independent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from zsw.config import ModelConfig
from zsw.infer import settings as _settings
from zsw.model import DecoderLatents, PixelOutput, SurfacePrediction, ZeroShapeW, lift_surface

__all__ = ["Backend", "TorchBackend", "Prediction", "predict", "load_backend", "BACKENDS"]

BACKENDS = _settings.BACKENDS  # what users pick; zsw.registry maps each to its loader


@runtime_checkable
class Backend(Protocol):
    """What a runtime must provide to reconstruct with zsw."""

    name: str
    config: ModelConfig
    device: torch.device

    def embed_prompts(self, prompt: str | Sequence[str] | None, batch: int) -> Tensor | None:  # [B, T]
        ...

    def pixel(self, image: Tensor, text: Tensor | None) -> PixelOutput: ...

    def encode(self, encoder_input: Tensor, text: Tensor | None) -> DecoderLatents: ...

    def decode(self, latents: DecoderLatents, points: Tensor) -> Tensor:  # [B, N, 3] -> [B, N]
        ...


@dataclass
class Prediction(SurfacePrediction):
    """Per-image results of the pixel model and the encoder; decode points with ``backend.decode``."""

    latents: DecoderLatents


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def predict(
    backend: Backend,
    image: Tensor,  # [B, 3, S, S] in [0, 1], on backend.device
    prompt: str | Sequence[str] | None = None,
    mask: Tensor | None = None,
    occluder_mask: Tensor | None = None,
    timings: dict[str, float] | None = None,
    pixel: PixelOutput | None = None,
    pixel_fn: Callable[[Tensor, Tensor | None], PixelOutput] | None = None,
) -> Prediction:
    """Run the pixel model and the encoder of ``backend`` with the shared glue in between.

    ``pixel``: the pixel model's output for ``image`` and ``prompt`` when the caller already has it
    (it is not run again). ``pixel_fn``: what runs the pixel model on ``(image, text)`` otherwise
    (default ``backend.pixel``; ``--tta flip-pixel`` passes one that also runs it on the mirrored
    image, :func:`zsw.infer.tta.flip_averaged_pixel`). When ``timings`` is a dict, the
    seconds spent in the pixel model (``pixel``, prompt embedding included) and in lifting plus
    encoding (``encode``) are added to it; CUDA is synchronised around each stage for that, so
    leave it None when not measuring.
    """
    import time

    if timings is not None:
        _sync(backend.device)
        t0 = time.perf_counter()
    text = backend.embed_prompts(prompt, image.shape[0])
    pix = (pixel_fn or backend.pixel)(image, text) if pixel is None else pixel
    if timings is not None:
        _sync(backend.device)
        t1 = time.perf_counter()
        timings["pixel"] = timings.get("pixel", 0.0) + t1 - t0
    lifted = lift_surface(pix, backend.config, mask, occluder_mask)
    latents = backend.encode(lifted.encoder_input, text)
    pred = Prediction(**SurfacePrediction.fields(pix, lifted), latents=latents)
    if backend.config.decoder.pixel_aligned:
        latents.view = pred.pixel_view()
    if timings is not None:
        _sync(backend.device)
        timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - t1
    return pred


class TorchBackend:
    """The PyTorch model as a :class:`Backend` (kernels dispatched by device, see zsw.kernels)."""

    name = "torch"

    def __init__(self, model: ZeroShapeW, device: str | torch.device | None = None):
        from zsw.infer.graphs import GraphedCalls

        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.config = model.config
        # on a GPU, replayed from CUDA graphs from the third call of a shape on (zsw.infer.graphs);
        # the decoder's: full chunks of grid points (a chunk's size left over is data-dependent)
        self._pixel = GraphedCalls(self.model.pixel, "pixel model", state=self._state)
        self._encode = GraphedCalls(self._encode_eager, "encoder", state=self._state)
        self._decode = GraphedCalls(self.model.decoder.decode, "decoder", max_graphs=8, state=self._state)

    def _state(self) -> tuple:
        """What besides their inputs decides what the model's stages compute (a graph keeps what
        it captured): the kernels they dispatch to, and train or eval mode."""
        from zsw import kernels

        return kernels.requested_impl(self.model.kernel_impl), kernels.is_exportable(), self.model.training

    def embed_prompts(self, prompt, batch):
        return self.model.embed_prompts(prompt, batch)

    @torch.inference_mode()
    def pixel(self, image: Tensor, text: Tensor | None) -> PixelOutput:
        return self._pixel(image, text)

    @torch.inference_mode()
    def encode(self, encoder_input: Tensor, text: Tensor | None) -> DecoderLatents:
        return self._encode(encoder_input, text)

    def _encode_eager(self, encoder_input: Tensor, text: Tensor | None) -> DecoderLatents:
        return self.model.decoder.encode(self.model.encoder(encoder_input), text)

    @torch.inference_mode()
    def decode(self, latents: DecoderLatents, points: Tensor) -> Tensor:
        return self._decode(latents, points)


def load_backend(
    kind: str = "torch",
    *,
    weights: str | os.PathLike | ZeroShapeW | None = None,
    engine: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> Backend:
    """A backend by name.

    Args:
        kind: ``torch``, ``onnxruntime`` or ``tensorrt``; ``onnxruntime+torch`` runs the pixel and
            encoder graphs of ``engine`` on ONNX Runtime and the decoder of ``weights`` (the
            checkpoint those graphs were exported from) in PyTorch. (``auto`` is resolved by
            :func:`zsw.infer.weights.resolve_backend`.)
        weights: for ``torch``: a zsw checkpoint path or a model (required).
        engine: for ``onnxruntime`` / ``tensorrt``: the directory written by ``zsw export``.
        device: where to run (default: CUDA if available, else CPU).
    """
    from zsw.errors import ConfigError, OptionError

    kinds = [k for k in BACKENDS if k != "auto"] + ["onnxruntime+torch"]
    if kind not in kinds:
        raise ConfigError(f"backend must be one of {', '.join(kinds)}, got {kind!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "torch":
        if weights is None:
            raise ConfigError("the torch backend needs weights (a .safetensors checkpoint or a model)")
        if isinstance(weights, ZeroShapeW):
            return TorchBackend(weights, device)
        from zsw import checkpoint

        return TorchBackend(checkpoint.load(weights), device)
    if engine is None:
        raise OptionError(f"the {kind} backend needs --engine DIR (a folder written by `zsw export`)")
    from zsw.registry import backend_loader

    if kind == "onnxruntime+torch":
        if not isinstance(weights, (str, os.PathLike)):
            raise ConfigError("the onnxruntime+torch backend needs weights: the checkpoint its graphs came from")
        return backend_loader("onnxruntime")("onnxruntime", engine, device, decoder_weights=weights)
    return backend_loader(kind)(kind, engine, device)
