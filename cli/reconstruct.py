"""``zsw reconstruct`` and ``zsw app``: the reconstruction job over files, or behind a local web page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import zsw  # the public API: the command runs what zsw.reconstruct_many runs
from zsw.cli import _common as opts
from zsw.cli._common import RichReporter, cli_errors

COMMAND = dict(
    help="Reconstruct meshes (plus depth, masks and a preview) from images."
    "\n\nINPUT is any number of image files (PNG, JPEG, WebP, BMP, TIFF, GIF, HEIC, AVIF, JPEG XL, "
    "OpenEXR, JPEG 2000, QOI, TGA, PPM; docs/reconstruct.md lists them), folders or glob patterns. Each "
    "image gets OUT/<name>/ with mesh.glb (or --format), depth.png (and its numbers, depth.npy), "
    "visible_mask.png, occluder_mask.png, visible_points.ply (the lifted visible surface), preview.png and "
    "result.json. An image whose result.json records the same input (content hash), "
    "settings and weights is skipped unless --overwrite; any other earlier result is redone. Unreadable "
    "images are reported and the others still run; the exit code is 1 if any failed."
    "\n\nMesh frame: --frame gltf (default) is y up along the camera's up with the object facing +z, as "
    "photographed; --frame upright stands the object on y = 0 along its own up as the model estimates it (the "
    "camera's look-down angle taken out, also for mesh.stl and mesh.usdz); --frame camera is x right, y down, "
    "z forward. Units follow the predicted (relative) depth."
    "\n\nExample:\n\n  zsw reconstruct photo.jpg -o out/"
    "\n\n  zsw reconstruct photos/ 'more/*.jpg' -o out/ --format obj --format glb --resolution 128"
    "\n\n  zsw reconstruct photo.jpg -o out/ --faces 5000 --texture 1024"
    "\n\n  zsw reconstruct cluttered.jpg -o out/ --cutout rembg     # remove the background first"
    "\n\n  zsw reconstruct desk.jpg -o out/ --box 820,400,1460,1180  # the object in that rectangle",
)
APP_COMMAND = dict(
    help="Start a local web page: upload a photo, get the coloured mesh in a 3D view, the depth map, the "
    'masks, the timings and GLB/OBJ/PLY/STL (and USDZ) files. Needs the app extra: pip install "zsw\\[app]".'
    "\n\nExample:\n\n  zsw app            # then open http://127.0.0.1:7860"
    "\n\n  zsw app --device cuda --host 0.0.0.0 --port 8080",
)

# help texts too long for a line of the signature
_PROMPT = (
    "Category prompt, e.g. 'chair'. 'auto' (= 'clip') picks it by CLIP zero-shot over LVIS + ShapeNet; "
    "'vlm:<hub id or folder>' asks a vision-language model."
)
_FORMATS = (
    "glb, obj, ply, stl or usdz (repeatable); stl is z-up, 100 mm on its longest side, for slicers; usdz "
    '(AR Quick Look on iPhone and iPad; coloured there with --texture) needs pip install "zsw\\[usd]".'
)
_FRAME = (
    "gltf (y up as photographed, facing +z), upright (standing on y = 0 along the object's own up) or camera "
    "(y down, z forward)."
)
_MASKS = (
    "Folder of visible masks named like the images (<name>.png): white (or, in a cut-out, opaque) is the object; "
    "0/1 label images work too. Required by ZeroShape models."
)
_BOX = (
    "X0,Y0,X1,Y1: the rectangle of the photo (its pixels, from the top left, upright) that holds the object, "
    "for a photo of several things: the input is framed around it and the predicted masks kept inside it. "
    'Or a FILE with each photo\'s own: JSON {"IMG_1.jpg": [x0, y0, x1, y1], ...} or lines name,x0,y0,x1,y1 '
    "(by file name or stem; a photo it does not name gets no box)."
)
_CHUNK_POINTS = "Most points per decoder call (bounds memory; default 65,536 on a GPU, 16,384 on a CPU)."
_OVERWRITE = "Redo images even when their result records the same input and settings."


@cli_errors
def reconstruct(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Image files, folders or glob patterns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (one sub-folder per image).")] = Path("out"),
    formats: Annotated[list[str] | None, typer.Option("--format", "-f", help=_FORMATS)] = None,
    weights: opts.Weights = None,
    prompt: Annotated[str, typer.Option(help=_PROMPT)] = "object",
    resolution: opts.Resolution = 128,
    extraction: opts.Extraction = "fast",
    threshold: opts.Threshold = 0.5,
    frame: Annotated[str, typer.Option(help=_FRAME)] = "gltf",
    masks: Annotated[Path | None, typer.Option(help=_MASKS)] = None,
    box: Annotated[str | None, typer.Option(metavar="X0,Y0,X1,Y1|FILE", help=_BOX)] = None,
    device: opts.Device = None,
    batch_size: opts.BatchSize = 1,
    chunk_points: Annotated[int | None, typer.Option(min=1024, help=_CHUNK_POINTS)] = None,
    backend: opts.Backend = "auto",
    engine: opts.Engine = None,
    precision: opts.Precision = "auto",
    reframe: opts.Reframe = "auto",
    background: opts.Background = "auto",
    cutout: opts.Cutout = "auto",
    tta: opts.Tta = "auto",
    carve: opts.Carve = True,
    color: opts.Color = "photo",
    close: Annotated[bool, typer.Option(help="Space outside the grid is empty: watertight meshes.")] = True,
    min_part: opts.MinPart = 0.02,
    smooth: opts.Smooth = 30,
    faces: opts.Faces = None,
    texture: opts.Texture = 0,
    preview: Annotated[bool, typer.Option(help="Write preview.png.")] = True,
    overwrite: Annotated[bool, typer.Option(help=_OVERWRITE)] = False,
) -> None:
    settings = zsw.ReconstructSettings(
        grid=zsw.GridSettings(resolution, extraction, threshold, close=close, chunk_points=chunk_points),
        formats=tuple(formats or ("glb",)), weights=weights, prompt=prompt, frame=frame, masks=masks, box=box,
        device=device, batch_size=batch_size, backend=backend, engine=engine, precision=precision,
        color=color, preview=preview, overwrite=overwrite, min_part=min_part, smooth=smooth, faces=faces,
        reframe=reframe, background=background, tta=tta, texture=texture, cutout=cutout, carve=carve)  # fmt: skip
    report = zsw.reconstruct_many(inputs, out, settings, reporter := RichReporter())
    raise typer.Exit(reporter.summary(report.summary(), report.ok))  # 1: some image failed


@cli_errors
def app(
    weights: opts.Weights = None,
    device: opts.Device = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 7860,
    share: Annotated[bool, typer.Option(help="Also open a public gradio.live link.")] = False,
    cutout: opts.Cutout = "auto",
) -> None:
    from zsw.listen import check_address

    check_address(host, port)  # a bad --host or a taken --port: at once, not after gradio and the model load
    try:
        from zsw.app import build_app, serve, stop_on_sigterm, wait
    except ModuleNotFoundError as e:  # gradio or its client
        if not (e.name or "").startswith("gradio"):
            raise
        from zsw.errors import ZswError

        raise ZswError('zsw app needs gradio, which is not installed: pip install "zsw[app]"') from None
    from zsw.infer.settings import ReconstructSettings

    stop_on_sigterm()  # before the URL is printed: a stop right after it still cleans up
    demo = build_app(ReconstructSettings(weights=weights, device=device, cutout=cutout))
    url = serve(demo, host=host, port=port, share=share)
    typer.echo(f"zsw app: open {url}" + (f" or {demo.share_url}" if share else "") + " (Ctrl-C stops it)")
    wait(demo)
