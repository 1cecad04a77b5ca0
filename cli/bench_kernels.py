"""``zsw bench kernels``: time the Triton kernels against eager, torch.compile and SDPA baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

COMMAND = dict(
    help="Time the Triton kernels (point cross-attention, occupancy MLP, Chamfer, the whole decoder) "
    "against eager PyTorch, torch.compile, SDPA and chunked cdist, on shapes of the real model; "
    "print speed-ups, check the issue's targets and append rows to a CSV. Without a GPU it runs "
    "a tiny smoke configuration on the Triton interpreter."
    "\n\nExample:\n\n  zsw bench kernels --out bench/results/h100-kernels.csv --summary bench/results/h100-kernels.md",
)

_OPS = ("attention", "mlp", "chamfer", "decoder")


@cli_errors
def kernels(
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="CSV to append rows to (default: bench/results/<gpu>-kernels.csv)."),
    ] = None,
    summary: Annotated[
        Path | None, typer.Option(help="Also write the targets of issue 3 as a markdown table here.")
    ] = None,
    ops: Annotated[str, typer.Option(help=f"Comma-separated subset of: {', '.join(_OPS)}.")] = ",".join(_OPS),
    smoke: Annotated[bool, typer.Option("--smoke/--full", help="Tiny shapes (always on without a GPU).")] = False,
    model: Annotated[str, typer.Option(help="Model preset whose shapes are benchmarked.")] = "zeroshape-w",
    rep_ms: Annotated[float, typer.Option(help="Milliseconds of timed repetitions per measurement.")] = 100.0,
) -> None:
    import os

    import torch

    from zsw.errors import ConfigError

    selected = tuple(o.strip() for o in ops.split(",") if o.strip())
    unknown = [o for o in selected if o not in _OPS]
    if unknown or not selected:
        raise ConfigError(f"--ops: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(_OPS)}")
    gpu = torch.cuda.is_available()
    if not gpu:
        # the kernels must be decorated in interpreter mode: set it before zsw.kernels is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        smoke = True

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from zsw.bench import kernels as bench
    from zsw.bench._harness import append_csv, environment, gpu_slug, rows_table
    from zsw.io import atomic_write_text

    env = environment()
    console = Console()
    if out is None:
        out = Path("bench/results") / f"{gpu_slug(env)}-kernels{'-smoke' if smoke else ''}.csv"
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("kernels", total=None)
        rows = bench.run(
            env,
            ops=selected,
            smoke=smoke,
            model=model,
            rep_ms=rep_ms,
            progress=lambda label: bar.update(task, description=label, advance=1),
        )
    console.print(rows_table(rows, title=f"zsw kernels on {env.gpu} ({'smoke' if smoke else model})"))
    for target, value, met in bench.evaluate_targets(rows):
        if met is not None:
            shown = f"{value:.2f} ms" if target.baseline is None else f"{value:.2f}x"
            console.print(f"{'[green]met' if met else '[red]MISSED'}[/] {target.label}: {shown}")
    append_csv(out, rows)
    typer.echo(f"appended {len(rows)} rows to {out}")
    if summary is not None:
        atomic_write_text(summary, bench.targets_markdown(rows, env))
        typer.echo(f"wrote {summary}")
