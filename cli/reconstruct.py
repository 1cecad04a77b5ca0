"""``zsw reconstruct``: reconstruct meshes (plus depth, masks and a preview) from images."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

COMMAND = dict(
    help="Reconstruct meshes (plus depth, masks and a preview) from images."
    "\n\nExample:\n\n  zsw reconstruct photo.jpg -o out/"
    "\n\n  zsw reconstruct photos/ -o out/ --format obj --resolution 128",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


def reconstruct(ctx: typer.Context) -> None:
    raise not_available("reconstruct", "issue #5, reconstruction")
