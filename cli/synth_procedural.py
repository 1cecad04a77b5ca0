"""``zsw synthesize procedural``: render analytic SDF shapes into a ZeroShape-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

COMMAND = dict(
    help="Render analytic SDF shapes into a ZeroShape-layout dataset."
    "\n\nCategories: sphere, box, cylinder, cone, torus, capsule, table, chair, mug, lamp, bottle (the default; "
    "randomised proportions), and by name (-c) ellipsoid, blocks (L/T/U/step shapes), vase. Cameras follow "
    "ZeroShape-W (30-70 mm lens on a 35 mm sensor, elevation 5-65 degrees, random "
    "distance and look-at); images are cropped around the object at 224 px with K updated. Writes depth, K, [R|t], "
    "masks, exact SDF samples, surface point clouds, train/val/test lists and manifest.jsonl. The same seed gives "
    "the same files for any --workers; an interrupted run resumes when rerun with the same options; more "
    "--objects extend a dataset."
    "\n\n--bake test composites a random background and 1-2 copy-paste occluders into the test images (with "
    "visible and occluder masks): in-the-wild test images for evaluation."
    "\n\nExample:\n\n  zsw synthesize procedural --out data/proc --objects 100 --views 10 --seed 0"
    "\n\n  zsw synthesize procedural --out data/proc --objects 100 --views 10 --bake test --backgrounds photos/",
)


@cli_errors
def procedural(
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder (created, or resumed).")],
    objects: Annotated[int, typer.Option(min=1, help="Number of objects (round-robin over the categories).")] = 100,
    views: Annotated[int, typer.Option(min=1, max=100, help="Rendered views per object.")] = 10,
    seed: Annotated[int, typer.Option(help="Global seed; per-object seeds derive from it.")] = 0,
    categories: Annotated[
        list[str] | None, typer.Option("--categories", "-c", help="Categories (comma-separated or repeated).")
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes (0 = one per CPU core).")] = 0,
    splits: Annotated[str, typer.Option(help="Fractions of objects in train,val,test.")] = "0.8,0.1,0.1",
    bake: Annotated[
        list[str] | None,
        typer.Option(help="Splits whose images get a background and occluders baked in (e.g. test)."),
    ] = None,
    min_occluders: Annotated[int, typer.Option(min=0, help="Fewest occluders per baked image.")] = 1,
    max_occluders: Annotated[int, typer.Option(min=0, help="Most occluders per baked image.")] = 2,
    backgrounds: Annotated[
        Path | None, typer.Option(help="Folder of photos for baked backgrounds (else solid/gradient/noise).")
    ] = None,
) -> None:
    from zsw.cli._common import RichReporter
    from zsw.synth.pipeline import procedural as run
    from zsw.synth.pipeline import procedural_config

    cfg = procedural_config(splits, categories, bake, objects=objects, views=views, seed=seed,
                            min_occluders=min_occluders, max_occluders=max_occluders,
                            background_dir=backgrounds)  # fmt: skip
    report, n_workers = run(out, cfg, workers, RichReporter(min_total=1))
    typer.echo(
        f"{out}: rendered {report.rendered} views of {report.objects} objects in {report.seconds:.1f}s "
        f"({report.images_per_second:.2f} images/s, {n_workers} workers); {report.skipped} were already there"
    )
