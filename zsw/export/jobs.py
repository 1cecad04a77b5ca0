"""The export job: a checkpoint in, ONNX graphs, TensorRT engines or torch-tensorrt programs out.

:func:`export` is what ``zsw export`` runs::

    from zsw.export.jobs import ExportSettings, export

    manifest = export("engine/", ExportSettings(format="onnx", weights="model.safetensors"))
    print("\\n".join(summary_lines(manifest)))

Missing runtimes (tensorrt, torch_tensorrt, a CUDA device) and bad settings fail before any
weights load; ``--format tensorrt`` over an existing ONNX export with the same settings and weights
builds engines from it instead of exporting again. The export folder is locked for the run
(:func:`zsw.locks.lock_folder`): a second export into it stops at once with one line naming the
first, instead of taking the first's staging folder for a killed run's leftover.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zsw.errors import ConfigError, OptionError
from zsw.report import Reporter

__all__ = ["ExportSettings", "export", "summary_lines", "FORMATS"]

#: what ``zsw export --format`` makes
FORMATS = ("onnx", "tensorrt", "torch-tensorrt")


@dataclass(frozen=True)
class ExportSettings:
    """Everything ``zsw export`` is asked (see ``zsw export --help``)."""

    format: str = "onnx"
    weights: str | None = None  # None: the packaged model, as `zsw reconstruct`
    precision: str = "fp32"
    points_chunk: int = 65536
    batch: int = 1
    opset: int | None = None
    exporter: str = "dynamo"
    workspace_gib: float = 4.0
    validate: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        """Every value checked here, before any package, device or weights is touched: a bad one is
        a usage error naming its option (exit 2), whatever the format."""
        from zsw.export.graphs import MAX_BATCH, PRECISIONS
        from zsw.export.onnx import EXPORTERS

        def choice(value, choices: tuple[str, ...], option: str) -> None:
            if value not in choices:
                raise OptionError(f"{option} must be one of {', '.join(choices)}, got {value!r}")

        choice(self.format, FORMATS, "--format")
        choice(self.precision, PRECISIONS, "--precision")
        if self.precision == "bf16" and self.format != "torch-tensorrt":
            raise OptionError(
                "--precision bf16: bf16 ONNX graphs are not supported (ONNX takes bfloat16 Conv/Softplus only from "
                "opset 22 and the exporter's bf16 graphs fail onnx.checker); use --precision fp16, or "
                "--format torch-tensorrt for bf16"
            )
        choice(self.exporter, EXPORTERS, "--exporter")
        if self.opset is not None and not 17 <= self.opset <= 25:
            raise OptionError(f"--opset: {self.opset} is not between 17 and 25")
        if not 1 <= self.batch <= MAX_BATCH:
            raise OptionError(f"--batch: {self.batch} is not between 1 and {MAX_BATCH}")
        if self.points_chunk < 1:
            raise OptionError(f"--points-chunk: {self.points_chunk} is not a positive number")
        if not self.workspace_gib > 0:
            raise OptionError(f"--workspace-gib: {self.workspace_gib} is not a positive number")


def export(out: str | os.PathLike, settings: ExportSettings, reporter: Reporter | None = None):
    """Export as ``settings`` say into ``out``; returns the written :class:`ExportManifest`."""
    from zsw.locks import lock_folder

    out, s = Path(out), settings
    with lock_folder(out, "--out"):  # a second export into the folder stops here
        return _export(out, s, reporter or Reporter())


def _export(out: Path, s: ExportSettings, reporter: Reporter):
    _check_out(out, s)
    _check_runtime(s)
    manifest = _reusable_onnx(out, s) if s.format == "tensorrt" else None
    model = source = None
    if manifest is None:
        model, source = _load_weights(s.weights, reporter)
    with reporter.progress("exporting", None) as advance:

        def note(message: str) -> None:
            advance(0, note=message)

        if s.format == "torch-tensorrt":
            from zsw.export.torch_tensorrt import compile_torch_tensorrt

            return compile_torch_tensorrt(model, out, precision=s.precision, batch=s.batch,
                                          points_chunk=s.points_chunk, workspace_gib=s.workspace_gib,
                                          overwrite=s.overwrite, validate=s.validate, source=source,
                                          progress=note)  # fmt: skip
        if manifest is None:
            from zsw.export.onnx import export_onnx

            manifest = export_onnx(model, out, precision=s.precision, opset=s.opset, batch=s.batch,
                                   points_chunk=s.points_chunk, exporter=s.exporter, validate=s.validate,
                                   overwrite=s.overwrite, source=source, progress=note)  # fmt: skip
        if s.format == "tensorrt":
            from zsw.export.tensorrt import build_engines

            manifest = build_engines(out, workspace_gib=s.workspace_gib, validate=s.validate, progress=note)
    return manifest


def _check_out(out: Path, s: ExportSettings) -> None:
    """The export directory's problems, before the weights load (seconds for a large model)."""
    from zsw.export.manifest import MANIFEST

    if s.format == "onnx" and (out / MANIFEST).exists() and not s.overwrite:
        raise ConfigError(f"{out} already holds a zsw export; pass --overwrite to replace it")


def _check_runtime(s: ExportSettings) -> None:
    """Fail in one line before a long export, not after it."""
    from zsw.export.deps import require, require_cuda

    if s.format != "onnx":
        require("tensorrt" if s.format == "tensorrt" else "torch_tensorrt", f"--format {s.format}")
        require_cuda(f"--format {s.format}")
    if s.format != "torch-tensorrt":
        from zsw.export.onnx import check_settings

        check_settings(s.precision, s.opset, s.exporter, s.batch, s.points_chunk)  # before loading weights


def _load_weights(weights: str | None, reporter: Reporter):
    """The model and the facts about its weights recorded in export.json."""
    from zsw import checkpoint
    from zsw.infer.weights import resolve_weights
    from zsw.io import checkpoint_sha256  # cached: _source_of may have hashed the same file

    resolved, label, warning = resolve_weights(weights)  # None: the packaged model, as `zsw reconstruct`
    if warning:
        reporter.warning(warning)
    if isinstance(resolved, Path):
        # the packaged model by its name, not by this machine's path to it
        name = label if label.startswith("demo:") else str(resolved)
        return checkpoint.load(resolved), {"weights": name, "sha256": checkpoint_sha256(resolved)}
    return resolved, {"weights": label}


def _reusable_onnx(out: Path, s: ExportSettings):
    """The ONNX export in ``out`` when engines can be built from it as it is, else None."""
    from zsw.export.manifest import MANIFEST, read_manifest, settings_mismatch

    if not (out / MANIFEST).exists():
        return None
    manifest = read_manifest(out)
    w = s.weights
    why = "no ONNX graphs"
    if manifest.has_onnx:
        why = settings_mismatch(manifest, s.precision, s.batch, s.points_chunk, _source_of(w))
        opset = (manifest.data.get("onnx") or {}).get("opset")
        if why is None and s.opset is not None and opset != s.opset:  # asked for, as for an older TensorRT
            why = f"its graphs have opset {opset}, not {s.opset}"
    if why is None:
        return manifest
    if w is None:
        raise ConfigError(f"the export in {out} cannot be reused ({why}); pass --weights to export again")
    return None


def _source_of(weights: str | None) -> dict | None:
    """The ``source`` record :func:`_load_weights` would write for ``weights``, without loading
    them (None: no weights asked for)."""
    from zsw.errors import CheckpointError
    from zsw.infer.weights import demo_weights
    from zsw.io import checkpoint_sha256

    if weights is None:
        return None
    if weights.startswith("random:"):
        return {"weights": weights}
    path = demo_weights() if weights == "demo" else Path(weights)
    if path is None or not path.is_file():
        raise CheckpointError(f"checkpoint {weights} does not exist")
    return {"weights": weights, "sha256": checkpoint_sha256(path)}


def summary_lines(manifest) -> list[str]:
    """What an export holds, one line per graph, engine or program, with its validation error."""
    data = manifest.data
    lines = [
        f"{manifest.root}: {data['model']['name']} model, {data['precision']}, batch {data['batch']}, "
        f"{data['points_chunk']} points per decoder call"
    ]

    def worst(entry: dict) -> float | None:
        v = entry.get("validation") or {}
        return max(v["max_abs_error"].values()) if v else None

    for g in (data.get("graphs") or {}).values():
        err = worst(g)
        check = f"max |onnxruntime - eager| {err:.2e}" if err is not None else "not validated"
        lines.append(f"  {g['file']:<22} {g['bytes'] / 2**20:8.1f} MiB  {check}")
    for e in ((data.get("tensorrt") or {}).get("engines") or {}).values():
        err = worst(e)
        check = f"max |tensorrt - onnxruntime| {err:.2e}" if err is not None else "not validated"
        lines.append(f"  {e['file']:<22} built in {e['build_s']:.1f} s  {check}")
    for e in ((data.get("torch_tensorrt") or {}).get("programs") or {}).values():
        err = worst(e)
        check = f"max |torch-tensorrt - eager| {err:.2e}" if err is not None else "not validated"
        lines.append(f"  {e['file']:<22} compiled in {e['compile_s']:.1f} s  {check}")
    return lines
