"""``zsw train``: train a model in two stages (pixel, full), on one GPU or many with torchrun."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

COMMAND = dict(
    help="Train a model in two stages (pixel, full), on one GPU or many with torchrun."
    "\n\nExample:\n\n  zsw train --preset tiny --data data/proc --stage pixel --out runs/tiny",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


def train(ctx: typer.Context) -> None:
    raise not_available("train", "issue #4, data and training")
