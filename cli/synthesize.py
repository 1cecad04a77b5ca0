"""``zsw synthesize``: training data -- procedural renders, diffusion appearance and backgrounds,
pseudo-depth. One module per source (``cli/synth_<name>.py``)."""

from __future__ import annotations

import typer

from zsw.cli import synth_diffuse, synth_procedural

app = typer.Typer(
    help="Make training data: procedural renders, diffusion appearance and backgrounds, pseudo-depth.",
    no_args_is_help=True,
)
app.command("procedural", **synth_procedural.COMMAND)(synth_procedural.procedural)
app.command("diffuse", **synth_diffuse.COMMAND)(synth_diffuse.diffuse)
app.command("pseudo-depth", **synth_diffuse.PSEUDO_DEPTH_COMMAND)(synth_diffuse.pseudo_depth)
