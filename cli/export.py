"""``zsw export``: the model as ONNX graphs, TensorRT engines or torch-tensorrt programs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import RichReporter, cli_errors

COMMAND = dict(
    help="Export the model to ONNX graphs, TensorRT engines or torch-tensorrt programs: the pixel model, "
    "the encoder (per-block latent K/V) and the point decoder, described in DIR/export.json and run by "
    "`zsw reconstruct --backend onnxruntime|tensorrt --engine DIR`."
    "\n\nExample:\n\n  zsw export --weights model.safetensors --out engine/ --format onnx"
    "\n\n  zsw export --out engine/ --format tensorrt --precision fp16   # engines from an ONNX export"
    "\n\n  zsw export --weights model.safetensors --out engine/ --format torch-tensorrt --precision bf16",
)

# help text too long for a line of the signature
_WEIGHTS = (
    "Checkpoint (.safetensors), 'demo' (the packaged model) or 'random:PRESET' (untrained, for timing); default: the "
    "packaged model, as `zsw reconstruct`. Not needed for --format tensorrt over an existing ONNX export."
)


@cli_errors
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Export directory (holds export.json and the graphs).")],
    weights: Annotated[str | None, typer.Option("--weights", "-w", help=_WEIGHTS)] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx, tensorrt or torch-tensorrt.")] = "onnx",
    precision: Annotated[str, typer.Option(help="Graph precision: fp32, fp16 or bf16 (torch-tensorrt only).")] = "fp32",
    points_chunk: Annotated[int, typer.Option(help="Query points per decoder call (engines: exactly this).")] = 65536,
    batch: Annotated[int, typer.Option(help="Images per call the engines are built for (ONNX: dynamic).")] = 1,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 18).")] = None,
    exporter: Annotated[str, typer.Option(help="ONNX exporter: dynamo (default) or torchscript.")] = "dynamo",
    workspace_gib: Annotated[float, typer.Option(help="TensorRT workspace limit in GiB.")] = 4.0,
    validate: Annotated[bool, typer.Option(help="Compare every graph with eager PyTorch / ONNX Runtime.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing export in OUT.")] = False,
) -> None:
    from zsw.export.jobs import ExportSettings, summary_lines
    from zsw.export.jobs import export as run

    settings = ExportSettings(format=fmt, weights=weights, precision=precision, points_chunk=points_chunk,
                              batch=batch, opset=opset, exporter=exporter, workspace_gib=workspace_gib,
                              validate=validate, overwrite=overwrite)  # fmt: skip
    manifest = run(out, settings, RichReporter())
    typer.echo("\n".join(summary_lines(manifest)))
