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
    backends = backend or ["torch"]
    for b in backends:
        if b not in ("torch", "onnxruntime", "tensorrt"):
            raise typer.BadParameter(f"{b!r} is not one of torch, onnxruntime, tensorrt", param_hint="--backend")
    extractions = extraction or ["fast", "dense"]
    for e in extractions:
        if e not in ("fast", "dense"):
            raise typer.BadParameter(f"{e!r} is not one of fast, dense", param_hint="--extraction")
    for k in kernels or ():
        if k not in ("triton", "torch"):
            raise typer.BadParameter(f"{k!r} is not one of triton, torch", param_hint="--kernels")

    import torch
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from zsw.bench import reconstruct as bench
    from zsw.bench._harness import append_csv, environment, gpu_slug, rows_table
    from zsw.errors import ConfigError
    from zsw.io import atomic_write_text

    if any(b != "torch" for b in backends) and engine is None:
        raise ConfigError("--backend onnxruntime/tensorrt needs --engine DIR (a folder written by `zsw export`)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment(torch.device(device).type)
    console = Console(stderr=True)
    out = out or Path("bench/results") / f"{gpu_slug(env)}-reconstruct.csv"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:  # fmt: skip
        task = bar.add_task("reconstruct", total=None)
        rows = bench.bench_reconstruct(
            env,
            weights=weights,
            image=image,
            backends=[(b, None if b == "torch" else str(engine)) for b in backends],
            extractions=extractions,
            kernel_impls=kernels,
            resolution=resolution,
            repeats=repeats,
            progress=lambda label: bar.update(task, description=label),
        )
        if shapes:
            bar.update(task, description="fast vs dense on the test shapes")
            rows += bench.bench_shapes(env, resolution)
    if console.is_terminal:
        console.print(rows_table(rows, title=f"zsw reconstruct on {env.gpu}"))
    text = bench.summary_markdown(rows, f"zsw reconstruct, resolution {resolution}, {env.gpu}")
    typer.echo(text)
    append_csv(out, rows)
    if summary is not None:
        atomic_write_text(summary, text)
    typer.echo(f"appended {len(rows)} rows to {out}")
