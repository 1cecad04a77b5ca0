"""``zsw bench train``: samples/s and peak memory of one training step, kernels on and off."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

COMMAND = dict(
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
    stage: Annotated[str, typer.Option(help="pixel or full.")] = "full",
    impl: Annotated[list[str] | None, typer.Option(help="Kernel implementations to time (repeatable).")] = None,
    amp: Annotated[str, typer.Option(help="off or bf16 autocast.")] = "off",
    points: Annotated[int, typer.Option(min=1, help="Query points per sample.")] = 4096,
    rep_ms: Annotated[float, typer.Option(min=1, help="Time budget per provider, in milliseconds.")] = 1000,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="CSV to append rows to (default: bench/results/<device>-train.csv)."),
    ] = None,
) -> None:
    import torch
    from rich.console import Console

    from zsw.bench._harness import append_csv, environment, gpu_slug, rows_table
    from zsw.bench.train import bench_train_step
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
        preset, batch_size, stage=stage, impls=impls, amp=amp, points=points, device=device, rep_ms=rep_ms
    )
    Console().print(rows_table(rows, title=f"training step, {preset} {stage}, batch {batch_size}"))
    for r in rows:
        if r.note:
            typer.echo(f"{r.provider}: {r.note}")
    if out is None:
        kind = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")
        out = Path("bench/results") / f"{gpu_slug(environment(kind))}-train.csv"
    append_csv(out, rows)
    typer.echo(f"appended {len(rows)} rows to {out}")
