"""``zsw bench``: benchmarks, reported as ratios against baselines measured in the same run.

One module per benchmark (``cli/bench_<name>.py``), each exporting ``COMMAND`` (Typer command
settings) and the command function.
"""

from __future__ import annotations

import typer

from zsw.cli import bench_kernels, bench_reconstruct, bench_train

app = typer.Typer(
    help="Benchmarks: kernels, training step, end-to-end reconstruction (ratios to baselines in one run).",
    no_args_is_help=True,
)
app.command("kernels", **bench_kernels.COMMAND)(bench_kernels.kernels)
app.command("train", **bench_train.COMMAND)(bench_train.train)
app.command("reconstruct", **bench_reconstruct.COMMAND)(bench_reconstruct.reconstruct)
