"""``zsw bench train``: samples/s and peak memory of one training step, kernels on and off."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

COMMAND = dict(
    help="Samples/s and peak memory of one training step (forward with every loss of the stage, backward, AdamW), "
    "with the decoder's Triton kernels (triton) and the PyTorch references (torch), on a synthetic batch. "
    "Triton needs CUDA (it is reported unavailable otherwise)."
    "\n\nExample:\n\n  zsw bench train --preset tiny --batch-size 4"
    "\n\n  zsw bench train --preset zeroshape-w --batch-size 80 --amp bf16 --csv bench/results/train.csv",
)


@cli_errors
def train(
    preset: Annotated[str, typer.Option(help="Model preset or model YAML.")] = "tiny",
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per step.")] = 4,
    stage: Annotated[str, typer.Option(help="pixel or full.")] = "full",
    impl: Annotated[list[str] | None, typer.Option(help="Kernel implementations to time (repeatable).")] = None,
    amp: Annotated[str, typer.Option(help="off or bf16 autocast.")] = "off",
    steps: Annotated[int, typer.Option(min=1, help="Timed steps (median reported).")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed steps first.")] = 2,
    points: Annotated[int, typer.Option(min=1, help="Query points per sample.")] = 4096,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    csv: Annotated[Path | None, typer.Option(help="Append the rows to this CSV file.")] = None,
) -> None:
    from zsw.bench.train import bench_train_step, format_rows, write_csv
    from zsw.errors import ConfigError

    if stage not in ("pixel", "full"):
        raise ConfigError(f"--stage must be pixel or full, got {stage!r}")
    if amp not in ("off", "bf16"):
        raise ConfigError(f"--amp must be off or bf16, got {amp!r}")
    impls = impl or ["torch", "triton"]
    bad = [i for i in impls if i not in ("torch", "triton")]
    if bad:
        raise ConfigError(f"--impl must be torch or triton, got {bad[0]!r}")
    rows = bench_train_step(
        preset, batch_size, stage=stage, impls=impls, amp=amp, steps=steps, warmup=warmup, points=points, device=device
    )
    typer.echo(format_rows(rows))
    if csv is not None:
        typer.echo(f"appended {len(rows)} rows to {write_csv(rows, csv)}")
