"""``zsw bench train``: samples/s and peak memory of one training step, kernels on and off."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

COMMAND = dict(
    help="Samples/s and peak memory of one training step, kernels on and off."
    "\n\nExample:\n\n  zsw bench train --preset tiny --batch-size 4",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


def train(ctx: typer.Context) -> None:
    raise not_available("bench train", "issue #4, training")
