"""Kernel benchmark (``zsw bench kernels``): the Triton kernels against their baselines, one run.

Providers per op:

* ``torch``   -- the pure-PyTorch reference (:mod:`zsw.kernels.reference`), eager;
* ``compile`` -- ``torch.compile`` of that reference (GPU only: Inductor);
* ``sdpa``    -- attention only: PyTorch's fused attention over the L latent keys, with the own-key
  term merged exactly through the returned log-sum-exp (forward only: SDPA does not differentiate
  its log-sum-exp);
* ``cdist``   -- Chamfer only: ``torch.cdist`` in row chunks, then the minima of both directions;
* ``triton``  -- ours (``triton-recompute``: the MLP backward recomputing its activations;
  ``triton-layered`` and ``triton-onchip``: the MLP's two inference forwards, each forced, of
  which ``triton`` runs the one it measured faster on first use).

Shapes come from presets derived from the model config (:func:`presets`): a 129^3 grid of query
points for inference, 80 images x 4096 points for training, the 197 latent tokens, 8 heads of 32,
the 259 -> 8 x 256 -> 1 MLP with skips at 2, 4, 6, and 10k / 100k point clouds for Chamfer. On a
CPU only a tiny smoke configuration runs (the Triton kernels under the interpreter).

Every provider is first checked against the fp32 reference on a small input on the same device;
its max error goes in the row's ``note``. :data:`TARGETS` are the goals of issue 3;
:func:`evaluate_targets` reads them off the rows of one run.
"""

from __future__ import annotations

import functools
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zsw.bench._harness import (
    BenchRow,
    Environment,
    add_speedups,
    mark_interpreter_rows,
    measure,
    profiled_ranges,
    ranked_kernels,
)

__all__ = [
    "AttentionCase",
    "MlpCase",
    "ChamferCase",
    "DecoderCase",
    "KernelPresets",
    "presets",
    "Target",
    "TARGETS",
    "run",
    "evaluate_targets",
    "targets_markdown",
    "sdpa_point_cross_attention",
    "cdist_chamfer",
    "DecoderBreakdown",
    "decoder_breakdown",
]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionCase:
    name: str
    B: int
    H: int
    N: int
    L: int
    D: int
    modes: tuple[str, ...]

    @property
    def shape(self) -> str:
        return f"B={self.B} H={self.H} N={self.N} L={self.L} D={self.D}"

    def flops(self, mode: str) -> float:
        fwd = 4.0 * self.B * self.H * self.N * (self.L + 1) * self.D  # QK^T and PV over L + 1 keys
        return fwd * (3.5 if mode == "fwd+bwd" else 1.0)  # backward = 2.5 x forward (flash-attention)


@dataclass(frozen=True)
class MlpCase:
    name: str
    M: int
    c_in: int
    width: int
    hidden: int
    c_out: int
    skip_in: tuple[int, ...]
    modes: tuple[str, ...]

    @property
    def shape(self) -> str:
        return f"M={self.M} {self.c_in}->{self.hidden}x{self.width}->{self.c_out} skips={list(self.skip_in)}"

    def flops(self, mode: str) -> float:
        dims = [self.c_in] + [self.width] * self.hidden + [self.c_out]
        macs = sum((dims[l] + (self.c_in if l in self.skip_in else 0)) * dims[l + 1] for l in range(len(dims) - 1))
        return 2.0 * self.M * macs * (3.0 if mode == "fwd+bwd" else 1.0)


@dataclass(frozen=True)
class ChamferCase:
    name: str
    B: int
    N: int
    M: int

    @property
    def shape(self) -> str:
        return f"B={self.B} N={self.N} M={self.M}"


@dataclass(frozen=True)
class DecoderCase:
    name: str
    points: int
    chunk: int

    @property
    def shape(self) -> str:
        return f"points={self.points} chunk={self.chunk}"


@dataclass(frozen=True)
class KernelPresets:
    model: str
    attention: tuple[AttentionCase, ...]
    mlp: tuple[MlpCase, ...]
    chamfer: tuple[ChamferCase, ...]
    decoder: tuple[DecoderCase, ...] = field(default=())


GRID_RESOLUTION = 128  # marching-cubes resolution: (128 + 1)^3 = 2,146,689 query points
TRAIN_BATCH, TRAIN_POINTS = 80, 4096  # images per step and occupancy samples per image


def presets(model: str = "zeroshape-w", smoke: bool = False) -> KernelPresets:
    """Benchmark shapes tied to a model config (``smoke``: the ``tiny`` model at toy sizes)."""
    from zsw.config import get_model_config

    cfg = get_model_config("tiny" if smoke else model)
    dec = cfg.decoder
    H, D, L = dec.heads, dec.width // dec.heads, cfg.num_tokens
    mlp = dict(c_in=3 + dec.width, width=dec.occ_width, hidden=dec.occ_layers, c_out=1, skip_in=tuple(dec.skip_in))
    if smoke:
        return KernelPresets(
            model=cfg.name,
            attention=(AttentionCase("smoke", 1, H, 64, L, D, ("fwd", "fwd+bwd")),),
            mlp=(MlpCase("smoke", 64, modes=("fwd", "fwd+bwd"), **mlp),),
            chamfer=(ChamferCase("smoke", 1, 64, 50),),
        )
    grid = (GRID_RESOLUTION + 1) ** 3
    return KernelPresets(
        model=cfg.name,
        attention=(
            AttentionCase("grid", 1, H, grid, L, D, ("fwd",)),
            AttentionCase("train", TRAIN_BATCH, H, TRAIN_POINTS, L, D, ("fwd", "fwd+bwd")),
        ),
        mlp=(
            MlpCase("grid", grid, modes=("fwd",), **mlp),
            MlpCase("train", TRAIN_BATCH * TRAIN_POINTS, modes=("fwd+bwd",), **mlp),
        ),
        chamfer=(
            ChamferCase("10k", 1, 10_000, 10_000),
            ChamferCase("eval-batch", 24, 10_000, 10_000),  # one batch of the brute-force alignment
            ChamferCase("100k", 1, 100_000, 100_000),
        ),
        decoder=(DecoderCase("grid", grid, 1 << 18),),
    )


# ----------------------------------------------------------------------------------------------
# Baselines that are not in zsw.kernels
# ----------------------------------------------------------------------------------------------


def _attention_with_lse(q, k, v, scale):  # [B, H, N, D] x [B, H, L, D] -> out, lse [B, H, N] (natural log)
    if q.device.type == "cuda":
        if q.dtype in (torch.float16, torch.bfloat16):
            out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)
        else:
            out = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)
        return out[0], out[1][..., : q.shape[2]]
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)


def sdpa_point_cross_attention(q, k, v, k_latent, v_latent, scale=None):
    """PyTorch's fused attention over the latent keys, merged exactly with each point's own key.

    With ``o, lse`` the attention over the L latents, ``s`` the self logit and ``m = max(lse, s)``:
    ``out = (e^(lse-m) o + e^(s-m) v) / (e^(lse-m) + e^(s-m))``. Forward only.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if k_latent.shape[2] == 0:
        return v.clone()
    o, lse = _attention_with_lse(q, k_latent, v_latent, scale)
    s = (q.float() * k.float()).sum(-1) * scale
    m = torch.maximum(lse.float(), s)
    w_lat, w_self = torch.exp(lse.float() - m), torch.exp(s - m)
    out = (w_lat[..., None] * o.float() + w_self[..., None] * v.float()) / (w_lat + w_self)[..., None]
    return out.to(q.dtype)


@torch.no_grad()
def cdist_chamfer(a, b, chunk: int = 8192):  # [B, N, 3], [B, M, 3] -> (sq_ab, sq_ba, idx_ab, idx_ba)
    """Chamfer from ``torch.cdist`` on row chunks of ``a`` and the minima of both directions."""
    B, N, _ = a.shape
    M = b.shape[1]
    sq_ab = a.new_empty(B, N)
    idx_ab = torch.empty(B, N, dtype=torch.long, device=a.device)
    sq_ba = a.new_full((B, M), float("inf"))
    idx_ba = torch.zeros(B, M, dtype=torch.long, device=a.device)
    for start in range(0, N, chunk):
        d = torch.cdist(a[:, start : start + chunk], b).square_()  # [B, n, M]
        sq_ab[:, start : start + chunk], idx_ab[:, start : start + chunk] = d.min(dim=2)
        col, col_idx = d.min(dim=1)
        better = col < sq_ba
        sq_ba = torch.where(better, col, sq_ba)
        idx_ba = torch.where(better, col_idx + start, idx_ba)
    return sq_ab, sq_ba, idx_ab, idx_ba


# ----------------------------------------------------------------------------------------------
# Jobs: one (op, case, provider, mode, dtype) each, built lazily so that memory is freed between
# ----------------------------------------------------------------------------------------------


@dataclass
class Job:
    op: str
    case: str
    provider: str
    mode: str
    dtype: str
    shape: str
    setup: Callable[[], tuple[Callable[[], object], list[torch.Tensor], float]]  # fn, grad_to_none, work
    work_unit: str = "TFLOP/s"
    work_scale: float = 1e12
    check: Callable[[], str] | None = None  # correctness note, run once before timing


_compiled: dict[str, Callable] = {}


def _compile(name: str, fn: Callable) -> Callable:
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=False)
    return _compiled[name]


def _attention_fn(provider: str) -> Callable:
    from zsw import kernels
    from zsw.kernels import reference

    if provider == "torch":
        return reference.point_cross_attention
    if provider == "compile":
        return _compile("attention", reference.point_cross_attention)
    if provider == "sdpa":
        return sdpa_point_cross_attention
    return lambda *args: kernels.point_cross_attention(*args, impl="triton")


def _attention_inputs(case: AttentionCase, dtype, device, requires_grad: bool, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(case.B, case.N, 3, case.H, case.D, generator=g, device=device, dtype=dtype)
    lat = torch.randn(2, case.B, case.H, case.L, case.D, generator=g, device=device, dtype=dtype)
    leaves = [qkv.requires_grad_(requires_grad), lat.requires_grad_(requires_grad)]
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # the model's layout: views of a fused projection
    return (q, k, v, lat[0], lat[1]), leaves


def _max_error(out, ref) -> float:
    return (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0


def _attention_jobs(cases, providers, dtypes, device) -> Iterator[Job]:
    from zsw.kernels import reference

    for case in cases:
        for mode in case.modes:
            for dtype_name in dtypes:
                for provider in providers:
                    if provider == "sdpa" and mode != "fwd":
                        continue
                    dtype = DTYPES[dtype_name]

                    def setup(case=case, mode=mode, dtype=dtype, provider=provider):
                        fn = _attention_fn(provider)
                        args, leaves = _attention_inputs(case, dtype, device, mode != "fwd")
                        if mode == "fwd":
                            return (lambda: fn(*args)), [], case.flops(mode)
                        grad = torch.randn_like(args[0])
                        return (lambda: fn(*args).backward(grad)), leaves, case.flops(mode)

                    def check(dtype=dtype, provider=provider, case=case):
                        small = AttentionCase("check", 1, case.H, min(case.N, 1000), case.L, case.D, ())
                        args, _ = _attention_inputs(small, dtype, device, False, seed=1)
                        with torch.no_grad():
                            out = _attention_fn(provider)(*args)
                            ref = reference.point_cross_attention(*(t.double() for t in args))
                        return f"max err {_max_error(out, ref):.1e}"

                    yield Job(
                        "point_cross_attention", case.name, provider, mode, dtype_name, case.shape, setup, check=check
                    )


def _mlp_params(case: MlpCase, dtype, device, requires_grad: bool, seed: int = 0):
    from zsw.model.layers import OccupancyMLP

    torch.manual_seed(seed)
    mlp = OccupancyMLP(case.c_in, case.width, case.hidden, case.c_out, case.skip_in).to(device=device, dtype=dtype)
    weights = [layer.weight.detach().requires_grad_(requires_grad) for layer in mlp.layers]
    biases = [layer.bias.detach().requires_grad_(requires_grad) for layer in mlp.layers]
    x = (torch.randn(case.M, case.c_in, device=device) * 0.5).to(dtype).requires_grad_(requires_grad)
    return x, weights, biases


def _mlp_fn(provider: str) -> Callable:
    from zsw.kernels import occupancy_mlp as dispatch_mlp
    from zsw.kernels import reference

    if provider == "torch":
        return reference.occupancy_mlp
    if provider == "compile":
        return _compile("mlp", reference.occupancy_mlp)
    if provider == "triton-recompute":
        from zsw.kernels.occupancy_mlp import occupancy_mlp as kernel  # the Triton function itself

        return lambda *args: kernel(*args, recompute=True)
    if provider in ("triton-layered", "triton-onchip"):  # one inference forward, forced
        import importlib

        variant = importlib.import_module("zsw.kernels.occupancy_mlp").forward_variant

        def forced(*args, name=provider.removeprefix("triton-")):
            with variant(name):
                return dispatch_mlp(*args, impl="triton")

        return forced
    return lambda *args: dispatch_mlp(*args, impl="triton")


def _has_tma(device: str) -> bool:
    """Compute capability 9.0 or newer: where the MLP's on-chip forward runs."""
    from zsw.kernels._utils import device_capability

    return device == "cuda" and device_capability(torch.device(device)) >= 90


def _mlp_jobs(cases, providers, dtypes, device) -> Iterator[Job]:
    from zsw.kernels import reference

    for case in cases:
        for mode in case.modes:
            for dtype_name in dtypes:
                for provider in providers:
                    if provider == "triton-recompute" and mode == "fwd":
                        continue
                    if provider in ("triton-layered", "triton-onchip") and mode != "fwd":
                        continue  # the two inference forwards (no activations kept) that `triton` chooses from
                    if provider == "triton-onchip" and not _has_tma(device):
                        continue
                    if dtype_name == "fp32" and device == "cuda" and provider != "torch":
                        continue  # fp32 eager is the baseline of the bf16 kernel, not a race of its own
                    dtype = DTYPES[dtype_name]

                    def setup(case=case, mode=mode, dtype=dtype, provider=provider):
                        fn = _mlp_fn(provider)
                        x, w, b = _mlp_params(case, dtype, device, mode != "fwd")
                        if mode == "fwd":
                            return (lambda: fn(x, w, b, case.skip_in)), [], case.flops(mode)
                        grad = torch.randn(case.M, case.c_out, device=device, dtype=dtype)
                        return (lambda: fn(x, w, b, case.skip_in).backward(grad)), [x, *w, *b], case.flops(mode)

                    def check(dtype=dtype, provider=provider, case=case):
                        small = MlpCase(
                            "check", min(case.M, 1000), case.c_in, case.width, case.hidden, case.c_out, case.skip_in, ()
                        )
                        x, w, b = _mlp_params(small, dtype, device, False, seed=1)
                        with torch.no_grad():
                            out = _mlp_fn(provider)(x, w, b, case.skip_in)
                            w64, b64 = [t.double() for t in w], [t.double() for t in b]
                            ref = reference.occupancy_mlp(x.double(), w64, b64, case.skip_in)
                        return f"max err {_max_error(out, ref):.1e}"

                    yield Job("occupancy_mlp", case.name, provider, mode, dtype_name, case.shape, setup, check=check)


def _chamfer_jobs(cases, providers, device) -> Iterator[Job]:
    from zsw.kernels import chamfer_distance, reference

    fns = {
        "torch": lambda a, b: reference.chamfer_distance(a, b),
        "cdist": cdist_chamfer,
        "triton": lambda a, b: chamfer_distance(a, b, impl="triton"),
    }
    for case in cases:
        for provider in providers:
            if provider not in fns:
                continue

            def clouds(case=case):
                g = torch.Generator(device=device).manual_seed(case.N + case.M)
                return (torch.rand(case.B, n, 3, generator=g, device=device) * 2 - 1 for n in (case.N, case.M))

            def setup(case=case, provider=provider):
                a, b = clouds(case)
                return (lambda: fns[provider](a, b)), [], float(case.B * case.N * case.M)

            def check(case=case, provider=provider):
                a, b = clouds(case)
                got = fns[provider](a, b)
                ref = reference.chamfer_distance(a, b)
                bad = sum(int((x != y).sum()) for x, y in ((got[2], ref.idx_ab), (got[3], ref.idx_ba)))
                return f"index mismatches {bad}/{case.B * (case.N + case.M)}"

            yield Job(
                "chamfer_distance", case.name, provider, "fwd", "fp32", case.shape, setup, "Gpairs/s", 1e9,
                None if provider == "torch" else check,
            )  # fmt: skip


def _decoder_build(model: str, impl: str, n_points: int, chunk: int, device: str):
    """``(decoder, fn)``: the model's point decoder (random weights, fixed seed) and a function
    decoding a cloud with it, in bf16 autocast."""
    from zsw.config import get_model_config
    from zsw.model.decoder import PointDecoder

    torch.manual_seed(0)  # the same decoder and inputs for every provider
    cfg = get_model_config(model)
    text_dim = cfg.text.dim if cfg.text.enabled else 0
    dec = PointDecoder(cfg.decoder, cfg.encoder.token_dim, cfg.token_grid, text_dim).to(device).eval()
    for m in dec.modules():
        if isinstance(getattr(m, "impl", None), str):
            m.impl = impl
    tokens = torch.randn(1, cfg.num_tokens, cfg.encoder.token_dim, device=device)
    text = torch.randn(1, text_dim, device=device) if text_dim else None
    points = torch.rand(1, n_points, 3, device=device) * 3 - 1.5

    def fn():
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            latents = dec.encode(tokens, text)  # once per image, as in reconstruction
            return dec.decode_chunked(latents, points, chunk)

    return dec, fn


def _decoder_jobs(cases, model: str, providers, device) -> Iterator[Job]:
    for case in cases:
        for provider in providers:
            if provider not in ("torch", "triton"):
                continue

            def setup(case=case, provider=provider):
                _, fn = _decoder_build(model, provider, case.points, case.chunk, device)
                return fn, [], float(case.points) * 5.0e6  # ~5 MFLOP per query point

            def check(provider=provider):
                out = _decoder_build(model, provider, 4096, 4096, device)[1]()
                ref = _decoder_build(model, "torch", 4096, 4096, device)[1]()
                return f"max logit diff vs torch {_max_error(out, ref):.1e}"

            yield Job("decoder", case.name, provider, "fwd", "bf16", case.shape, setup, check=check)


# ----------------------------------------------------------------------------------------------
# Where the decoder's time goes: one decode, part by part, and its top kernels
# ----------------------------------------------------------------------------------------------


#: the decoder case profiled without a GPU (the smoke presets time no decoder): the tiny model
BREAKDOWN_SMOKE = DecoderCase("smoke", 256, 128)
BREAKDOWN_TOP = 10


@dataclass(frozen=True)
class BreakdownItem:
    name: str
    ms: float  # summed over calls
    calls: int
    profiler_ms: float = math.nan  # parts: the torch.profiler range's CUDA time (CPU time without a GPU)


@dataclass
class DecoderBreakdown:
    """One decode of a case (latents + every chunk), split into the decoder's parts, and the kernels
    (GPU) or operators (CPU) that took the most time in a second, profiled decode."""

    model: str
    case: str
    shape: str
    impl: str
    device: str
    total_ms: float
    parts: list[BreakdownItem]  # outermost parts only (none nested in another), then "other"
    top: list[BreakdownItem]  # by self time, most first

    @property
    def clock(self) -> str:
        return "CUDA events" if self.device == "cuda" else "CPU wall clock"

    @property
    def top_label(self) -> str:
        return "kernels by CUDA time" if self.device == "cuda" else "operators by self CPU time"

    def markdown(self) -> str:
        prof = "profiler CUDA ms" if self.device == "cuda" else "profiler CPU ms"
        lines = [
            f"## Decoder breakdown: {self.case} ({self.shape}), {self.impl}, {self.model}, {self.device}",
            "",
            f"One decode (latents once, then every chunk) with each part of the decoder timed by "
            f"{self.clock} ({prof}: the same part's torch.profiler range in a second decode); "
            "`other` is the total less the parts: residual adds, concatenations, chunking.",
            "",
            f"| part | ms | share | calls | {prof} |",
            "|---|---|---|---|---|",
        ]
        for p in self.parts:
            share = 100.0 * p.ms / self.total_ms if self.total_ms > 0 else math.nan
            shown = "" if math.isnan(p.profiler_ms) else f"{p.profiler_ms:.3f}"
            lines.append(f"| {p.name} | {p.ms:.3f} | {share:.1f}% | {p.calls} | {shown} |")
        lines += [f"| total | {self.total_ms:.3f} | 100% | 1 | |", ""]
        lines += [f"Top {len(self.top)} {self.top_label} (torch.profiler, second decode):", ""]
        lines += ["| name | ms | calls |", "|---|---|---|"]
        lines += [f"| `{_short(t.name)}` | {t.ms:.3f} | {t.calls} |" for t in self.top]
        return "\n".join(lines) + "\n"


def _short(name: str, limit: int = 90) -> str:
    name = name.replace("|", "/").replace("`", "'")
    return name if len(name) <= limit else name[: limit - 3] + "..."


class _PartClock:
    """Times the decoder's parts by wrapping their calls; a part called inside another (the blocks'
    norms and feed-forwards inside ``encode``) is left to the outer one, so the parts never overlap."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.spans: dict[str, list[tuple]] = {}
        self.active = 0
        self.recording = True

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.active:
                return fn(*args, **kwargs)
            self.active += 1
            try:
                with torch.profiler.record_function(f"part: {name}"):
                    start = self._now()
                    out = fn(*args, **kwargs)
                    end = self._now()
            finally:
                self.active -= 1
            if self.recording:
                self.spans.setdefault(name, []).append((start, end))
            return out

        return timed

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


def _instrument(dec, clock: _PartClock) -> None:
    """Wrap the parts of ``dec`` (this instance only: instance attributes shadow the methods)."""

    def forward(module, name):
        module.forward = clock.wrap(name, module.forward)

    dec.encode = clock.wrap("encode (latents, once per image)", dec.encode)
    dec._point_features = clock.wrap("point features", dec._point_features)
    forward(dec.point_embed, "point embedding")
    for i, block in enumerate(dec.blocks):
        forward(block.norm1, f"block {i} norm1")
        block.attn.points = clock.wrap(f"block {i} attention", block.attn.points)
        forward(block.norm2, f"block {i} norm2")
        forward(block.mlp, f"block {i} feed-forward")
    forward(dec.norm, "final norm")
    forward(dec.occupancy, "occupancy MLP")


def decoder_breakdown(
    model: str, impl: str, case: DecoderCase, device: str, top: int = BREAKDOWN_TOP
) -> DecoderBreakdown:
    """Where one decode of ``case`` spends its time, part by part (see :class:`DecoderBreakdown`).

    After a warm-up decode (autotuning, compilation), the parts are timed with CUDA events on a GPU
    (GPU time from the part's first launch to its last one's end), without one by the wall clock.
    A second decode runs under ``torch.profiler`` for each part's profiler time and the top kernels
    (CPU: operators)."""
    from torch.profiler import ProfilerActivity, profile

    dec, fn = _decoder_build(model, impl, case.points, case.chunk, device)
    clock = _PartClock(device)
    _instrument(dec, clock)
    cuda = device == "cuda"
    clock.recording = False
    fn()  # warm-up: first-use autotuning, compilation and lazy initialisation are not the decoder's time
    if cuda:
        torch.cuda.synchronize()
    clock.recording = True
    start = clock._now()
    fn()
    end = clock._now()
    if cuda:
        torch.cuda.synchronize()
    total = clock.ms(start, end)
    spans = {name: ([clock.ms(a, b) for a, b in pairs]) for name, pairs in clock.spans.items()}

    clock.recording = False
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    part_prof = profiled_ranges(events, cuda, "part: ")
    parts = [BreakdownItem(name, sum(ms), len(ms), part_prof.get(name, math.nan)) for name, ms in spans.items()]
    parts.append(BreakdownItem("other", max(0.0, total - sum(p.ms for p in parts)), 1))
    ranked = [BreakdownItem(*k) for k in ranked_kernels(events, cuda)[:top]]
    return DecoderBreakdown(model, case.name, case.shape, impl, device, total, parts, ranked)


# ----------------------------------------------------------------------------------------------
# Running and reading off the targets
# ----------------------------------------------------------------------------------------------


def run(
    env: Environment,
    *,
    ops: tuple[str, ...] = ("attention", "mlp", "chamfer", "decoder"),
    smoke: bool = False,
    model: str = "zeroshape-w",
    warmup_ms: float = 25,
    rep_ms: float = 100,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Run the kernel benchmark and return its rows, with speed-ups over every baseline filled in."""
    device = env.device
    p = presets(model, smoke=smoke)
    gpu = device == "cuda"
    jobs: list[Job] = []
    if "attention" in ops:
        providers = ("torch", "compile", "sdpa", "triton") if gpu else ("torch", "sdpa", "triton")
        jobs += _attention_jobs(p.attention, providers, ("bf16",) if gpu else ("fp32",), device)
    if "mlp" in ops:
        providers = (
            ("torch", "compile", "triton", "triton-layered", "triton-onchip", "triton-recompute")
            if gpu
            else ("torch", "triton", "triton-recompute")
        )
        for case in p.mlp:  # fp32 eager is the baseline ZeroShape itself runs (amp off)
            dtypes = ("fp32", "bf16") if gpu and "fwd" in case.modes else ("bf16",) if gpu else ("fp32",)
            jobs += _mlp_jobs((case,), providers, dtypes, device)
    if "decoder" in ops:
        jobs += _decoder_jobs(p.decoder, p.model, ("torch", "triton"), device)
    if "chamfer" in ops:
        jobs += _chamfer_jobs(p.chamfer, ("torch", "cdist", "triton"), device)

    rows: list[BenchRow] = []
    try:
        _run_jobs(jobs, rows, env, warmup_ms, rep_ms, progress)
    except KeyboardInterrupt:  # keep what was measured (``timeout -s INT`` in bench/gpu_session.sh)
        if progress:
            progress(f"interrupted after {len(rows)} of {len(jobs)} measurements")
    for baseline in ("torch", "compile", "sdpa", "cdist"):
        add_speedups(rows, baseline)
    add_speedups(
        rows, "torch", label="torch_fp32", baseline_dtype="fp32", match=("op", "case", "mode", "shape"),
        where=lambda r: r.dtype != "fp32",
    )  # fmt: skip
    # the MLP backward: recomputing the activations against storing them (docs/kernels.md)
    add_speedups(rows, "triton", label="triton_stored", where=lambda r: r.provider == "triton-recompute")
    mark_interpreter_rows(rows, lambda r: r.provider.startswith("triton"))
    return rows


def _run_jobs(jobs: list[Job], rows: list[BenchRow], env: Environment, warmup_ms, rep_ms, progress) -> None:
    for job in jobs:
        label = f"{job.op} {job.case} {job.mode} {job.dtype} {job.provider}"
        if progress:
            progress(label)
        note = ""
        try:
            if job.check is not None:
                note = job.check()
            fn, grad_to_none, work = job.setup()
        except Exception as e:  # noqa: BLE001 -- recorded as a failed provider
            fn, grad_to_none, work = _raiser(e), [], math.nan
        row = measure(
            fn, env, op=job.op, case=job.case, provider=job.provider, mode=job.mode, dtype=job.dtype,
            shape=job.shape, work=work, work_unit=job.work_unit, work_scale=job.work_scale,
            grad_to_none=grad_to_none, warmup_ms=warmup_ms, rep_ms=rep_ms, note=note,
        )  # fmt: skip
        rows.append(row)
        del fn, grad_to_none
        gc.collect()
        if env.device == "cuda":
            torch.cuda.empty_cache()


def _raiser(error: Exception) -> Callable[[], object]:
    def fn():
        raise error

    return fn


@dataclass(frozen=True)
class Target:
    """A goal of issue 3, read off the rows of one run."""

    label: str
    op: str
    case: str
    mode: str
    dtype: str
    baseline: str | None  # speed-up column (``speedups`` key); None: an absolute time limit
    threshold: float  # minimum speed-up, or maximum milliseconds when baseline is None
    provider: str = "triton"


TARGETS = (
    Target("attention fwd, 129^3 grid: >= 3x eager", "point_cross_attention", "grid", "fwd", "bf16", "torch", 3.0),
    Target("attention fwd, 129^3 grid: >= 1.5x SDPA", "point_cross_attention", "grid", "fwd", "bf16", "sdpa", 1.5),
    Target(
        "attention fwd+bwd, training: >= 2x eager", "point_cross_attention", "train", "fwd+bwd", "bf16", "torch", 2.0
    ),
    Target("MLP fwd, 129^3 grid: >= 3x eager fp32", "occupancy_mlp", "grid", "fwd", "bf16", "torch_fp32", 3.0),
    Target("MLP fwd, 129^3 grid: >= 1.5x compile bf16", "occupancy_mlp", "grid", "fwd", "bf16", "compile", 1.5),
    Target("decoder (2 blocks + MLP), 129^3 grid: <= 40 ms", "decoder", "grid", "fwd", "bf16", None, 40.0),
    Target("Chamfer 100k x 100k: >= 10x chunked cdist", "chamfer_distance", "100k", "fwd", "fp32", "cdist", 10.0),
)


def evaluate_targets(rows: list[BenchRow], targets=TARGETS) -> list[tuple[Target, float, bool | None]]:
    """``(target, measured, met)`` per target; measured is NaN and met None when it did not run."""
    out = []
    for t in targets:
        row = next(
            (
                r
                for r in rows
                if (r.op, r.case, r.mode, r.dtype, r.provider) == (t.op, t.case, t.mode, t.dtype, t.provider)
            ),
            None,
        )
        if row is None:
            out.append((t, math.nan, None))
            continue
        value = row.p50_ms if t.baseline is None else row.speedups.get(t.baseline, math.nan)
        met = None if math.isnan(value) else (value <= t.threshold if t.baseline is None else value >= t.threshold)
        out.append((t, value, met))
    return out


def targets_markdown(rows: list[BenchRow], env: Environment) -> str:
    """The targets as a markdown table (plus exactness notes of the Chamfer rows), for results/*.md."""
    lines = [
        f"# Kernel targets on {env.gpu}",
        "",
        f"torch {env.torch}, triton {env.triton}, commit {env.git_sha}, {env.timestamp}",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t, value, met in evaluate_targets(rows):
        unit = " ms" if t.baseline is None else "x"
        shown = "not run" if math.isnan(value) else f"{value:.2f}{unit}"
        lines.append(f"| {t.label} | {shown} | {'-' if met is None else 'yes' if met else 'NO'} |")
    lines += ["", "| op | case | provider | note |", "|---|---|---|---|"]
    lines += [f"| {r.op} | {r.case} | {r.provider} | {r.note} |" for r in rows if r.note]
    return "\n".join(lines) + "\n"


OPS = ("attention", "mlp", "chamfer", "decoder")


def run_job(
    *,
    ops: str = ",".join(OPS),
    smoke: bool = False,
    model: str = "zeroshape-w",
    rep_ms: float = 100.0,
    out: Path | None = None,
    summary: Path | None = None,
    reporter=None,
) -> tuple[list[BenchRow], list, Path, Environment, str]:
    """``zsw bench kernels``: check the options and the output paths, run (tiny shapes on the Triton
    interpreter without a GPU), append the rows to ``out`` (default
    ``bench/results/<gpu>-kernels[-smoke].csv``) and write the targets as markdown to ``summary``;
    returns ``(rows, targets, csv path, env, what ran)``.

    With the decoder among ``ops``, one decode of the decoder case (without a GPU
    the tiny model's :data:`BREAKDOWN_SMOKE`) is also split into its parts and top kernels
    (:func:`decoder_breakdown`, Triton and PyTorch decoders): reported as it finishes and appended
    to ``summary`` as markdown sections."""
    import os

    from zsw.bench._harness import append_csv, check_model, check_out_csv, check_out_file, environment, gpu_slug
    from zsw.errors import OptionError
    from zsw.io import atomic_write_text
    from zsw.report import Reporter

    selected = tuple(o.strip() for o in ops.split(",") if o.strip())
    unknown = [o for o in selected if o not in OPS]
    if unknown or not selected:
        raise OptionError(f"--ops: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(OPS)}")
    check_model(model, "--model")
    if not torch.cuda.is_available():
        # the kernels must be decorated in interpreter mode: set it before zsw.kernels is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        smoke = True
    reporter = reporter or Reporter()
    env = environment()
    out = out or Path("bench/results") / f"{gpu_slug(env)}-kernels{'-smoke' if smoke else ''}.csv"
    check_out_csv(out, "--out")  # before measuring, not after it (the rows would be lost)
    if summary is not None:
        check_out_file(summary, "--summary", "kernels.md")
    ran = f"{'smoke shapes of ' if smoke else ''}{presets(model, smoke=smoke).model}"  # the title names what runs
    from zsw.kernels import interpreting

    if interpreting():
        ran += ", Triton interpreter"
        reporter.warning("the Triton kernels run under the Triton interpreter (TRITON_INTERPRET=1): their times "
                         "and speed-ups measure the interpreter, not the kernels")  # fmt: skip
    with reporter.progress("kernels", None) as advance:
        rows = run(env, ops=selected, smoke=smoke, model=model, rep_ms=rep_ms, progress=lambda s: advance(1, note=s))
    append_csv(out, rows)
    sections = []
    if "decoder" in selected:
        sections = _breakdowns(presets(model, smoke=smoke), env.device, reporter)
    if summary is not None:
        atomic_write_text(summary, "\n".join([targets_markdown(rows, env), *sections]))
    return rows, evaluate_targets(rows), out, env, ran


def _breakdowns(p: KernelPresets, device: str, reporter) -> list[str]:
    """The decoder breakdowns of ``run_job`` as markdown sections (a failure is a warning: the rows
    are already written)."""
    case = p.decoder[0] if p.decoder else BREAKDOWN_SMOKE
    sections = []
    for impl in ("triton", "torch"):
        try:
            text = decoder_breakdown(p.model, impl, case, device).markdown()
        except Exception as e:  # noqa: BLE001 -- reported, the benchmark's rows stand
            reporter.warning(f"decoder breakdown ({impl}) failed: {type(e).__name__}: {e}")
            continue
        reporter.info(text)
        sections.append(text)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return sections
