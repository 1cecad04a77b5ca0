"""ONNX export of the pixel, encoder and decoder graphs, checked and validated against eager PyTorch.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), the default of
torch 2.14. On the zsw model it keeps the symbolic ``batch`` and ``points`` dimensions through every
output, gives the intrinsics bit-exactly and emits a clean graph (fused ``LayerNormalization``, no
shape-arithmetic subgraphs). The TorchScript exporter (``exporter="torchscript"``) is kept as a
fallback: it traces in about a tenth of the time but emits extra shape ops, loses the output
dimension names (restored here from the graph specs) and differs from eager in the last bits.

Choices made for TensorRT (see ``docs/export.md``):

* opset 18 by default: ``LayerNormalization`` (17+) as one node, parsed by TensorRT 10 and 11 and by
  every ONNX Runtime of the last years;
* a dynamic ``batch`` axis on every graph and a dynamic ``points`` axis on the decoder: ONNX Runtime
  runs any chunk without padding, and the TensorRT builder pins them with optimisation profiles
  (the decoder's points to exactly ``points_chunk``, the last chunk padded);
* precision from the graph's dtypes, as TensorRT 11's strongly typed networks require: ``fp16``
  graphs compute in half precision with float32 inputs and outputs. ``bf16`` is refused for ONNX:
  ONNX accepts bfloat16 in Conv and Softplus only from opset 22, and torch 2.14's exporter then
  emits graphs that fail ``onnx.checker`` (constant-folded Conv weights stay float32) -- use
  ``--format torch-tensorrt`` for bf16.

Every exported graph is checked with ``onnx.checker`` (full check), its dimensions are compared with
the spec (an exporter that silently specialised a dynamic axis is an error, see pytorch#152018),
and ONNX Runtime runs it at two batch sizes against the eager fp32 model: the maximum absolute
error per output is stored in ``export.json`` and must stay within the precision's tolerance.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from zsw.errors import ConfigError, ZswError
from zsw.export.deps import require
from zsw.export.graphs import (
    GRAPHS,
    MAX_BATCH,
    PRECISIONS,
    GraphModule,
    GraphSpec,
    example_inputs,
    export_dims,
    graph_modules,
    graph_specs,
    quiet_export,
)
from zsw.export.manifest import ExportManifest, base_manifest, commit, prepare_out, read_manifest, sha256_file

__all__ = [
    "export_onnx",
    "check_settings",
    "export_graph",
    "check_graph",
    "validate_graph",
    "onnxruntime_session",
    "DEFAULT_OPSET",
    "TOLERANCE",
    "EXPORTERS",
]

DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
#: validation bound per precision: max |onnxruntime - eager| <= TOLERANCE * max(1, max |eager|)
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
# decoder points traced and validated with: neither 0, 1 nor a power of two, so no size is special
_TRACE_POINTS = 1000
_CHECK_POINTS = 1531

Progress = Callable[[str], None]


def export_graph(
    module: GraphModule,
    args: tuple[torch.Tensor, ...],
    path: Path,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
) -> None:
    """Trace ``module`` on ``args`` and write ``path`` (with an external ``.data`` file only when the
    weights exceed protobuf's 2 GB), then give its I/O dimensions the names of the spec."""
    from zsw import kernels

    spec = module.spec
    with kernels.exportable(), torch.no_grad(), quiet_export():
        if exporter == "dynamo":
            require("onnxscript", "ONNX export")
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_shapes=(export_dims(spec),),
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
            program.save(str(path))
        elif exporter == "torchscript":
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )
        else:
            raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    _apply_spec_dims(path, spec)


def _apply_spec_dims(path: Path, spec: GraphSpec) -> None:
    """Check the graph's inputs and outputs against ``spec`` and name its symbolic dimensions after
    the spec (``batch``, ``points``) everywhere in the graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    rename: dict[str, str] = {}
    changed = False
    for kind, values, specs in (("input", graph.input, spec.inputs), ("output", graph.output, spec.outputs)):
        names = [v.name for v in values]
        if names != [t.name for t in specs]:
            raise ZswError(f"{path.name}: graph {kind}s are {names}, expected {[t.name for t in specs]}")
        for value, t in zip(values, specs):
            dims = value.type.tensor_type.shape.dim
            if len(dims) != len(t.shape):
                raise ZswError(f"{path.name}: {kind} {t.name} has rank {len(dims)}, expected {len(t.shape)}")
            for axis, (dim, want) in enumerate(zip(dims, t.shape)):
                if isinstance(want, str):
                    if not dim.dim_param:
                        raise ZswError(
                            f"{path.name}: the exporter fixed dimension {axis} ({want}) of {t.name} to "
                            f"{dim.dim_value}; the graph would reject other sizes"
                        )
                    if dim.dim_param != want:
                        rename.setdefault(dim.dim_param, want)
                        dim.dim_param = want
                        changed = True
                elif dim.dim_value != want:
                    if dim.dim_value:
                        raise ZswError(f"{path.name}: dimension {axis} of {t.name} is {dim.dim_value}, expected {want}")
                    # a fixed size the exporter left symbolic (TorchScript does so for outputs): pin it
                    dim.dim_value = want
                    changed = True
    for value in graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    if changed:  # rewriting is costly for the big graphs; the dynamo exporter usually names them right
        onnx.save(model, str(path))


def check_graph(path: Path) -> None:
    """``onnx.checker`` with shape inference (``full_check``), as a one-line error."""
    onnx = require("onnx", "ONNX export")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ZswError(f"{path.name} fails onnx.checker: {str(e).strip().splitlines()[0]}") from None


def onnxruntime_session(path: Path, device: torch.device | str = "cpu", threads: int = 0):
    """An ONNX Runtime session for ``path`` on ``device`` (CUDA needs ``onnxruntime-gpu``)."""
    ort = require("onnxruntime", "ONNX Runtime inference")
    device = torch.device(device)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: fp16 graphs log a warning per node without a CPU kernel
    if threads:
        options.intra_op_num_threads = threads
    # ORT's worker threads busy-wait after each run by default; here PyTorch work (lifting, grid
    # bookkeeping, marching cubes) follows every call and would compete with the spinning threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ZswError(
                "this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu for --device cuda, "
                "or run the ONNX Runtime backend on the CPU"
            )
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for corrupt or unsupported graphs
        raise ZswError(f"ONNX Runtime cannot load {path}: {str(e).strip().splitlines()[0]}") from None


def validate_graph(
    session,
    spec: GraphSpec,
    reference: GraphModule,
    cases: list[tuple[torch.Tensor, ...]],
    precision: str,
) -> dict[str, Any]:
    """Run ``session`` and the eager fp32 ``reference`` on every input tuple of ``cases``; the
    maximum absolute error per output over all cases, the reference's magnitude and the verdict."""
    import onnxruntime as ort

    errors = {t.name: 0.0 for t in spec.outputs}
    scale = {t.name: 0.0 for t in spec.outputs}
    from zsw import kernels

    for args in cases:
        feed = {t.name: x.detach().cpu().float().numpy() for t, x in zip(spec.inputs, args)}
        got = session.run(spec.output_names, feed)
        with kernels.exportable(), torch.no_grad():
            want = reference(*args)
        for t, g, w in zip(spec.outputs, got, want):
            w = w.detach().cpu().float()
            g = torch.from_numpy(g)
            if g.shape != w.shape:
                raise ZswError(f"{spec.name}: ONNX Runtime gives {t.name} {tuple(g.shape)}, eager {tuple(w.shape)}")
            errors[t.name] = max(errors[t.name], (g - w).abs().max().item())
            scale[t.name] = max(scale[t.name], w.abs().max().item())
    tol = TOLERANCE[precision]
    bound = {k: tol * max(1.0, scale[k]) for k in errors}
    return {
        "runtime": f"onnxruntime {ort.__version__}",
        "provider": session.get_providers()[0],
        "batches": sorted({int(args[0].shape[0]) for args in cases}),
        "points": _CHECK_POINTS if spec.name == "decoder" else None,
        "max_abs_error": errors,
        "max_abs_reference": scale,
        "tolerance": tol,
        "passed": all(errors[k] <= bound[k] for k in errors),
    }


def check_settings(precision: str, opset: int | None, exporter: str, batch: int, points_chunk: int) -> int:
    """Validate the settings of :func:`export_onnx` (one-line :class:`ConfigError`); returns the opset."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        raise ConfigError(
            "bf16 ONNX graphs are not supported (ONNX takes bfloat16 Conv/Softplus only from opset 22 and the "
            "exporter's bf16 graphs fail onnx.checker); use --precision fp16, or --format torch-tensorrt for bf16"
        )
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not 17 <= opset <= 25:
        raise ConfigError(f"opset must be between 17 and 25, got {opset}")
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not 1 <= batch <= MAX_BATCH:
        raise ConfigError(f"batch must be between 1 and {MAX_BATCH}, got {batch}")
    if points_chunk < 1:
        raise ConfigError(f"points_chunk must be positive, got {points_chunk}")
    return opset


def export_onnx(
    model: torch.nn.Module,
    out: str | os.PathLike,
    *,
    precision: str = "fp32",
    opset: int | None = None,
    batch: int = 1,
    points_chunk: int = 65536,
    exporter: str = "dynamo",
    validate: bool = True,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> ExportManifest:
    """Export ``model`` (a :class:`~zsw.model.ZeroShapeW`) to ``out/{pixel,encoder,decoder}.onnx``.

    Args:
        model: the model; it is traced through the PyTorch reference kernels and left unchanged.
        out: the export directory (created; an existing export needs ``overwrite``).
        precision: ``fp32`` or ``fp16`` compute inside the graphs (I/O stays float32).
        opset: ONNX opset (default 18; 17 or higher for ``LayerNormalization``).
        batch: images per call that engines built from this export are tuned for (the ONNX batch
            axis is dynamic either way).
        points_chunk: query points per decoder call of the runtimes.
        exporter: ``dynamo`` (default) or ``torchscript``.
        validate: compare ONNX Runtime with eager PyTorch (otherwise only ``onnx.checker`` runs).
        overwrite: replace an existing export in ``out``.
        source: facts about the weights recorded in the manifest (``{"weights": path, "sha256": ...}``).
        progress: called with a short description before each step.

    Returns:
        The written :class:`~zsw.export.manifest.ExportManifest`.
    """
    require("onnx", "ONNX export")
    if validate:
        require("onnxruntime", "validating an ONNX export")
    opset = check_settings(precision, opset, exporter, batch, points_chunk)
    onnx = require("onnx", "ONNX export")

    out = Path(out)
    created = not out.exists()
    prepare_out(out, overwrite)
    note = progress or (lambda _msg: None)
    model = model.eval()
    specs = graph_specs(model.config)
    modules = graph_modules(model, precision)
    reference = graph_modules(model, "fp32")
    # batch 2 at least: torch.export specialises dimensions of size 0 and 1
    trace = example_inputs(model, max(2, batch), _TRACE_POINTS, seed=0)
    cases = [example_inputs(model, b, min(points_chunk, _CHECK_POINTS), seed=b) for b in (1, max(2, batch) + 1)]

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        records: dict[str, dict[str, Any]] = {}
        for name in GRAPHS:
            path = staging / f"{name}.onnx"
            note(f"exporting {name}")
            t0 = time.perf_counter()
            export_graph(modules[name], trace[name], path, opset, exporter)
            seconds = time.perf_counter() - t0
            note(f"checking {name}")
            check_graph(path)
            record = {"file": path.name, "export_s": round(seconds, 2), "validation": None}
            if validate:
                note(f"validating {name} with ONNX Runtime")
                session = onnxruntime_session(path)
                result = validate_graph(session, specs[name], reference[name], [c[name] for c in cases], precision)
                del session
                record["validation"] = result
                if not result["passed"]:
                    worst = max(result["max_abs_error"], key=result["max_abs_error"].get)
                    raise ZswError(
                        f"{name}.onnx: ONNX Runtime differs from eager PyTorch by {result['max_abs_error'][worst]:.3g} "
                        f"on {worst} (max |eager| {result['max_abs_reference'][worst]:.3g}, "
                        f"tolerance {result['tolerance']:g} relative); nothing was written"
                    )
            records[name] = record

        for record in records.values():
            record["sha256"] = sha256_file(staging / record["file"])
            record["bytes"] = (staging / record["file"]).stat().st_size
            data_file = staging / (record["file"] + ".data")
            if data_file.exists():
                record["external_data"] = {"file": data_file.name, "sha256": sha256_file(data_file)}
        manifest = base_manifest(model, staging, precision, batch, points_chunk, source)
        manifest["onnx"] = {
            "opset": opset,
            "exporter": f"torch.onnx.export(dynamo={exporter == 'dynamo'})",
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        }
        manifest["graphs"] = records
        commit(out, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed export into a new directory leaves nothing behind
    return read_manifest(out)
