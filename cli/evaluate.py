"""``zsw eval``: evaluate Chamfer distance and F-score with ZeroShape's protocol."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

COMMAND = dict(
    help="Evaluate Chamfer distance and F-score with ZeroShape's protocol."
    "\n\nExample:\n\n  zsw eval --data data/Pix3D --format pix3d --weights model.safetensors --out results.json",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


def evaluate(ctx: typer.Context) -> None:
    raise not_available("eval", "issue #5, evaluation")
