"""``zsw bench reconstruct``: end-to-end latency per image and its breakdown."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

COMMAND = dict(
    help="End-to-end latency per image and its breakdown.\n\nExample:\n\n  zsw bench reconstruct --weights demo",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


def reconstruct(ctx: typer.Context) -> None:
    raise not_available("bench reconstruct", "issue #5, reconstruction")
