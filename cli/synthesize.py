"""``zsw synthesize``: make training data: procedural renders, diffusion appearance and backgrounds, pseudo-depth."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

app = typer.Typer(
    help="Make training data: procedural renders, diffusion appearance and backgrounds, pseudo-depth.",
    no_args_is_help=True,
)
_LENIENT = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(
    "procedural",
    help="Render analytic SDF shapes into a ZeroShape-layout dataset."
    "\n\nExample:\n\n  zsw synthesize procedural --out data/proc --objects 100 --views 10 --seed 0",
    context_settings=_LENIENT,
)
def procedural(ctx: typer.Context) -> None:
    raise not_available("synthesize procedural", "issue #4, procedural data")


@app.command(
    "diffuse",
    help="Give renders realistic appearance and backgrounds with diffusion (the paper's Algorithm 1)."
    "\n\nExample:\n\n  zsw synthesize diffuse --data data/proc --out data/wild",
    context_settings=_LENIENT,
)
def diffuse(ctx: typer.Context) -> None:
    raise not_available("synthesize diffuse", "issue #6, diffusion synthesis")


@app.command(
    "pseudo-depth",
    help="Store Depth Anything V2 pseudo-depth for every image of a dataset."
    "\n\nExample:\n\n  zsw synthesize pseudo-depth --data data/wild",
    context_settings=_LENIENT,
)
def pseudo_depth(ctx: typer.Context) -> None:
    raise not_available("synthesize pseudo-depth", "issue #6, diffusion synthesis")
