"""``zsw synthesize procedural``: render analytic SDF shapes into a ZeroShape-layout dataset."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

COMMAND = dict(
    help="Render analytic SDF shapes into a ZeroShape-layout dataset."
    "\n\nExample:\n\n  zsw synthesize procedural --out data/proc --objects 100 --views 10 --seed 0",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


def procedural(ctx: typer.Context) -> None:
    raise not_available("synthesize procedural", "issue #4, procedural data")
