"""Runtime backends over an export directory: the shared base and ONNX Runtime (the TensorRT and
torch-tensorrt backends live beside their builders, :mod:`zsw.export.tensorrt` and
:mod:`zsw.export.torch_tensorrt`; :func:`zsw.export.backends.load_runtime_backend` picks one).

Each implements :class:`zsw.infer.backend.Backend` with torch tensors in and out, so ``predict``,
grid extraction and meshing run unchanged on any of them::

    from zsw.infer import load_backend, predict
    backend = load_backend("onnxruntime", engine="export/")        # CPU, or CUDA with onnxruntime-gpu
    pred = predict(backend, image)                                 # pixel graph -> lift -> encoder graph
    logits = backend.decode(pred.latents, points)                  # decoder graph, chunk by chunk

The default prompt's CLIP embedding is read from the export directory, so default inference needs
neither CLIP nor the PyTorch model; other prompts are embedded with open_clip (the model's
``TextConfig``), loaded on first use. Points are fed to the decoder graph in chunks of the export's
``points_chunk``; the TensorRT engines, built for exactly that many points, get the last chunk
padded. Inputs and outputs stay on the backend's device: ONNX Runtime binds torch tensors in place
(``IOBinding``), TensorRT reads and writes torch CUDA tensors by address on the current stream.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from zsw.errors import CheckpointError, InputError
from zsw.export.graphs import GRAPHS, resolve_shape
from zsw.export.manifest import ExportManifest
from zsw.model import DecoderLatents, PixelOutput

__all__ = [
    "RuntimeBackend",
    "OnnxRuntimeBackend",
]


class RuntimeBackend:
    """The :class:`~zsw.infer.backend.Backend` protocol over three exported graphs.

    Subclasses implement :meth:`_run`: positional float32 inputs in the order of the graph's
    interface, outputs likewise. ``max_batch`` (per graph) splits larger batches into several calls.
    """

    name = "runtime"

    def __init__(self, manifest: ExportManifest, device: torch.device):
        from zsw.model.text import PromptEmbedder

        self.manifest = manifest
        self.config = manifest.config
        self.device = device
        self.specs = {g: manifest.spec(g) for g in GRAPHS}
        self.points_chunk = manifest.points_chunk
        self.max_batch: dict[str, int | None] = {g: None for g in GRAPHS}
        self._text = None
        if self.config.text.enabled:
            embedding = manifest.default_text_embedding()
            if embedding is None:
                raise CheckpointError(f"{manifest.root} lacks the default prompt's embedding; run `zsw export` again")
            self._text = PromptEmbedder(self.config.text)
            self._text.default_embedding.copy_(embedding)
            self._text.to(device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.manifest.root)!r}, device={str(self.device)!r})"

    # -- the Backend protocol ----------------------------------------------------------------

    def embed_prompts(self, prompt: str | Sequence[str] | None, batch: int) -> Tensor | None:  # [B, T]
        if self._text is None:
            return None
        if isinstance(prompt, str):
            prompt = [prompt]
        return self._text(prompt, batch)

    def pixel(self, image: Tensor, text: Tensor | None) -> PixelOutput:  # [B, 3, S, S] in [0, 1]
        S = self.config.pixel.image_size
        if not isinstance(image, Tensor) or image.dim() != 4 or tuple(image.shape[1:]) != (3, S, S):
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise InputError(f"image must be a tensor [B, 3, {S}, {S}] with values in [0, 1], got {got}")
        out = self._call("pixel", {"image": image, "text": self._text_for(text, image.shape[0])})
        visible, occluder = out.get("visible_mask_logits"), out.get("occluder_mask_logits")
        return PixelOutput(out["depth"], out["intrinsics"], visible, occluder)

    def encode(self, encoder_input: Tensor, text: Tensor | None) -> DecoderLatents:  # [B, C, S, S]
        text = self._text_for(text, encoder_input.shape[0])
        out = self._call("encoder", {"encoder_input": encoder_input, "text": text})
        kv = [(out[f"latent_k{i}"], out[f"latent_v{i}"]) for i in range(self.config.decoder.blocks)]
        return DecoderLatents(
            kv=kv,
            text=out.get("query_text"),
            center_offset=out.get("center_offset"),
            up=out.get("object_up"),
            token_map=out.get("token_map"),
        )

    def decode(self, latents: DecoderLatents, points: Tensor) -> Tensor:  # [B, N, 3] -> [B, N]
        B = latents.batch_size
        if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[0] != B or points.shape[2] != 3:
            got = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
            raise InputError(f"points must be a tensor [B={B}, N, 3], got {got}")
        named: dict[str, Tensor | None] = {
            "query_text": latents.text,
            "center_offset": latents.center_offset,
            "object_up": latents.up,
            "token_map": latents.token_map,
        }
        if latents.view is not None:
            named["view_surface"], named["view_projection"] = latents.view.surface, latents.view.projection
            if self.config.decoder.mirror_queries:
                named["view_anchor"] = latents.view.center_anchor()
            if self.config.decoder.silhouette_distance:
                named["view_distance"] = latents.view.edge_distance()
        for i, (k, v) in enumerate(latents.kv):
            named[f"latent_k{i}"], named[f"latent_v{i}"] = k, v
        N = points.shape[1]
        if N == 0:
            return torch.zeros(B, 0, device=self.device)
        chunks = []
        for start in range(0, N, self.points_chunk):
            named["points"] = points[:, start : start + self.points_chunk]
            chunks.append(self._call("decoder", named)["logits"])
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)

    # -- plumbing ----------------------------------------------------------------------------

    def _text_for(self, text: Tensor | None, batch: int) -> Tensor | None:
        if text is None and self._text is not None:
            return self.embed_prompts(None, batch)
        return text

    def _call(self, graph: str, named: dict[str, Tensor | None]) -> dict[str, Tensor]:
        spec = self.specs[graph]
        args = []
        sizes: dict[str, int] = {}
        for t in spec.inputs:
            x = named.get(t.name)
            if x is None:
                raise InputError(f"the {graph} graph needs its {t.name} input")
            if x.dim() != len(t.shape):
                raise InputError(f"{t.name} must have shape {list(t.shape)}, got {tuple(x.shape)}")
            for d, n in zip(t.shape, x.shape):
                if isinstance(d, str) and sizes.setdefault(d, n) != n:
                    raise InputError(f"{t.name} has {d} {n}, other inputs of the {graph} graph have {sizes[d]}")
            if tuple(x.shape) != resolve_shape(t, sizes):
                raise InputError(f"{t.name} must have shape {list(t.shape)}, got {tuple(x.shape)}")
            args.append(x.to(device=self.device, dtype=torch.float32).contiguous())
        limit = self.max_batch[graph]
        B = args[0].shape[0]
        if limit is None or B <= limit:
            outs = self._run(graph, args)
        else:  # the engine takes at most `limit` images: run slices and concatenate
            parts = [self._run(graph, [a[i : i + limit] for a in args]) for i in range(0, B, limit)]
            outs = [torch.cat(p, dim=0) for p in zip(*parts)]
        return dict(zip(spec.output_names, outs))

    def _run(self, graph: str, args: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError


class OnnxRuntimeBackend(RuntimeBackend):
    """The exported ONNX graphs on ONNX Runtime (CPU; CUDA with ``onnxruntime-gpu``)."""

    name = "onnxruntime"

    def __init__(
        self, manifest: ExportManifest, device: torch.device, threads: int = 0, decoder: torch.nn.Module | None = None
    ):
        """``decoder``: a PyTorch :class:`~zsw.model.PointDecoder` with the export's weights to
        decode with instead of the decoder graph (``onnxruntime+torch``): on a CPU, PyTorch's
        fused attention and subnormal-free Softplus (:mod:`zsw.kernels.cpu`) decode about twice as
        fast as ONNX Runtime runs the exported reference graph, while the pixel and encoder graphs
        spare the process timm's import. :func:`zsw.export.backends.load_runtime_backend` builds it
        from a checkpoint and checks that it is the one the graphs were exported from."""
        from zsw.export.deps import require
        from zsw.export.onnx import onnxruntime_session

        require("onnxruntime", "the onnxruntime backend")
        if not manifest.has_onnx:
            raise CheckpointError(f"{manifest.root} holds no ONNX graphs; export them with `zsw export --format onnx`")
        if device.type == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                warnings.warn(
                    "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); running on the CPU",
                    stacklevel=3,
                )
                device = torch.device("cpu")
        super().__init__(manifest, device)
        graphs = manifest.data["graphs"]
        self.torch_decoder = None
        if decoder is not None:
            self.name = "onnxruntime+torch"
            self.torch_decoder = decoder.to(device).eval()
        needed = [g for g in GRAPHS if not (g == "decoder" and decoder is not None)]
        self.sessions = {g: onnxruntime_session(manifest.file(graphs[g]), device, threads) for g in needed}

    def decode(self, latents: DecoderLatents, points: Tensor) -> Tensor:  # [B, N, 3] -> [B, N]
        if self.torch_decoder is None:
            return super().decode(latents, points)
        with torch.inference_mode():
            return self.torch_decoder.decode(latents, points)

    def _run(self, graph: str, args: list[Tensor]) -> list[Tensor]:
        import numpy as np

        spec = self.specs[graph]
        session = self.sessions[graph]
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        index = self.device.index or 0
        sizes = {d: x.shape[a] for t, x in zip(spec.inputs, args) for a, d in t.dynamic_axes.items()}
        binding = session.io_binding()
        for t, x in zip(spec.inputs, args):
            binding.bind_input(t.name, kind, index, np.float32, tuple(x.shape), x.data_ptr())
        outs = []
        for t in spec.outputs:
            y = torch.empty(resolve_shape(t, sizes), dtype=torch.float32, device=self.device)
            binding.bind_output(t.name, kind, index, np.float32, tuple(y.shape), y.data_ptr())
            outs.append(y)
        if kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written on torch's stream
        session.run_with_iobinding(binding)
        if kind == "cuda":
            binding.synchronize_outputs()
        return outs
