"""torch-tensorrt (dynamo) compilation of the three graphs, saved with ``torch_tensorrt.save``.

The alternative to ONNX -> TensorRT: each :class:`~zsw.export.graphs.GraphModule` is traced with
``torch.export`` through the reference kernels (dynamic ``batch`` and decoder ``points``), compiled
with ``torch_tensorrt.dynamo.compile`` (one ``torch_tensorrt.Input`` range per input: batch
``[1, batch, batch]``, points ``[1, points_chunk, points_chunk]``) and saved as an
``ExportedProgram`` (``<graph>.<precision>.ep``). Operators TensorRT cannot convert stay in PyTorch,
so this path also works where the ONNX parser would refuse a node.

Precision: torch-tensorrt 2.14 compiles with explicit typing (its ``enabled_precisions`` argument
is ignored by the dynamo path), so the graphs are cast to the compute dtype (``fp16`` or ``bf16``)
with float32 I/O, as for ONNX. Programs carry the same :class:`~zsw.export.fingerprint.EngineFingerprint`
as TensorRT plans and are refused on another GPU architecture or TensorRT version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from zsw.errors import CheckpointError, ConfigError, ZswError
from zsw.export.deps import require, require_cuda
from zsw.export.fingerprint import EngineFingerprint, check_fingerprint, current_fingerprint
from zsw.export.graphs import GRAPHS, PRECISIONS, example_inputs, export_dims, graph_modules, quiet_export
from zsw.export.manifest import (
    MANIFEST,
    ExportManifest,
    base_manifest,
    listed_files,
    make_readable,
    prepare_out,
    read_manifest,
    refuse_failed_validation,
    settings_mismatch,
    sha256_file,
    write_manifest,
)
from zsw.export.runtime import RuntimeBackend

__all__ = ["compile_torch_tensorrt", "check_programs", "load_programs", "input_ranges", "TOLERANCE"]

#: validation bound per precision, relative to max(1, max |eager fp32|)
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 1e-1}


def input_ranges(spec, batch: int, points_chunk: int) -> list[tuple[list[int], list[int], list[int]]]:
    """(min, opt, max) shape of every input of a graph."""
    ranges = {"batch": (1, batch, batch), "points": (1, points_chunk, points_chunk)}
    return [tuple([ranges[d][i] if isinstance(d, str) else d for d in t.shape] for i in range(3)) for t in spec.inputs]


def compile_torch_tensorrt(
    model: torch.nn.Module,
    out,
    *,
    precision: str = "fp16",
    batch: int = 1,
    points_chunk: int = 65536,
    workspace_gib: float = 4.0,
    overwrite: bool = False,
    validate: bool = True,
    source: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportManifest:
    """Compile the pixel, encoder and decoder graphs of ``model`` with torch-tensorrt into ``out``.

    An existing export in ``out`` with the same settings and weights gains the programs (its ONNX
    graphs stay); anything else needs ``overwrite``.
    """
    from pathlib import Path

    from zsw import kernels

    torch_tensorrt = require("torch_tensorrt", "torch-tensorrt compilation")
    require_cuda("torch-tensorrt compilation")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    note = progress or (lambda _msg: None)
    out = Path(out)
    data = None
    stale: set[str] = set()
    if (out / MANIFEST).exists() and not overwrite:
        existing = read_manifest(out)
        why = settings_mismatch(existing, precision, batch, points_chunk, source)
        if why:
            raise ConfigError(f"{out} already holds a zsw export and {why}; pass --overwrite or choose another --out")
        data = existing.data
    else:
        if (out / MANIFEST).exists():  # --overwrite: the old export's files go once the new one is recorded
            stale = listed_files(json.loads((out / MANIFEST).read_text()))
        prepare_out(out, overwrite=True)
    device = torch.device("cuda", torch.cuda.current_device())
    model = model.to(device).eval()
    if data is None:
        data = base_manifest(model, out, precision, batch, points_chunk, source)
    trt_version = require("tensorrt", "torch-tensorrt compilation").__version__
    fingerprint = current_fingerprint(precision, trt_version, device.index)
    modules = graph_modules(model, precision)
    reference = graph_modules(model, "fp32")
    trace = example_inputs(model, max(2, batch), min(points_chunk, 1000), seed=0)
    programs: dict[str, Any] = {}
    for name in GRAPHS:
        module = modules[name]
        spec = module.spec
        ranges = input_ranges(spec, batch, points_chunk)
        inputs = [
            torch_tensorrt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=torch.float32)
            for lo, opt, hi in ranges
        ]
        note(f"compiling {name} with torch-tensorrt")
        t0 = time.perf_counter()
        with kernels.exportable(), torch.no_grad(), quiet_export():
            program = torch.export.export(module, trace[name], dynamic_shapes=(export_dims(spec),))
            compiled = torch_tensorrt.dynamo.compile(
                program,
                arg_inputs=inputs,
                min_block_size=1,
                workspace_size=int(workspace_gib * (1 << 30)),
            )
        seconds = time.perf_counter() - t0
        file = f"{name}.{precision}.ep"
        from zsw.io import atomic_path

        with atomic_path(out / file) as tmp:
            torch_tensorrt.save(compiled, str(tmp), output_format="exported_program", arg_inputs=inputs)
        make_readable(out / file)
        entry = {"file": file, "sha256": sha256_file(out / file), "compile_s": round(seconds, 2), "ranges": ranges}
        if validate:
            note(f"validating {name}")
            entry["validation"] = _validate(compiled, reference[name], spec, batch, points_chunk, model, precision)
        programs[name] = entry
        data["torch_tensorrt"] = {
            "torch_tensorrt": torch_tensorrt.__version__,
            "fingerprint": fingerprint.as_dict(),
            "programs": programs,
        }
        write_manifest(out, data)
    for name in stale - listed_files(data):
        (out / name).unlink(missing_ok=True)
    failed = [n for n, e in programs.items() if e.get("validation") and not e["validation"]["passed"]]
    if failed:
        r = programs[failed[0]]["validation"]
        worst = max(r["max_abs_error"], key=r["max_abs_error"].get)
        raise ZswError(
            f"the torch-tensorrt {failed[0]} program differs from eager PyTorch by {r['max_abs_error'][worst]:.3g} "
            f"on {worst} (tolerance {r['tolerance']:g} relative); see {out / 'export.json'}"
        )
    return read_manifest(out)


@torch.no_grad()
def _validate(compiled, reference, spec, batch, points_chunk, model, precision) -> dict[str, Any]:
    from zsw import kernels

    errors = {t.name: 0.0 for t in spec.outputs}
    scale = {t.name: 0.0 for t in spec.outputs}
    for b in sorted({1, batch}):
        args = example_inputs(model, b, min(points_chunk, 1531), seed=b)[spec.name]
        got = compiled(*args)
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        with kernels.exportable():
            want = reference(*args)
        for t, g, w in zip(spec.outputs, got, want):
            errors[t.name] = max(errors[t.name], (g.float() - w).abs().max().item())
            scale[t.name] = max(scale[t.name], w.abs().max().item())
    tol = TOLERANCE[precision]
    return {
        "against": "eager PyTorch (fp32, reference kernels)",
        "max_abs_error": errors,
        "max_abs_reference": scale,
        "tolerance": tol,
        "passed": all(errors[k] <= tol * max(1.0, scale[k]) for k in errors),
    }


def check_programs(manifest: ExportManifest, device: torch.device) -> None:
    """Refuse programs compiled for another GPU architecture or TensorRT version."""
    section = manifest.data["torch_tensorrt"]
    stored = EngineFingerprint.from_dict(section.get("fingerprint") or {})
    current = current_fingerprint(stored.precision, device=device.index)
    what = str(manifest.root / next(iter(section["programs"].values()))["file"])
    check_fingerprint(stored, current, what, rebuild="zsw export --format torch-tensorrt --weights W --out DIR")


def load_programs(manifest: ExportManifest, device: torch.device) -> dict[str, torch.nn.Module]:
    torch_tensorrt = require("torch_tensorrt", "the torch-tensorrt backend")
    section = manifest.data["torch_tensorrt"]
    programs = {}
    with torch.cuda.device(device):
        for name in GRAPHS:
            entry = section["programs"].get(name)
            if entry is None:
                raise CheckpointError(f"{manifest.root} lacks the {name} program; run `zsw export` again")
            programs[name] = torch_tensorrt.load(str(manifest.file(entry))).module()
    return programs


class TorchTensorRTBackend(RuntimeBackend):
    """torch-tensorrt programs (``zsw export --format torch-tensorrt``)."""

    name = "torch-tensorrt"

    def __init__(self, manifest: ExportManifest, device: torch.device):
        if not (manifest.data.get("torch_tensorrt") or {}).get("programs"):
            raise CheckpointError(
                f"{manifest.root} holds no torch-tensorrt programs; "
                "build them with `zsw export --format torch-tensorrt`"
            )
        weights = manifest.weights_option() or "W"
        rebuild = f"zsw export --format torch-tensorrt --weights {weights} --out {manifest.root}"
        refuse_failed_validation(manifest, manifest.data["torch_tensorrt"]["programs"], "program", rebuild)
        if device.type != "cuda":
            raise ConfigError("the torch-tensorrt backend runs on a CUDA device, not on the CPU")
        check_programs(manifest, device)
        super().__init__(manifest, device)
        self.programs = load_programs(manifest, device)

    @torch.no_grad()
    def _run(self, graph: str, args: list[Tensor]) -> list[Tensor]:
        out = self.programs[graph](*args)
        return list(out) if isinstance(out, (tuple, list)) else [out]
