"""The three deployable graphs of a zsw model and the exact interface of each.

A reconstruction is split where the PyTorch model is split (``zsw.infer.backend``)::

    pixel    image [B, 3, S, S], text [B, T]       -> depth, intrinsics, visible/occluder mask logits
    encoder  encoder_input [B, C, S, S], text [B, T] -> latent_k{i}, latent_v{i} [B, H, L, D], query_text
                                                       (+ center_offset, object_up [B, 3] with mirror queries)
    decoder  points [B, N, 3], latent K/V, query_text -> logits [B, N]
             (+ view_surface, view_projection when pixel-aligned; + center_offset, object_up, view_anchor with mirror
             queries: object_up only with axial queries)

The unprojection and normalisation between ``pixel`` and ``encoder`` (``zsw.model.lift_surface``)
stay in PyTorch: a few element-wise operations, and they depend on a user-supplied mask when one is
given. :func:`graph_specs` states each graph's inputs and outputs with symbolic dimensions
(``batch``, ``points``); every exporter, manifest and runtime in :mod:`zsw.export` works from it.

Graph I/O is always float32, whatever the precision inside: :class:`GraphModule` casts inputs to the
compute dtype and outputs back, so a runtime feeds every export the same tensors and the casts cost
nothing next to the graphs themselves.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from zsw.config import ModelConfig
from zsw.errors import ConfigError

__all__ = [
    "TensorSpec",
    "GraphSpec",
    "GRAPHS",
    "PRECISIONS",
    "DTYPES",
    "graph_specs",
    "GraphModule",
    "graph_modules",
    "example_inputs",
    "resolve_shape",
    "export_dims",
    "quiet_export",
    "object_mask",
]

#: graph names, in the order a reconstruction runs them
GRAPHS = ("pixel", "encoder", "decoder")
#: precision name -> compute dtype inside the graphs
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = tuple(DTYPES)
# dimension ranges declared to torch.export (an ONNX graph itself records no bound)
MAX_BATCH = 1024
MAX_POINTS = 1 << 30


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``shape`` entries are sizes or symbolic names (``"batch"``)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(str(d["name"]), tuple(d["shape"]), str(d.get("dtype", "float32")))


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{tensor: {axis: name}}`` for every input and output with a symbolic dimension."""
        return {t.name: t.dynamic_axes for t in (*self.inputs, *self.outputs) if t.dynamic_axes}


def graph_specs(cfg: ModelConfig) -> dict[str, GraphSpec]:
    """The inputs and outputs of the pixel, encoder and decoder graphs of a model with config ``cfg``."""
    S = cfg.pixel.image_size
    dec = cfg.decoder
    heads, head_dim, tokens = dec.heads, dec.width // dec.heads, cfg.num_tokens
    text = [TensorSpec("text", ("batch", cfg.text.dim))] if cfg.text.enabled else []
    masks = [
        TensorSpec("visible_mask_logits", ("batch", 1, S, S)),
        TensorSpec("occluder_mask_logits", ("batch", 1, S, S)),
    ]
    pixel = GraphSpec(
        "pixel",
        inputs=(TensorSpec("image", ("batch", 3, S, S)), *(text if cfg.pixel.mask_heads else [])),
        outputs=(
            TensorSpec("depth", ("batch", 1, S, S)),
            TensorSpec("intrinsics", ("batch", 3, 3)),
            *(masks if cfg.pixel.mask_heads else []),
        ),
    )
    kv = []
    for i in range(dec.blocks):
        kv += [
            TensorSpec(f"latent_k{i}", ("batch", heads, tokens, head_dim)),
            TensorSpec(f"latent_v{i}", ("batch", heads, tokens, head_dim)),
        ]
    query_text = []
    if dec.point_embed == "mlp":  # ZeroShape-W: the text part of every query, computed once per image
        query_text = [TensorSpec("query_text", ("batch", dec.width - dec.point_embed_dim))]
    center = [TensorSpec("center_offset", ("batch", 3))] if dec.mirror_queries else []
    center += [TensorSpec("object_up", ("batch", 3))] if dec.axial_queries else []
    grid = cfg.token_grid
    token_map = [TensorSpec("token_map", ("batch", dec.token_features, grid, grid))] if dec.token_features else []
    encoder = GraphSpec(
        "encoder",
        inputs=(
            TensorSpec("encoder_input", ("batch", cfg.encoder.in_channels, S, S)),
            *(text if query_text else []),
        ),
        outputs=(*kv, *query_text, *center, *token_map),
    )
    view = []
    if dec.pixel_aligned:  # the visible surface map and camera each query point samples
        view = [
            TensorSpec("view_surface", ("batch", cfg.encoder.in_channels + 1, S, S)),
            TensorSpec("view_projection", ("batch", 3, 4)),
        ]
    anchor = [TensorSpec("view_anchor", ("batch", 3))] if dec.mirror_queries else []
    anchor += [TensorSpec("view_distance", ("batch", 1, S, S))] if dec.silhouette_distance else []
    decoder = GraphSpec(
        "decoder",
        inputs=(TensorSpec("points", ("batch", "points", 3)), *kv, *query_text, *view, *center, *anchor, *token_map),
        outputs=(TensorSpec("logits", ("batch", "points")),),
    )
    return {"pixel": pixel, "encoder": encoder, "decoder": decoder}


def resolve_shape(spec: TensorSpec, sizes: dict[str, int]) -> tuple[int, ...]:
    """``spec.shape`` with its symbolic dimensions replaced by ``sizes`` (``{"batch": 2, ...}``)."""
    return tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)


class GraphModule(nn.Module):
    """One graph as a module with positional float32 tensors in and a tuple of float32 tensors out,
    in the order of its :class:`GraphSpec`: what the ONNX and torch-tensorrt exporters trace."""

    def __init__(self, model: nn.Module, spec: GraphSpec, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model
        self.spec = spec
        self.dtype = dtype

    def _cast_in(self, x: Tensor) -> Tensor:
        return x if x.dtype == self.dtype else x.to(self.dtype)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        from zsw.model import DecoderLatents, PixelView

        named = {t.name: self._cast_in(x) for t, x in zip(self.spec.inputs, inputs)}
        m = self.model
        if self.spec.name == "pixel":
            pix = m.pixel(named["image"], named.get("text"))
            outs = [pix.depth, pix.intrinsics]
            if pix.visible_mask_logits is not None:
                outs += [pix.visible_mask_logits, pix.occluder_mask_logits]
        elif self.spec.name == "encoder":
            text = named.get("text")
            latents = m.decoder.encode(m.encoder(named["encoder_input"]), text)
            outs = [x for kv in latents.kv for x in kv]
            if latents.text is not None:
                outs.append(latents.text)
            outs += [x for x in (latents.center_offset, latents.up, latents.token_map) if x is not None]
        else:
            blocks = len(m.decoder.blocks)
            kv = [(named[f"latent_k{i}"], named[f"latent_v{i}"]) for i in range(blocks)]
            view = None
            if "view_surface" in named:
                view = PixelView(
                    named["view_surface"],
                    named["view_projection"],
                    named.get("view_anchor"),
                    named.get("view_distance"),
                )
            offset = named.get("center_offset")
            latents = DecoderLatents(
                kv=kv,
                text=named.get("query_text"),
                view=view,
                center_offset=offset,
                up=named.get("object_up"),
                token_map=named.get("token_map"),
            )
            outs = [m.decoder.decode(latents, named["points"])]
        return tuple(o if o.dtype == torch.float32 else o.float() for o in outs)


def graph_modules(model: nn.Module, precision: str = "fp32") -> dict[str, GraphModule]:
    """The three :class:`GraphModule` s of ``model`` (a :class:`~zsw.model.ZeroShapeW`), computing
    in ``precision``. Low precisions work on a cast copy; ``model`` itself is left untouched."""
    if precision not in DTYPES:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = DTYPES[precision]
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    model = model.eval()
    return {name: GraphModule(model, spec, dtype).eval() for name, spec in graph_specs(model.config).items()}


def object_mask(batch: int, size: int, device: torch.device | str = "cpu") -> Tensor:  # [B, 1, S, S]
    """A centred elliptical object mask: the visible mask given to models without mask heads
    (the ``zeroshape`` preset) when example inputs are made."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    mask = ((xx / 0.6) ** 2 + (yy / 0.75) ** 2 <= 1).float()
    return mask.expand(batch, 1, size, size).to(device)


@torch.no_grad()
def example_inputs(
    model: nn.Module,
    batch: int,
    points: int,
    seed: int = 0,
) -> dict[str, tuple[Tensor, ...]]:
    """Realistic float32 inputs of every graph, computed with the eager fp32 ``model``.

    The image is uniform noise; the encoder input is the lifted surface of the model's own pixel
    outputs and the decoder's latents come from that, so every graph sees values from its real
    input distribution; query points are uniform in the grid's cube ``[-1.5, 1.5]^3``.
    """
    from zsw import kernels
    from zsw.model import lift_surface

    cfg = model.config
    S = cfg.pixel.image_size
    device = next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(seed)
    image = torch.rand(batch, 3, S, S, generator=g).to(device)
    pts = (torch.rand(batch, points, 3, generator=g) * 3 - 1.5).to(device)
    with kernels.exportable():
        text = model.embed_prompts(None, batch)
        if text is not None and batch > 1:  # distinct prompts per row, so batching bugs show
            other = torch.randn(batch - 1, text.shape[1], generator=g).to(device)
            text = torch.cat([text[:1], other / other.norm(dim=1, keepdim=True)])
        pix = model.pixel(image, text)
        mask = None if cfg.pixel.mask_heads else object_mask(batch, S, device)
        lifted = lift_surface(pix, cfg, mask)
        enc_in = lifted.encoder_input
        latents = model.decoder.encode(model.encoder(enc_in), text)
    kv = [x for pair in latents.kv for x in pair]
    specs = graph_specs(cfg)
    pixel_in = (image, text) if len(specs["pixel"].inputs) == 2 else (image,)
    encoder_in = (enc_in, text) if len(specs["encoder"].inputs) == 2 else (enc_in,)
    view = []
    if cfg.decoder.pixel_aligned:
        v = lifted.pixel_view(pix.intrinsics)
        view = [v.surface.float(), v.projection.float()]
    mirror = [x.float() for x in (latents.center_offset, latents.up) if x is not None]
    mirror += [v.center_anchor().float()] if mirror else []
    mirror += [v.edge_distance().float()] if cfg.decoder.silhouette_distance else []
    token_map = [latents.token_map.float()] if latents.token_map is not None else []
    decoder_in = (pts, *kv, *([latents.text] if latents.text is not None else []), *view, *mirror, *token_map)
    return {"pixel": pixel_in, "encoder": encoder_in, "decoder": decoder_in}


def export_dims(spec: GraphSpec) -> tuple[dict[int, Any], ...]:
    """torch.export dynamic shapes of the inputs, one shared ``Dim`` per symbolic name."""
    from torch.export import Dim

    bounds = {"batch": (1, MAX_BATCH), "points": (1, MAX_POINTS)}
    dims = {name: Dim(name, min=lo, max=hi) for name, (lo, hi) in bounds.items()}
    return tuple({axis: dims[name] for axis, name in t.dynamic_axes.items()} for t in spec.inputs)


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporters' expected warnings (axis renaming notes, tracer shape checks)."""
    with warnings.catch_warnings():
        # harmless notes of the exporters about axis renaming, tracer warnings on shape checks
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # timm's StdConv2dSame standardises its weights with batch_norm(training=True) on purpose
        warnings.filterwarnings("ignore", message=r".*operator 'batch_norm' is set to train=True.*")
        warnings.filterwarnings("ignore", message=r".*dynamo=False.*", category=DeprecationWarning)
        yield
