"""``zsw export``: export the model to ONNX, TensorRT engines or torch-tensorrt."""

from __future__ import annotations

import typer

from zsw.cli._common import not_available

COMMAND = dict(
    help="Export the model to ONNX, TensorRT engines or torch-tensorrt."
    "\n\nExample:\n\n  zsw export --weights model.safetensors --out engine/ --format onnx",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


def export(ctx: typer.Context) -> None:
    raise not_available("export", "issue #7, deployment")
