"""``zsw export``: the model as ONNX graphs, TensorRT engines or torch-tensorrt programs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

FORMATS = ("onnx", "tensorrt", "torch-tensorrt")

COMMAND = dict(
    help="Export the model to ONNX graphs, TensorRT engines or torch-tensorrt programs: the pixel model, "
    "the encoder (per-block latent K/V) and the point decoder, described in DIR/export.json and run by "
    "`zsw reconstruct --backend onnxruntime|tensorrt --engine DIR`."
    "\n\nExample:\n\n  zsw export --weights model.safetensors --out engine/ --format onnx"
    "\n\n  zsw export --out engine/ --format tensorrt --precision fp16   # engines from an ONNX export"
    "\n\n  zsw export --weights model.safetensors --out engine/ --format torch-tensorrt --precision bf16",
)


def _progress():
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True)


def _load_weights(weights: str | None, fmt: str):
    """The model and the facts about its weights recorded in export.json."""
    from zsw import checkpoint
    from zsw.export.manifest import sha256_file
    from zsw.infer.reconstruct import resolve_weights

    resolved, label, warning = resolve_weights(weights)  # None: the packaged model, as `zsw reconstruct`
    if warning:
        typer.secho(f"WARNING: {warning}", fg=typer.colors.YELLOW, err=True)
    if isinstance(resolved, Path):
        return checkpoint.load(resolved), {"weights": str(resolved), "sha256": sha256_file(resolved)}
    return resolved, {"weights": label}


def _summary(manifest) -> None:
    data = manifest.data
    typer.echo(
        f"{manifest.root}: {data['model']['name']} model, {data['precision']}, batch {data['batch']}, "
        f"{data['points_chunk']} points per decoder call"
    )
    for g in (data.get("graphs") or {}).values():
        v = g.get("validation") or {}
        err = max(v["max_abs_error"].values()) if v else None
        check = f"max |onnxruntime - eager| {err:.2e}" if err is not None else "not validated"
        typer.echo(f"  {g['file']:<22} {g['bytes'] / 2**20:8.1f} MiB  {check}")
    for e in ((data.get("tensorrt") or {}).get("engines") or {}).values():
        v = e.get("validation") or {}
        err = f"max |tensorrt - onnxruntime| {max(v['max_abs_error'].values()):.2e}" if v else "not validated"
        typer.echo(f"  {e['file']:<22} built in {e['build_s']:.1f} s  {err}")
    for e in ((data.get("torch_tensorrt") or {}).get("programs") or {}).values():
        v = e.get("validation") or {}
        err = f"max |torch-tensorrt - eager| {max(v['max_abs_error'].values()):.2e}" if v else "not validated"
        typer.echo(f"  {e['file']:<22} compiled in {e['compile_s']:.1f} s  {err}")


@cli_errors
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Export directory (holds export.json and the graphs).")],
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            "-w",
            help="Checkpoint (.safetensors), 'demo' (the packaged model) or 'random:PRESET' (untrained, for timing); "
            "default: the packaged model, as `zsw reconstruct`. Not needed for --format tensorrt over an existing "
            "ONNX export.",
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx, tensorrt or torch-tensorrt.")] = "onnx",
    precision: Annotated[
        str, typer.Option(help="Compute precision inside the graphs: fp32, fp16 or bf16 (torch-tensorrt only).")
    ] = "fp32",
    points_chunk: Annotated[int, typer.Option(help="Query points per decoder call (engines: exactly this).")] = 65536,
    batch: Annotated[int, typer.Option(help="Images per call the engines are built for (ONNX: dynamic).")] = 1,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 18).")] = None,
    exporter: Annotated[str, typer.Option(help="ONNX exporter: dynamo (default) or torchscript.")] = "dynamo",
    workspace_gib: Annotated[float, typer.Option(help="TensorRT workspace limit in GiB.")] = 4.0,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Compare every graph with eager PyTorch / ONNX Runtime.")
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing export in OUT.")] = False,
) -> None:
    from zsw.errors import ConfigError

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "tensorrt":
        from zsw.export.deps import require, require_cuda

        require("tensorrt", "--format tensorrt")  # fail before a long ONNX export, not after it
        require_cuda("--format tensorrt")
    if fmt == "torch-tensorrt":
        from zsw.export.deps import require, require_cuda

        require("torch_tensorrt", "--format torch-tensorrt")
        require_cuda("--format torch-tensorrt")

    if fmt != "torch-tensorrt":
        from zsw.export.onnx import check_settings

        check_settings(precision, opset, exporter, batch, points_chunk)  # before loading any weights
    manifest = model = source = None
    if fmt == "tensorrt":
        manifest = _reusable_onnx(out, weights, precision, batch, points_chunk)
    if manifest is None:
        model, source = _load_weights(weights, fmt)

    with _progress() as bar:
        task = bar.add_task("exporting", total=None)

        def note(message: str) -> None:
            bar.update(task, description=message)

        if fmt == "torch-tensorrt":
            from zsw.export.torch_tensorrt import compile_torch_tensorrt

            manifest = compile_torch_tensorrt(
                model,
                out,
                precision=precision,
                batch=batch,
                points_chunk=points_chunk,
                workspace_gib=workspace_gib,
                overwrite=overwrite,
                validate=validate,
                source=source,
                progress=note,
            )
        else:
            if manifest is None:
                from zsw.export.onnx import export_onnx

                manifest = export_onnx(
                    model,
                    out,
                    precision=precision,
                    opset=opset,
                    batch=batch,
                    points_chunk=points_chunk,
                    exporter=exporter,
                    validate=validate,
                    overwrite=overwrite,
                    source=source,
                    progress=note,
                )
            if fmt == "tensorrt":
                from zsw.export.tensorrt import build_engines

                manifest = build_engines(out, workspace_gib=workspace_gib, validate=validate, progress=note)
    _summary(manifest)


def _reusable_onnx(out: Path, weights: str | None, precision: str, batch: int, points_chunk: int):
    """The ONNX export in ``out`` when engines can be built from it as it is, else None."""
    from zsw.errors import ConfigError
    from zsw.export.manifest import MANIFEST, read_manifest, settings_mismatch, sha256_file

    if not (out / MANIFEST).exists():
        return None
    manifest = read_manifest(out)
    sha = sha256_file(weights) if weights is not None and Path(weights).is_file() else None
    why = settings_mismatch(manifest, precision, batch, points_chunk, sha) if manifest.has_onnx else "no ONNX graphs"
    if why is None:
        return manifest
    if weights is None:
        raise ConfigError(f"the export in {out} cannot be reused ({why}); pass --weights to export again")
    return None
