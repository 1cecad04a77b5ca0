"""``zsw app``: the local web page (gradio) around ``zsw reconstruct``'s job."""

from __future__ import annotations

from typing import Annotated

import typer

from zsw.cli import _common as opts
from zsw.cli._common import cli_errors

COMMAND = dict(
    help="Start a local web page: upload a photo, get the coloured mesh in a 3D view, the depth map, the "
    'masks, the timings and GLB/OBJ/PLY files. Needs the app extra: pip install "zsw\\[app]".'
    "\n\nExample:\n\n  zsw app            # then open http://127.0.0.1:7860"
    "\n\n  zsw app --device cuda --host 0.0.0.0 --port 8080",
)


@cli_errors
def app(
    weights: opts.Weights = None,
    device: opts.Device = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 7860,
    share: Annotated[bool, typer.Option("--share/--no-share", help="Also open a public gradio.live link.")] = False,
) -> None:
    try:
        from zsw.app import build_app, serve
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("gradio"):
            raise
        from zsw.errors import ZswError

        raise ZswError('zsw app needs gradio, which is not installed: pip install "zsw[app]"') from None
    from zsw.infer.settings import ReconstructSettings

    demo = build_app(ReconstructSettings(weights=weights, device=device))
    url = serve(demo, host=host, port=port, share=share)
    typer.echo(f"zsw app: open {url}" + (f" or {demo.share_url}" if share else "") + " (Ctrl-C stops it)")
    demo.block_thread()
