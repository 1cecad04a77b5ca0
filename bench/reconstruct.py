"""End-to-end reconstruction benchmark: seconds per image and where they go.

For every configuration -- backend x grid extraction (``fast``, ``dense``) x decoder kernels
(``triton`` on, ``torch`` off; PyTorch backend only) -- one image is reconstructed ``repeats``
times after a warm-up, and each run is split into the stages of ``zsw reconstruct``:

==================  ===========================================================================
``pixel``           prompt embedding + DPT pixel model (depth, intrinsics, masks)
``encode``          lifting the visible surface + encoder + the decoder's latent K/V
``grid_decode``     decoding the occupancy grid (all chunks; ``fast`` = coarse to fine)
``marching_cubes``  marching cubes: scikit-image for a CPU grid, the vectorised torch one on a GPU
``export``          the mesh as GLB bytes
``total``           the sum: image tensor in, GLB out (file I/O and the preview excluded)
==================  ===========================================================================

Providers are ``torch:triton`` and ``torch:ref`` (the PyTorch backend with either decoder
kernels), ``onnxruntime`` and ``tensorrt``. With ``ttas`` including ``flip`` (``zsw reconstruct
--tta flip``, the default on CUDA), the mode reads ``fast+flip`` / ``dense+flip``: the mirrored
input's pixel model and encoder count in ``pixel`` and ``encode``, its second decoding in
``grid_decode``; with ``flip-pixel`` (the CPU's default), ``fast+flip-pixel``: the second
pixel-model pass counts in ``pixel``. Rows carry speed-ups measured in the same run:
``dense`` (the dense row's time over this one) and ``ref`` (reference kernels over Triton).
:func:`bench_shapes` adds the evidence for making ``fast`` the default: on the analytic test
shapes (:mod:`zsw.eval.fields`) it reports how many fewer points ``fast`` decodes and its
F-score@0.01 against the ``dense`` mesh, and :func:`bench_marching_cubes` times marching cubes on
the first shape's dense grid: the torch implementation against scikit-image (host copy included).

Note on ``fast`` with random weights: an untrained decoder predicts ~0.5 everywhere, so ``fast``
refines the whole grid; time it with trained weights.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["STAGES", "run", "bench_reconstruct", "bench_shapes", "bench_marching_cubes", "summary_markdown"]

STAGES = ("total", "pixel", "encode", "grid_decode", "marching_cubes", "export")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_run(
    backend, image: torch.Tensor, resolution: int, extraction: str, chunk_points: int | None, tta: str = "none"
) -> tuple[dict, int]:
    """Stage seconds of one reconstruction and the number of decoded points."""
    from zsw.infer.backend import predict
    from zsw.infer.grid import marching_cubes, occupancy_grid
    from zsw.infer.tta import occupancy_function, pixel_function

    device = backend.device
    t: dict[str, float] = {}
    # the pixel passes zsw reconstruct makes (flip-pixel: both count in the pixel stage)
    pixel_fn = pixel_function(backend, tta)
    pred = predict(backend, image, None, timings=t, pixel_fn=pixel_fn)
    mirrored = predict(backend, image.flip(-1), None, timings=t, pixel_fn=pixel_fn) if tta == "flip" else None
    decode = occupancy_function(backend, pred, mirrored)  # autocast: the caller's context
    _sync(device)
    t0 = time.perf_counter()
    probs, stats = occupancy_grid(
        decode,
        1,
        resolution,
        mode=extraction,
        chunk_points=chunk_points,
        device=device,
    )
    probs = probs[0]  # stays on the device: a GPU grid takes the torch marching cubes, no host copy
    _sync(device)
    t["grid_decode"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    mesh = marching_cubes(probs, 0.5, 1.5)
    t["marching_cubes"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    mesh.export(file_type="glb")
    t["export"] = time.perf_counter() - t2
    t["total"] = sum(t[s] for s in STAGES[1:])
    return t, stats[0].evaluated_points


def default_image() -> Path:
    """The bundled armchair photo of a source checkout (an editable install). A wheel does not
    ship ``examples/``: there the photo must be named (``zsw bench reconstruct --image``)."""
    from zsw.errors import InputError

    photo = Path(__file__).resolve().parents[1] / "examples" / "armchair.png"
    if not photo.is_file():
        raise InputError(
            "--image: zsw is not installed from a source checkout, so there is no default photo "
            "(examples/armchair.png); name one"
        )
    return photo


def bench_reconstruct(
    env,
    *,
    weights=None,
    image: str | Path | None = None,
    backends: Sequence[tuple[str, str | None]] = (("torch", None),),
    extractions: Sequence[str] = ("fast", "dense"),
    kernel_impls: Sequence[str] | None = None,
    resolution: int = 128,
    repeats: int = 3,
    chunk_points: int | None = None,
    precisions: Sequence[str] = ("auto",),
    ttas: Sequence[str] = ("none",),
    graphs: Sequence[str] = ("on",),
    progress: Callable[[str], None] | None = None,
) -> list:
    """Per-stage latency rows (``zsw.bench._harness.BenchRow``) for every configuration.

    Args:
        env: :func:`zsw.bench._harness.environment` of this run.
        weights: checkpoint for the PyTorch backend (None = the demo model, ``random:<preset>``).
        image: the photo (default: ``examples/armchair.png`` of the repository).
        backends: ``(kind, engine folder)`` pairs; ``("torch", None)`` is the PyTorch model.
        extractions: grid extraction modes.
        kernel_impls: decoder kernels for the PyTorch backend: ``triton``, ``torch`` (the
            reference) and ``auto`` (what ``zsw reconstruct`` runs: Triton on CUDA, the CPU
            inference paths of :mod:`zsw.kernels.cpu` on a CPU). Default: ``triton`` and ``torch``
            on CUDA, ``auto`` and ``torch`` on the CPU (Triton there is the slow interpreter).
        resolution: grid cells per axis.
        repeats: timed runs per configuration (after one warm-up run).
        precisions: autocast of the PyTorch backend, as ``zsw reconstruct --precision`` (``auto``:
            bf16 on CUDA, fp32 on the CPU); exported engines keep their own.
        ttas: test-time augmentation, as ``zsw reconstruct --tta`` (``auto`` resolved for the
            device); every configuration with ``none`` runs before the augmented ones.
        graphs: ``on`` (what ``zsw reconstruct`` does: the pixel model and the encoder replayed
            from CUDA graphs from their third call, :mod:`zsw.infer.graphs`) and/or ``off`` (rows
            with ``+no-graphs`` in their mode). The warm-up run and the first timed run of a
            configuration are the eager calls and the capture: take ``repeats`` >= 3.
    """
    from zsw.bench._harness import BenchRow, mark_interpreter_rows
    from zsw.infer.graphs import switched
    from zsw.infer.image import load_image
    from zsw.infer.precision import autocast
    from zsw.infer.weights import open_backend

    device = torch.device(env.device)
    if kernel_impls is None:
        kernel_impls = ("triton", "torch") if device.type == "cuda" else ("auto", "torch")
    if image is None:
        image = default_image()
    rows: list[BenchRow] = []
    on_triton = set()  # providers whose decoder ran the Triton kernels
    for kind, engine in backends:
        backend, label, _ = open_backend(kind, weights if kind == "torch" else None, engine, device)
        size = backend.config.pixel.image_size
        tensor = torch.from_numpy(load_image(image, size).image).permute(2, 0, 1)[None].float().div(255).to(device)
        impls = kernel_impls if kind == "torch" else ("-",)
        for impl in impls:
            if kind == "torch":
                backend.model.set_kernel_impl(impl)
            provider = kind if impl == "-" else f"{kind}:{'ref' if impl == 'torch' else impl}"
            if kind == "torch" and _runs_triton(impl, device):
                on_triton.add(provider)
            configs = _configs(kind, precisions, extractions, ttas, device)
            for (precision, extraction, tta), graphed in itertools.product(configs, graphs):
                mode = extraction if tta == "none" else f"{extraction}+{tta}"
                mode += "" if graphed == "on" else "+no-graphs"
                if progress:
                    progress(f"{provider} {precision} {mode}")
                try:
                    with autocast(precision, device), switched(graphed == "on"):
                        args = (backend, tensor, resolution, extraction, chunk_points, tta)
                        _one_run(*args)  # warm-up
                        runs = [_one_run(*args) for _ in range(repeats)]
                    note = ""
                except Exception as e:  # noqa: BLE001 -- a failing configuration is a result
                    runs, note = [], f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                points = runs[0][1] if runs else 0
                for stage in STAGES:
                    ms = [r[0][stage] * 1e3 for r in runs]
                    p50, p20, p80 = _quantiles(ms)
                    if stage == "grid_decode":
                        work, unit = points / 1e6, "Mpoints/s"
                    elif stage == "total":
                        work, unit = 1.0, "images/s"
                    else:
                        work, unit = math.nan, ""
                    rows.append(
                        BenchRow(
                            gpu=env.gpu, torch=env.torch, triton=env.triton, git_sha=env.git_sha,
                            timestamp=env.timestamp, op=f"reconstruct:{stage}",
                            case=f"{backend.config.name}:{label}:{precision}",
                            provider=provider, mode=mode, dtype=precision, shape=f"res={resolution}",
                            p50_ms=p50, p20_ms=p20, p80_ms=p80,
                            throughput=work / (p50 * 1e-3) if p50 > 0 else math.nan, throughput_unit=unit,
                            peak_mem_mb=math.nan, note=note or f"points={points}",
                        )
                    )  # fmt: skip
    _speedups(rows)
    mark_interpreter_rows(rows, lambda r: r.provider in on_triton)
    return rows


def _runs_triton(impl: str, device: torch.device) -> bool:
    """Whether decoder kernels ``impl`` resolve to Triton on ``device`` (``auto`` does when
    ``ZSW_KERNELS=triton``)."""
    from zsw import kernels

    try:
        return kernels.resolve_impl("occupancy_mlp", impl, device) == "triton"
    except (RuntimeError, ValueError):  # cannot run: its rows say why
        return False


def _configs(
    kind: str, precisions: Sequence[str], extractions: Sequence[str], ttas: Sequence[str], device
) -> list[tuple[str, str, str]]:
    """(resolved precision, extraction, resolved tta) triples, every ``none`` first (a capped run
    that stops early keeps them); exported engines run in their own precision."""
    from zsw.infer.precision import run_precision
    from zsw.infer.tta import resolve_tta

    resolved = dict.fromkeys(run_precision(kind, p, device) for p in precisions)
    augment = sorted(dict.fromkeys(resolve_tta(t, device) for t in ttas), key=lambda t: t != "none")
    return [(p, e, t) for t in augment for p in resolved for e in extractions]


def _quantiles(ms: list[float]) -> tuple[float, float, float]:
    if not ms:
        return math.nan, math.nan, math.nan
    if len(ms) == 1:
        return ms[0], ms[0], ms[0]
    q = statistics.quantiles(ms, n=10, method="inclusive")
    return statistics.median(ms), q[1], q[7]


def _speedups(rows: list) -> None:
    """``dense``: dense time / fast time (same provider; total and grid decoding only, the other
    stages do not depend on the extraction); ``ref``: reference kernels / these kernels (Triton or
    ``auto``, same mode)."""
    by_key = {(r.op, r.case, r.provider, r.mode): r for r in rows}
    for r in rows:
        extraction, plus, tta = r.mode.partition("+")  # fast+flip is compared with dense+flip
        dense = by_key.get((r.op, r.case, r.provider, "dense" + plus + tta))
        stage = r.op.split(":", 1)[-1]
        if dense is not None and extraction != "dense" and r.p50_ms > 0 and stage in ("total", "grid_decode"):
            r.speedups["dense"] = dense.p50_ms / r.p50_ms
        kind, _, impl = r.provider.partition(":")
        off = by_key.get((r.op, r.case, f"{kind}:ref", r.mode))
        if impl and impl != "ref" and off is not None and r.p50_ms > 0:
            r.speedups["ref"] = off.p50_ms / r.p50_ms


def bench_shapes(env, resolution: int = 128, names: Sequence[str] | None = None) -> list:
    """``fast`` against ``dense`` on the analytic test shapes: decoded points and mesh agreement."""
    from zsw.bench._harness import BenchRow
    from zsw.eval.fields import TEST_SHAPES, occupancy_field
    from zsw.eval.metrics import mesh_agreement
    from zsw.infer.grid import grid_meshes
    from zsw.infer.settings import GridSettings

    rows = []
    for name in names or list(TEST_SHAPES):
        field = occupancy_field(name)
        meshes, seconds, points = {}, {}, {}
        for mode in ("dense", "fast"):
            t0 = time.perf_counter()
            (meshes[mode],), (stats,) = grid_meshes(lambda p, f=field: f(p[0])[None], 1, GridSettings(resolution, mode))
            seconds[mode], points[mode] = time.perf_counter() - t0, stats.evaluated_points
        dense_n, fast_n = points["dense"], points["fast"]
        f = mesh_agreement(meshes["dense"], meshes["fast"], 0.01)
        row = BenchRow(
            gpu=env.gpu, torch=env.torch, triton=env.triton, git_sha=env.git_sha, timestamp=env.timestamp,
            op="grid_extraction", case=name, provider="analytic", mode="fast", dtype="fp32",
            shape=f"res={resolution}", p50_ms=seconds["fast"] * 1e3, p20_ms=math.nan, p80_ms=math.nan,
            throughput=f, throughput_unit="F@0.01 vs dense", peak_mem_mb=math.nan,
            note=f"decoded {fast_n} of {dense_n} points ({dense_n / fast_n:.1f}x fewer)",
        )  # fmt: skip
        row.speedups["dense_points"] = dense_n / fast_n
        rows.append(row)
    return rows + bench_marching_cubes(env, resolution, (names or list(TEST_SHAPES))[0])


def _launches(fn: Callable[[], object], device: torch.device) -> str:
    """What one call of ``fn`` launches, from ``torch.profiler``: on a GPU the kernels and their
    summed GPU time against the call's wall time (far apart: the host's launches set the pace), on a
    CPU the operators and their CPU time."""
    from torch.profiler import ProfilerActivity, profile

    from zsw.bench._harness import ranked_kernels

    cuda = device.type == "cuda"
    fn()
    _sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        wall = (time.perf_counter() - t0) * 1e3
    own = ranked_kernels(prof.key_averages(), cuda)
    calls = sum(n for _, _, n in own)
    if cuda:
        return f"profiled: {calls} kernel launches, {sum(t for _, t, _ in own):.2f} ms on the GPU in {wall:.2f} ms"
    return f"profiled: {calls} operators in {wall:.2f} ms"


def bench_marching_cubes(env, resolution: int = 128, name: str | None = None) -> list:
    """Marching cubes of one dense grid on ``env.device``: the torch implementation against scikit-image.

    The ``skimage`` row includes the copy of the grid to the host, as the CPU path pays it; both
    include the closing of the grid's border and building the ``trimesh.Trimesh``. The torch row's
    note gives its agreement with scikit-image (F-score@0.001 on the vertices, face counts).
    """
    from scipy.spatial import cKDTree

    from zsw.bench._harness import add_speedups, measure
    from zsw.eval.fields import TEST_SHAPES, occupancy_field
    from zsw.infer.grid import marching_cubes, occupancy_grid

    name = name or next(iter(TEST_SHAPES))
    probs = occupancy_grid(lambda p: occupancy_field(name)(p[0])[None], 1, resolution, device=env.device)[0][0]
    meshes = {b: marching_cubes(probs, backend=b) for b in ("skimage", "torch")}
    reference, ours = meshes["skimage"].vertices, meshes["torch"].vertices
    near = [(cKDTree(b).query(a)[0] <= 1e-3).mean() for a, b in ((ours, reference), (reference, ours))]
    fscore = 2 * near[0] * near[1] / (near[0] + near[1])
    note = f"F@0.001 vs skimage {fscore:.4f}; faces {len(meshes['torch'].faces)} vs {len(meshes['skimage'].faces)}"
    note += "; " + _launches(lambda: marching_cubes(probs, backend="torch"), probs.device)
    rows = [
        measure(
            lambda b=backend: marching_cubes(probs, backend=b),
            env,
            op="marching_cubes",
            case=name,
            provider=backend,
            mode="dense",
            dtype="fp32",
            shape=f"{resolution + 1}^3",
            work=float(probs.numel()),
            work_unit="Mpoints/s",
            work_scale=1e6,
            note=note if backend == "torch" else "",
        )
        for backend in ("skimage", "torch")
    ]
    add_speedups(rows, "skimage")
    return rows


def summary_markdown(rows: Sequence, title: str) -> str:
    """Seconds per image by stage (one column per configuration) and the fast-vs-dense evidence."""
    ops = [r for r in rows if r.op.startswith("reconstruct:")]
    configs = sorted({(r.provider, r.dtype, r.mode) for r in ops})  # one column per precision too
    lines = [f"# {title}", ""]
    if configs:
        lines += ["| stage | " + " | ".join(f"{p} {d} {m}" for p, d, m in configs) + " |"]
        lines += ["|---|" + "---:|" * len(configs)]
        cell = {(r.op.split(":", 1)[1], r.provider, r.dtype, r.mode): r.p50_ms for r in ops}
        for stage in STAGES:
            vals = [cell.get((stage, *c), math.nan) for c in configs]
            lines.append(
                f"| {stage} | " + " | ".join(f"{v / 1e3:.3f} s" if np.isfinite(v) else "-" for v in vals) + " |"
            )
        lines.append("")
    shapes = [r for r in rows if r.op == "grid_extraction"]
    if shapes:
        lines += ["| shape | F@0.01 fast vs dense | fewer points |", "|---|---:|---:|"]
        lines += [f"| {r.case} | {r.throughput:.4f} | {r.speedups['dense_points']:.1f}x |" for r in shapes]
        lines.append("")
    for r in rows:
        if r.op == "marching_cubes" and r.provider == "torch":
            speedup = r.speedups.get("skimage", math.nan)
            head = f"Marching cubes ({r.case}, {r.shape}): torch {r.p50_ms:.1f} ms, {speedup:.2f}x scikit-image"
            lines += [f"{head}; {r.note}", ""]
    return "\n".join(lines)


def run(
    *,
    weights=None,
    backends: Sequence[str] = ("torch",),
    engine: str | Path | None = None,
    extractions: Sequence[str] = ("fast", "dense"),
    kernel_impls: Sequence[str] | None = None,
    precisions: Sequence[str] = ("auto",),
    ttas: Sequence[str] = ("none",),
    graphs: Sequence[str] = ("on",),
    resolution: int = 128,
    image: str | Path | None = None,
    repeats: int = 3,
    shapes: bool = True,
    device: str | None = None,
    out: Path | None = None,
    summary: Path | None = None,
    reporter=None,
) -> tuple[list, str, Path]:
    """``zsw bench reconstruct``: check the options, measure, append the rows to ``out`` (default
    ``bench/results/<device>-reconstruct.csv``), write the markdown ``summary`` if asked; returns
    ``(rows, markdown, csv path)``."""
    from zsw.bench._harness import append_csv, check_out_csv, check_out_file, environment, gpu_slug
    from zsw.errors import ConfigError, OptionError
    from zsw.infer.settings import BACKENDS, EXTRACTIONS, PRECISIONS, TTAS
    from zsw.io import atomic_write_text
    from zsw.kernels import IMPLS
    from zsw.report import Reporter

    for values, allowed, option in ((backends, BACKENDS, "--backend"), (extractions, EXTRACTIONS, "--extraction"),
                                    (kernel_impls or (), IMPLS, "--kernels"),
                                    (precisions, PRECISIONS, "--precision"), (ttas, TTAS, "--tta"),
                                    (graphs, ("on", "off"), "--graphs")):  # fmt: skip
        bad = [v for v in values if v not in allowed]
        if bad:
            raise OptionError(f"{option}: {bad[0]!r} is not one of {', '.join(allowed)}")
    if "tensorrt" in backends and engine is None:
        raise ConfigError("--backend tensorrt needs --engine DIR (a folder written by `zsw export`)")
    from zsw.hub import resolve_device
    from zsw.infer.weights import resolve_backend

    device = resolve_device(device)  # an unusable --device is a one-line error before any model loads

    # auto as `zsw reconstruct` resolves it (onnxruntime+torch: the packaged graphs, PyTorch's
    # decoder); onnxruntime without --engine runs the packaged model's graphs
    kinds = list(dict.fromkeys(resolve_backend(b, weights, None, device) if b == "auto" else b for b in backends))
    pairs = [(k, None if k in ("torch", "onnxruntime+torch") or engine is None else str(engine)) for k in kinds]
    if "torch" in kinds and "triton" in (kernel_impls or ()):
        _check_triton(torch.device(device))
    reporter = reporter or Reporter()
    env = environment(torch.device(device).type)
    out = out or Path("bench/results") / f"{gpu_slug(env)}-reconstruct.csv"
    check_out_csv(out, "--out")  # before measuring, not after it (the rows would be lost)
    if summary is not None:
        check_out_file(summary, "--summary", "reconstruct.md")
    with reporter.progress("reconstruct", None) as advance:
        rows = bench_reconstruct(env, weights=weights, image=image,
                                 backends=pairs,
                                 extractions=extractions, kernel_impls=kernel_impls, resolution=resolution,
                                 repeats=repeats, precisions=precisions, ttas=ttas, graphs=graphs,
                                 progress=lambda label: advance(0, note=label))  # fmt: skip
        if shapes:
            advance(0, note="fast vs dense on the test shapes")
            rows += bench_shapes(env, resolution)
    text = summary_markdown(rows, f"zsw reconstruct, resolution {resolution}, {env.gpu}")
    append_csv(out, rows)
    if summary is not None:
        atomic_write_text(summary, text)
    return rows, text, out


def _check_triton(device: torch.device) -> None:
    """``--kernels triton`` where the decoder's Triton kernels cannot run (a CPU without
    ``TRITON_INTERPRET=1``, no triton) is refused before any model loads, not a run of NaN rows."""
    from zsw import kernels
    from zsw.errors import OptionError

    for name in ("point_cross_attention", "occupancy_mlp"):
        try:
            kernels.resolve_impl(name, "triton", device)
        except RuntimeError as e:
            raise OptionError(f"--kernels triton cannot run on {device}: {e}") from None
