"""``zsw bench``: benchmarks: kernels, training step, end-to-end reconstruction (ratios to baselines in one run)."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

app = typer.Typer(
    help="Benchmarks: kernels, training step, end-to-end reconstruction (ratios to baselines in one run).",
    no_args_is_help=True,
)
_LENIENT = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(
    "kernels",
    help="Time the Triton kernels against eager, torch.compile and SDPA baselines."
    "\n\nExample:\n\n  zsw bench kernels --out bench/results/h100.csv",
    context_settings=_LENIENT,
)
def kernels(ctx: typer.Context) -> None:
    raise not_available("bench kernels", "issue #3, kernels")


@app.command(
    "train",
    help="Samples/s and peak memory of one training step, kernels on and off."
    "\n\nExample:\n\n  zsw bench train --preset tiny --batch-size 4",
    context_settings=_LENIENT,
)
def train(ctx: typer.Context) -> None:
    raise not_available("bench train", "issue #4, training")


@app.command(
    "reconstruct",
    help="End-to-end latency per image and its breakdown.\n\nExample:\n\n  zsw bench reconstruct --preset tiny",
    context_settings=_LENIENT,
)
def reconstruct(ctx: typer.Context) -> None:
    raise not_available("bench reconstruct", "issue #5, reconstruction")
