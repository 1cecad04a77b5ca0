"""``zsw synthesize diffuse`` and ``pseudo-depth``: diffusion appearance and backgrounds (Algorithm 1)."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

COMMAND = dict(
    help="Give renders realistic appearance and backgrounds with diffusion (the paper's Algorithm 1)."
    "\n\nExample:\n\n  zsw synthesize diffuse --data data/proc --out data/wild",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


def diffuse(ctx: typer.Context) -> None:
    raise not_available("synthesize diffuse", "issue #6, diffusion synthesis")


PSEUDO_DEPTH_COMMAND = dict(
    help="Store Depth Anything V2 pseudo-depth for every image of a dataset."
    "\n\nExample:\n\n  zsw synthesize pseudo-depth --data data/wild",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


def pseudo_depth(ctx: typer.Context) -> None:
    raise not_available("synthesize pseudo-depth", "issue #6, diffusion synthesis")
