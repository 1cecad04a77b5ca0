"""``zsw bench kernels``: time the Triton kernels against eager, torch.compile and SDPA baselines."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

COMMAND = dict(
    help="Time the Triton kernels against eager, torch.compile and SDPA baselines."
    "\n\nExample:\n\n  zsw bench kernels --out bench/results/h100.csv",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


def kernels(ctx: typer.Context) -> None:
    raise not_available("bench kernels", "issue #3, kernels")
