"""``zsw synthesize``: training data -- procedural renders, your own meshes rendered the same way,
diffusion appearance and backgrounds (the paper's Algorithm 1), pseudo-depth. The jobs are in
:mod:`zsw.synth.pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli import _common as opts
from zsw.cli._common import RichReporter, cli_errors

app = typer.Typer(
    help="Make training data: procedural renders, your meshes, diffusion appearance and backgrounds, pseudo-depth.",
    no_args_is_help=True,
)

Dtype = Annotated[str | None, typer.Option(help="fp16, bf16 or fp32 (default: fp16 on a GPU, fp32 on the CPU).")]

# help texts too long for a line of the signature
_SPLITS = "Weights of train,val,test (scaled to sum to 1: 2,1,1 is 0.5,0.25,0.25)."
_CATEGORIES = "Categories (comma-separated or repeated)."
_BAKE = "Splits whose images get a background and occluders baked in (e.g. test)."
_BACKGROUNDS = "Folder of photos for baked backgrounds (else solid/gradient/noise)."
_ELEVATION = "LO,HI: cameras' elevation above the object's horizon, degrees, uniform (eye level: 0). (default: 5,65)"

# the options procedural and meshes share (their datasets' common RenderSettings)
DatasetOut = Annotated[Path, typer.Option("--out", "-o", help="Dataset folder (created, or resumed).")]
Views = Annotated[int, typer.Option(min=1, max=100, help="Rendered views per object.")]
Workers = Annotated[int, typer.Option(min=0, help="Worker processes (0 = one per CPU core).")]
Splits = Annotated[str, typer.Option(help=_SPLITS)]
Bake = Annotated[list[str] | None, typer.Option(help=_BAKE)]
MinOccluders = Annotated[int, typer.Option(min=0, help="Fewest occluders per baked image.")]
MaxOccluders = Annotated[int, typer.Option(min=0, help="Most occluders per baked image.")]
Backgrounds = Annotated[Path | None, typer.Option(help=_BACKGROUNDS)]
Elevation = Annotated[str | None, typer.Option(help=_ELEVATION)]


@app.command(
    "procedural",
    help="Render analytic SDF shapes into a ZeroShape-layout dataset."
    "\n\nCategories: sphere, box, cylinder, cone, torus, capsule, table, chair, mug, lamp, bottle (the default; "
    "randomised proportions), and by name (-c) ellipsoid, blocks (L/T/U/step shapes), vase. Cameras follow "
    "ZeroShape-W (30-70 mm lens on a 35 mm sensor, elevation 5-65 degrees (--elevation), random "
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
    out: DatasetOut,
    objects: Annotated[int, typer.Option(min=1, help="Number of objects (round-robin over the categories).")] = 100,
    views: Views = 10,
    seed: Annotated[int, typer.Option(help="Global seed; per-object seeds derive from it.")] = 0,
    categories: Annotated[list[str] | None, typer.Option("--categories", "-c", help=_CATEGORIES)] = None,
    workers: Workers = 0,
    splits: Splits = "0.8,0.1,0.1",
    bake: Bake = None,
    min_occluders: MinOccluders = 1,
    max_occluders: MaxOccluders = 2,
    backgrounds: Backgrounds = None,
    elevation: Elevation = None,
) -> None:
    from zsw.synth.pipeline import procedural as run
    from zsw.synth.pipeline import procedural_config, split_counts

    cfg = procedural_config(splits, categories, bake, elevation, objects=objects, views=views, seed=seed,
                            min_occluders=min_occluders, max_occluders=max_occluders,
                            background_dir=backgrounds)  # fmt: skip
    report, n_workers = run(out, cfg, workers, RichReporter(min_total=1))
    typer.echo(
        f"{out}: rendered {report.rendered} views of {report.objects} objects in {report.seconds:.1f}s "
        f"({report.images_per_second:.2f} images/s, {n_workers} workers); {report.skipped} were already there; "
        f"{split_counts(report)}"
    )
    for note in report.notes:
        typer.echo(f"warning: {note}", err=True)


_MESHES_HELP = (
    "Render your own meshes (.glb .gltf .obj .ply .stl .off; .usdz .usd .usda .usdc with the usd extra, read y up "
    "whatever their stage's up axis) into a ZeroShape-layout dataset, as procedural "
    "renders: the same cameras (--elevation), shading, files, lists and manifest, --bake as there. A subfolder of "
    "MESH_DIR is a category (files directly in it: --category); object ids are file names ('_' made '-'). Each "
    "mesh is centred, scaled to longest side 1 (y up; --up z for z-up CAD exports) and turned into a signed "
    "distance on a --grid; an open mesh becomes a thin shell (said per file). Each mesh is drawn in its own "
    "textures, material and vertex colours (a random colour where it has none; --appearance random: always). A "
    "mesh that cannot be read fails alone. Rerun to resume; a changed "
    "mesh is refused unless --redo-changed."
    "\n\nExample:\n\n  zsw synthesize meshes meshes/ --out data/mine --views 10"
    "\n\n  zsw synthesize meshes cad/ --out data/cad --up z --bake test --backgrounds photos/"
)
_GRID = "Signed-distance grid cells along an object's longest side (finer: thinner parts kept, slower)."
_REDO = "Render again the objects whose mesh file changed since they were rendered (else refused)."
_APPEARANCE = "mesh: the meshes' own textures and colours (random where none); random: a random colour each."


@app.command("meshes", help=_MESHES_HELP)
@cli_errors
def meshes(
    mesh_dir: Annotated[Path, typer.Argument(help="Folder of meshes; subfolders are categories.")],
    out: DatasetOut,
    views: Views = 10,
    seed: Annotated[int, typer.Option(help="Global seed; per-object seeds derive from it and the name.")] = 0,
    category: Annotated[str, typer.Option(help="Category of the files directly in MESH_DIR.")] = "object",
    up: Annotated[str, typer.Option(help="The meshes' up axis: y or z.")] = "y",
    grid: Annotated[int, typer.Option(min=32, max=512, help=_GRID)] = 192,
    size: Annotated[int, typer.Option(help="Image size in pixels (a multiple of 32).")] = 224,
    workers: Workers = 0,
    splits: Splits = "0.8,0.1,0.1",
    bake: Bake = None,
    min_occluders: MinOccluders = 1,
    max_occluders: MaxOccluders = 2,
    backgrounds: Backgrounds = None,
    elevation: Elevation = None,
    appearance: Annotated[str, typer.Option(help=_APPEARANCE)] = "mesh",
    redo_changed: Annotated[bool, typer.Option(help=_REDO)] = False,
) -> None:
    from zsw.errors import InputError
    from zsw.synth.pipeline import color_counts, mesh_config, split_counts
    from zsw.synth.pipeline import meshes as run

    cfg = mesh_config(splits, bake, elevation, views=views, seed=seed, category=category, up=up, grid=grid, size=size,
                      min_occluders=min_occluders, max_occluders=max_occluders, background_dir=backgrounds,
                      appearance=appearance)  # fmt: skip
    report, n_workers = run(mesh_dir, out, cfg, workers, redo_changed, RichReporter(min_total=1))
    rendered = report.objects - len(report.failed)  # the meshes that failed are named below
    typer.echo(
        f"{out}: rendered {report.rendered} views of {rendered} meshes in {report.seconds:.1f}s "
        f"({report.images_per_second:.2f} images/s, {n_workers} workers); {report.skipped} were already there; "
        f"{split_counts(report)}{color_counts(report)}"
    )
    for note in report.notes:
        typer.echo(f"warning: {note}", err=True)
    if report.failed:
        raise InputError(f"{len(report.failed)} mesh(es) could not be rendered, the first: {report.failed[0]}")


# DiffuseConfig fields default to None here, so that a --config YAML can set them; the help names the real default
_BASE_MODEL = "SD 1.5 id or folder. (default: stable-diffusion-v1-5/stable-diffusion-v1-5)"
_CONTROLNET = "Depth ControlNet id or folder. (default: lllyasviel/control_v11f1p_sd15_depth)"
_BACKGROUND_MODEL = "Background model id or folder. (default: yahoo-inc/photo-background-generation)"
_START_STEP = "Step at which the noised render is injected. (default: 8)"
_CONFIG = "YAML with any DiffuseConfig fields; options given here override it."
_VIEWS_PER_OBJECT = "Use at most N views of each object, evenly spaced (default: all)."


@app.command(
    "diffuse",
    help="Give renders realistic appearance and backgrounds with diffusion (the paper's Algorithm 1): "
    "depth-ControlNet appearance from the noised render, silhouette IoU filter with retries, "
    "object-aware background outpainting. Writes a ZeroShape-layout dataset plus manifest.jsonl; "
    "a rerun resumes; --shard i/n splits the work across GPUs or machines."
    "\n\nModels are hub ids or local folders (HF_HUB_OFFLINE=1 to stay offline)."
    "\n\nExample:\n\n  zsw synthesize diffuse --data data/proc --out data/wild"
    "\n\n  zsw synthesize diffuse --data data/proc --out data/wild --shard 0/4 --device cuda:0 --batch-size 8",
)
@cli_errors
def diffuse(
    data: Annotated[Path, typer.Option(help="Source dataset (ZeroShape layout, white-background renders).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset; an earlier partial run here is resumed.")],
    views_per_object: Annotated[int | None, typer.Option(help=_VIEWS_PER_OBJECT)] = None,
    shard: Annotated[str, typer.Option(help="Take every n-th render from the i-th: i/n (e.g. 0/4).")] = "0/1",
    device: opts.Device = None,
    dtype: Dtype = None,
    batch_size: Annotated[int, typer.Option(help="Renders per diffusion call.")] = 4,
    seed: Annotated[int | None, typer.Option(help="Run seed; per-sample seeds derive from it. (default: 0)")] = None,
    min_iou: Annotated[float | None, typer.Option(help="Silhouette IoU to accept an image. (default: 0.95)")] = None,
    max_retries: Annotated[int | None, typer.Option(help="New seeds tried before giving up. (default: 4)")] = None,
    base_model: Annotated[str | None, typer.Option(help=_BASE_MODEL)] = None,
    controlnet: Annotated[str | None, typer.Option(help=_CONTROLNET)] = None,
    background_model: Annotated[str | None, typer.Option(help=_BACKGROUND_MODEL)] = None,
    steps: Annotated[int | None, typer.Option(help="DDIM steps of the schedule. (default: 20)")] = None,
    start_step: Annotated[int | None, typer.Option(help=_START_STEP)] = None,
    resolution: Annotated[int | None, typer.Option(help="Generation size in pixels. (default: 512)")] = None,
    config: Annotated[Path | None, typer.Option(help=_CONFIG)] = None,
    limit: Annotated[int | None, typer.Option(help="Process at most N pending renders in this run.")] = None,
    save_foreground: Annotated[bool, typer.Option(help="Also keep appearance-stage images in OUT/foreground.")] = False,
) -> None:
    from zsw.errors import InputError
    from zsw.synth import pipeline

    run = dict(device=device, dtype=dtype, batch_size=batch_size, shard=shard, limit=limit,
               save_foreground=save_foreground)  # fmt: skip
    settings = pipeline.DiffusionSettings.make(
        config, run, views_per_object=views_per_object, seed=seed, min_iou=min_iou, max_retries=max_retries,
        base_model=base_model, controlnet=controlnet, background_model=background_model, steps=steps,
        start_step=start_step, resolution=resolution,
    )  # fmt: skip
    report, resumed = pipeline.diffuse(data, out, settings, RichReporter(min_total=1))
    typer.echo(("resumed: " if resumed else "") + report.summary() + f" -> {out}")
    for note in report.notes:
        typer.echo(f"warning: {note}", err=True)
    if report.errors:
        raise InputError(
            f"{report.errors} source render(s) could not be read; see the 'error' records in {out}/manifest.jsonl "
            "(a rerun retries them)"
        )


@app.command(
    "pseudo-depth",
    help="Store Depth Anything V2 pseudo-depth (relative inverse depth, large = near) for every image "
    "of a dataset in pseudo_depth/<cat>/<name>.npy; existing files are kept unless --overwrite."
    "\n\nExample:\n\n  zsw synthesize pseudo-depth --data data/wild",
)
@cli_errors
def pseudo_depth(
    data: Annotated[Path, typer.Option(help="Dataset (ZeroShape layout) whose images get pseudo-depth.")],
    model: Annotated[
        str, typer.Option(help="Depth Anything V2 id or folder.")
    ] = "depth-anything/Depth-Anything-V2-Small-hf",
    device: opts.Device = None,
    dtype: Dtype = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    shard: Annotated[str, typer.Option(help="Take every n-th image from the i-th: i/n.")] = "0/1",
    overwrite: Annotated[bool, typer.Option(help="Recompute files that already exist.")] = False,
) -> None:
    from zsw.synth.pipeline import pseudo_depth as run

    report = run(data, model, device=device, dtype=dtype, batch_size=batch_size, shard=shard, overwrite=overwrite,
                 reporter=RichReporter(min_total=1))  # fmt: skip
    typer.echo(f"{report.written} written, {report.skipped} already present -> {data}/pseudo_depth")
