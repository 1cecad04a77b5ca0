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

_OPS = ("attention", "mlp", "chamfer", "decoder")  # for --help (zsw.bench.kernels.OPS checks them)


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
    from zsw.bench._harness import rows_table
    from zsw.bench.kernels import run_job
    from zsw.cli._common import RichReporter

    reporter = RichReporter(min_total=1)
    rows, targets, csv, env = run_job(ops=ops, smoke=smoke, model=model, rep_ms=rep_ms, out=out, summary=summary,
                                      reporter=reporter)  # fmt: skip
    reporter.console.print(rows_table(rows, title=f"zsw kernels on {env.gpu} ({'smoke' if smoke else model})"))
    for target, value, met in targets:
        if met is not None:
            shown = f"{value:.2f} ms" if target.baseline is None else f"{value:.2f}x"
            reporter.console.print(f"{'[green]met' if met else '[red]MISSED'}[/] {target.label}: {shown}")
    typer.echo(f"appended {len(rows)} rows to {csv}" + (f"; wrote {summary}" if summary is not None else ""))
