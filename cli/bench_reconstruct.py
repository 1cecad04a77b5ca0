"""``zsw bench reconstruct``: end-to-end latency per image and its breakdown."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

COMMAND = dict(
    help="End-to-end latency per image and its breakdown (pixel model, encoder, grid decoding, marching "
    "cubes, export) for fast and dense extraction, decoder kernels on and off, one or more backends; "
    "plus fast-vs-dense agreement on the analytic test shapes. Rows are appended to a CSV "
    "(bench/results/<device>-reconstruct.csv by default), speed-ups are ratios within the run."
    "\n\nExample:\n\n  zsw bench reconstruct --weights demo"
    "\n\n  zsw bench reconstruct --weights zsw.safetensors --backend torch --backend tensorrt --engine exp/",
)


@cli_errors
def reconstruct(
    weights: Annotated[
        str | None, typer.Option(help="Checkpoint, 'demo' (default) or 'random:PRESET' for the torch backend.")
    ] = None,
    backend: Annotated[
        list[str] | None, typer.Option("--backend", help="torch, onnxruntime or tensorrt (repeatable).")
    ] = None,
    engine: Annotated[Path | None, typer.Option(help="Folder written by `zsw export` (non-torch backends).")] = None,
    extraction: Annotated[
        list[str] | None, typer.Option("--extraction", help="fast and/or dense (repeatable; default both).")
    ] = None,
    kernels: Annotated[
        list[str] | None,
        typer.Option("--kernels", help="Decoder kernels: triton and/or torch (default: both on CUDA, torch on CPU)."),
    ] = None,
    precision: Annotated[
        list[str] | None, typer.Option("--precision", help="auto, fp32, bf16, fp16 (repeatable; default auto).")
    ] = None,
    resolution: Annotated[int, typer.Option(min=8, max=1024, help="Grid cells per axis.")] = 128,
    image: Annotated[Path | None, typer.Option(help="Photo to reconstruct (default: examples/armchair.png).")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per configuration (after a warm-up).")] = 3,
    shapes: Annotated[bool, typer.Option("--shapes/--no-shapes", help="Also measure fast vs dense on test shapes.")] = (
        True
    ),
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: CUDA if available).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="CSV to append rows to.")] = None,
    summary: Annotated[Path | None, typer.Option(help="Also write a markdown summary here.")] = None,
) -> None:
    from zsw.bench import reconstruct as bench
    from zsw.bench._harness import rows_table
    from zsw.cli._common import RichReporter

    reporter = RichReporter(min_total=1)
    rows, text, csv = bench.run(weights=weights, backends=backend or ["torch"], engine=engine,
                                extractions=extraction or ["fast", "dense"], kernel_impls=kernels,
                                precisions=precision or ["auto"], resolution=resolution, image=image, repeats=repeats,
                                shapes=shapes, device=device, out=out, summary=summary, reporter=reporter)  # fmt: skip
    if reporter.console.is_terminal:
        reporter.console.print(rows_table(rows, title=f"zsw reconstruct on {rows[0].gpu if rows else '?'}"))
    typer.echo(text)
    typer.echo(f"appended {len(rows)} rows to {csv}")
