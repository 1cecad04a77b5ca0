"""``zsw bench``: benchmarks, reported as ratios against baselines measured in the same run.

One command per benchmark in ``zsw.bench``: each prints its rows as a table and appends them to a CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli import _common as opts
from zsw.cli._common import RichReporter, cli_errors

# help texts too long for a line of the signature
_CSV = "CSV to append rows to (default: bench/results/<device>-<benchmark>.csv)."
_PRECISIONS = "auto, fp32, bf16, fp16 (repeatable; default auto)."
_TTAS = "Test-time augmentation: none, flip, flip-pixel or auto, repeatable; default none (the pipeline alone)."
_KERNELS = (
    "Decoder kernels: triton, torch (the reference), auto (default: triton and torch on CUDA, auto and torch on CPU)."
)

app = typer.Typer(
    help="Benchmarks: kernels, training step, end-to-end reconstruction (ratios to baselines in one run).",
    no_args_is_help=True,
)

Csv = Annotated[Path | None, typer.Option("--out", "-o", help=_CSV)]
_OPS = ("attention", "mlp", "chamfer", "decoder")  # for --help (zsw.bench.kernels.OPS checks them)


@app.command(
    "kernels",
    help="Time the Triton kernels (point cross-attention, occupancy MLP, Chamfer, the whole decoder) "
    "against eager PyTorch, torch.compile, SDPA and chunked cdist, on shapes of the real model; "
    "print speed-ups, check the issue's targets and append rows to a CSV. Without a GPU it runs "
    "a tiny smoke configuration on the Triton interpreter."
    "\n\nExample:\n\n  zsw bench kernels --out bench/results/h100-kernels.csv --summary bench/results/h100-kernels.md",
)
@cli_errors
def kernels(
    out: Csv = None,
    summary: Annotated[Path | None, typer.Option(help="Also write the targets of issue 3 as a markdown table.")] = None,
    ops: Annotated[str, typer.Option(help=f"Comma-separated subset of: {', '.join(_OPS)}.")] = ",".join(_OPS),
    smoke: Annotated[bool, typer.Option("--smoke/--full", help="Tiny shapes (always on without a GPU).")] = False,
    model: Annotated[str, typer.Option(help="Model preset whose shapes are benchmarked.")] = "zeroshape-w",
    rep_ms: Annotated[float, typer.Option(min=1, help="Milliseconds of timed repetitions per measurement.")] = 100.0,
) -> None:
    from zsw.bench._harness import rows_table
    from zsw.bench.kernels import run_job

    reporter = RichReporter(min_total=1)
    rows, targets, csv, env, ran = run_job(ops=ops, smoke=smoke, model=model, rep_ms=rep_ms, out=out,
                                           summary=summary, reporter=reporter)  # fmt: skip
    reporter.console.print(rows_table(rows, title=f"zsw kernels on {env.gpu} ({ran})"))
    for target, value, met in targets:
        if met is not None:
            shown = f"{value:.2f} ms" if target.baseline is None else f"{value:.2f}x"
            reporter.console.print(f"{'[green]met' if met else '[red]MISSED'}[/] {target.label}: {shown}")
    typer.echo(f"appended {len(rows)} rows to {csv}" + (f"; wrote {summary}" if summary is not None else ""))


@app.command(
    "train",
    help="Samples/s and peak memory of one training step (forward with every loss of the stage, backward, AdamW) "
    "on a synthetic batch, with the decoder's Triton kernels (triton) and the PyTorch references (torch), in one "
    "run. Triton needs CUDA (otherwise its row says so). Rows are appended to a CSV (shared benchmark format)."
    "\n\nExample:\n\n  zsw bench train --preset tiny --batch-size 4"
    "\n\n  zsw bench train --preset zeroshape-w --batch-size 80 --amp bf16",
)
@cli_errors
def train(
    preset: Annotated[str, typer.Option(help="Model preset or model YAML.")] = "tiny",
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per step.")] = 4,
    stage: Annotated[str, typer.Option(help="pixel, shape or full.")] = "full",
    impl: Annotated[list[str] | None, typer.Option(help="Kernels to time: torch, triton, auto (repeatable).")] = None,
    amp: Annotated[str, typer.Option(help="off or bf16 autocast.")] = "off",
    points: Annotated[int, typer.Option(min=1, help="Query points per sample.")] = 4096,
    rep_ms: Annotated[float, typer.Option(min=1, help="Time budget per provider, in milliseconds.")] = 1000,
    profile: Annotated[
        bool,
        typer.Option(
            help="Also print where a step spends its time: forward by part, backward, optimiser, top kernels."
        ),
    ] = False,
    device: opts.Device = None,
    out: Csv = None,
) -> None:
    from rich.console import Console

    from zsw.bench import train as bench
    from zsw.bench._harness import rows_table

    profiles: list[str] | None = [] if profile else None
    rows, csv = bench.run(preset=preset, batch_size=batch_size, stage=stage, impls=impl, amp=amp, points=points,
                          rep_ms=rep_ms, device=device, out=out, profiles=profiles)  # fmt: skip
    Console().print(rows_table(rows, title=f"training step, {preset} {stage}, batch {batch_size}"))
    for r in rows:
        if r.note:
            typer.echo(f"{r.provider}: {r.note}")
    for text in profiles or []:
        typer.echo("\n" + text)
    typer.echo(f"appended {len(rows)} rows to {csv}")


@app.command(
    "reconstruct",
    help="End-to-end latency per image and its breakdown (pixel model, encoder, grid decoding, marching "
    "cubes, export) for fast and dense extraction, decoder kernels on and off, one or more backends; "
    "plus fast-vs-dense agreement on the analytic test shapes. Rows are appended to a CSV "
    "(bench/results/<device>-reconstruct.csv by default), speed-ups are ratios within the run."
    "\n\nExample:\n\n  zsw bench reconstruct --weights demo"
    "\n\n  zsw bench reconstruct --weights zsw.safetensors --backend torch --backend tensorrt --engine exp/",
)
@cli_errors
def reconstruct(
    weights: opts.Weights = None,
    backend: Annotated[
        list[str] | None, typer.Option(help="auto, torch, onnxruntime or tensorrt (repeatable).")
    ] = None,
    engine: opts.Engine = None,
    extraction: Annotated[list[str] | None, typer.Option(help="fast and/or dense (repeatable; default both).")] = None,
    kernels: Annotated[list[str] | None, typer.Option(help=_KERNELS)] = None,
    precision: Annotated[list[str] | None, typer.Option(help=_PRECISIONS)] = None,
    tta: Annotated[list[str] | None, typer.Option(help=_TTAS)] = None,
    graphs: Annotated[
        list[str] | None,
        typer.Option(help="on (as zsw reconstruct: CUDA graphs on a GPU) and/or off (repeatable; default on)."),
    ] = None,
    resolution: opts.Resolution = 128,
    image: Annotated[Path | None, typer.Option(help="Photo to reconstruct (default: examples/armchair.png).")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per configuration (after a warm-up).")] = 3,
    shapes: Annotated[bool, typer.Option(help="Also measure fast vs dense on test shapes.")] = True,
    device: opts.Device = None,
    out: Csv = None,
    summary: Annotated[Path | None, typer.Option(help="Also write a markdown summary here.")] = None,
) -> None:
    from zsw.bench import reconstruct as bench
    from zsw.bench._harness import rows_table

    reporter = RichReporter(min_total=1)
    rows, text, csv = bench.run(weights=weights, backends=backend or ["torch"], engine=engine,
                                extractions=extraction or ["fast", "dense"], kernel_impls=kernels,
                                precisions=precision or ["auto"], ttas=tta or ["none"], graphs=graphs or ["on"],
                                resolution=resolution,
                                image=image, repeats=repeats, shapes=shapes, device=device, out=out, summary=summary,
                                reporter=reporter)  # fmt: skip
    if reporter.console.is_terminal:
        reporter.console.print(rows_table(rows, title=f"zsw reconstruct on {rows[0].gpu if rows else '?'}"))
    typer.echo(text)
    typer.echo(f"appended {len(rows)} rows to {csv}")
