"""``zsw convert``: official ZeroShape checkpoints -> zsw safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

app = typer.Typer(help="Convert checkpoints from other code bases into zsw checkpoints.", no_args_is_help=True)

# help text too long for a line of the signature
_CLIP = "Compute the default prompt's embedding with CLIP (needs its weights); otherwise a fixed random unit vector."


@app.command(
    "zeroshape",
    help="Convert an official ZeroShape checkpoint (shape.ckpt, depth.ckpt or an Omnidata DPT checkpoint) into a zsw "
    "safetensors checkpoint."
    "\n\nExamples:\n\n  zsw convert zeroshape shape.ckpt -o zeroshape.safetensors"
    "\n\n  zsw convert zeroshape shape.ckpt -o zsw-init.safetensors --preset zeroshape-w"
    "\n\n  zsw convert zeroshape omnidata_dpt_depth_v2.ckpt -o dpt.safetensors --preset zeroshape-w",
)
@cli_errors
def zeroshape(
    source: Annotated[Path, typer.Argument(help="Official .ckpt file (loaded with torch.load(weights_only=True)).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors file.")],
    preset: Annotated[str, typer.Option(help="Target: zeroshape (exact) or zeroshape-w (shared parts).")] = "zeroshape",
    clip: Annotated[bool, typer.Option(help=_CLIP)] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    from zsw import checkpoint

    report = checkpoint.convert_official(source, out, preset, clip=clip, overwrite=overwrite)
    typer.echo(report.summary())
    typer.echo(f"wrote {out}")
