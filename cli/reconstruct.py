"""``zsw reconstruct``: reconstruct meshes (plus depth, masks and a preview) from images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli import _common as opts
from zsw.cli._common import cli_errors

COMMAND = dict(
    help="Reconstruct meshes (plus depth, masks and a preview) from images."
    "\n\nINPUT is any number of image files (PNG, JPEG, WebP, BMP, TIFF, GIF), folders or glob patterns. Each "
    "image gets OUT/<name>/ with mesh.glb (or --format), depth.png, visible_mask.png, occluder_mask.png, "
    "preview.png and result.json. An image whose result.json records the same input (content hash), "
    "settings and weights is skipped unless --overwrite; any other earlier result is redone. Unreadable "
    "images are reported and the others still run; the exit code is 1 if any failed."
    "\n\nMesh frame: --frame gltf (default) is y up with the object facing +z, as glTF viewers show it; "
    "--frame camera is x right, y down, z forward. Units follow the predicted (relative) depth."
    "\n\nExample:\n\n  zsw reconstruct photo.jpg -o out/"
    "\n\n  zsw reconstruct photos/ 'more/*.jpg' -o out/ --format obj --format glb --resolution 128",
)


@cli_errors
def reconstruct(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Image files, folders or glob patterns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (one sub-folder per image).")] = Path("out"),
    formats: Annotated[
        list[str] | None, typer.Option("--format", "-f", help="Mesh format: glb, obj or ply (repeatable).")
    ] = None,
    weights: opts.Weights = None,
    prompt: Annotated[
        str,
        typer.Option(
            help="Category prompt, e.g. 'chair'. 'auto' (= 'clip') picks it by CLIP zero-shot over LVIS + ShapeNet; "
            "'vlm:<hub id or folder>' asks a vision-language model."
        ),
    ] = "object",
    resolution: opts.Resolution = 128,
    extraction: opts.Extraction = "fast",
    threshold: opts.Threshold = 0.5,
    frame: Annotated[str, typer.Option(help="Mesh frame: gltf (y up, facing +z) or camera (y down, z forward).")] = (
        "gltf"
    ),
    masks: Annotated[
        Path | None,
        typer.Option(help="Folder of visible masks named like the images (<name>.png); required by ZeroShape models."),
    ] = None,
    device: opts.Device = None,
    batch_size: opts.BatchSize = 1,
    chunk_points: Annotated[
        int, typer.Option(min=1024, help="Most query points per decoder call (bounds memory).")
    ] = 65536,
    backend: opts.Backend = "torch",
    engine: opts.Engine = None,
    precision: opts.Precision = "auto",
    color: Annotated[str, typer.Option(help="Vertex colours: photo (from the input photo) or none.")] = "photo",
    close: Annotated[
        bool, typer.Option("--close/--no-close", help="Space outside the grid is empty: watertight meshes.")
    ] = True,
    min_part: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Drop disconnected parts under this fraction of the largest's area.")
    ] = 0.02,
    preview: Annotated[bool, typer.Option("--preview/--no-preview", help="Write preview.png.")] = True,
    overwrite: Annotated[
        bool, typer.Option(help="Redo images even when their result records the same input and settings.")
    ] = False,
) -> None:
    from zsw.cli._common import RichReporter
    from zsw.infer.jobs import reconstruct_many
    from zsw.infer.settings import GridSettings, ReconstructSettings

    settings = ReconstructSettings(
        formats=tuple(formats or ("glb",)), weights=weights, prompt=prompt, frame=frame, masks=masks,
        device=device, batch_size=batch_size, backend=backend, engine=engine, precision=precision, color=color,
        preview=preview, overwrite=overwrite, min_part=min_part,
        grid=GridSettings(resolution=resolution, extraction=extraction, threshold=threshold, close=close,
                          chunk_points=chunk_points),
    )  # fmt: skip
    reporter = RichReporter()
    report = reconstruct_many(inputs, out, settings, reporter)
    reporter.summary(report.summary(), report.ok)
    if not report.ok:
        raise typer.Exit(1)
