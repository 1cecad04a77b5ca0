"""``zsw synthesize diffuse`` and ``pseudo-depth``: diffusion appearance and backgrounds (Algorithm 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

COMMAND = dict(
    help="Give renders realistic appearance and backgrounds with diffusion (the paper's Algorithm 1): "
    "depth-ControlNet appearance from the noised render, silhouette IoU filter with retries, "
    "object-aware background outpainting. Writes a ZeroShape-layout dataset plus manifest.jsonl; "
    "a rerun resumes; --shard i/n splits the work across GPUs or machines."
    "\n\nModels are hub ids or local folders (HF_HUB_OFFLINE=1 to stay offline)."
    "\n\nExample:\n\n  zsw synthesize diffuse --data data/proc --out data/wild"
    "\n\n  zsw synthesize diffuse --data data/proc --out data/wild --shard 0/4 --device cuda:0 --batch-size 8",
)

PSEUDO_DEPTH_COMMAND = dict(
    help="Store Depth Anything V2 pseudo-depth (relative inverse depth, large = near) for every image "
    "of a dataset in pseudo_depth/<cat>/<name>.npy; existing files are kept unless --overwrite."
    "\n\nExample:\n\n  zsw synthesize pseudo-depth --data data/wild",
)

_DTYPE_HELP = "fp16, bf16 or fp32 (default: fp16 on a GPU, fp32 on the CPU)."


@cli_errors
def diffuse(
    data: Annotated[Path, typer.Option("--data", help="Source dataset (ZeroShape layout, white-background renders).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset; an earlier partial run here is resumed.")],
    views_per_object: Annotated[
        int | None, typer.Option(help="Use at most N views of each object, evenly spaced (default: all).")
    ] = None,
    shard: Annotated[str, typer.Option(help="Take every n-th render from the i-th: i/n (e.g. 0/4).")] = "0/1",
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda if available, else cpu).")] = None,
    dtype: Annotated[str | None, typer.Option(help=_DTYPE_HELP)] = None,
    batch_size: Annotated[int, typer.Option(help="Renders per diffusion call.")] = 4,
    seed: Annotated[int | None, typer.Option(help="Run seed; per-sample seeds derive from it. (default: 0)")] = None,
    min_iou: Annotated[float | None, typer.Option(help="Silhouette IoU to accept an image. (default: 0.95)")] = None,
    max_retries: Annotated[int | None, typer.Option(help="New seeds tried before giving up. (default: 4)")] = None,
    base_model: Annotated[
        str | None, typer.Option(help="SD 1.5 id or folder. (default: stable-diffusion-v1-5/stable-diffusion-v1-5)")
    ] = None,
    controlnet: Annotated[
        str | None, typer.Option(help="Depth ControlNet id or folder. (default: lllyasviel/control_v11f1p_sd15_depth)")
    ] = None,
    background_model: Annotated[
        str | None,
        typer.Option(help="Background model id or folder. (default: yahoo-inc/photo-background-generation)"),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="DDIM steps of the schedule. (default: 20)")] = None,
    start_step: Annotated[
        int | None, typer.Option(help="Step at which the noised render is injected. (default: 8)")
    ] = None,
    resolution: Annotated[int | None, typer.Option(help="Generation size in pixels. (default: 512)")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML with any DiffuseConfig fields; options given here override it.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Process at most N pending renders in this run.")] = None,
    save_foreground: Annotated[
        bool, typer.Option(help="Also keep the appearance-stage image in OUT/foreground/.")
    ] = False,
) -> None:
    from zsw.cli._common import RichReporter
    from zsw.errors import InputError
    from zsw.synth.pipeline import DiffusionSettings
    from zsw.synth.pipeline import diffuse as run

    run_options = dict(device=device, dtype=dtype, batch_size=batch_size, shard=shard, limit=limit,
                       save_foreground=save_foreground)  # fmt: skip
    settings = DiffusionSettings.make(
        config, run_options, views_per_object=views_per_object, seed=seed, min_iou=min_iou, max_retries=max_retries,
        base_model=base_model, controlnet=controlnet, background_model=background_model, steps=steps,
        start_step=start_step, resolution=resolution,
    )  # fmt: skip
    report, resumed = run(data, out, settings, RichReporter(min_total=1))
    rate = f", {report.accepted / report.elapsed_s:.3f} images/s" if report.accepted and report.elapsed_s > 0 else ""
    typer.echo(
        f"{'resumed: ' if resumed else ''}{report.accepted} accepted, {report.failed} failed the IoU filter, "
        f"{report.unsuitable} not on white, {report.skipped} already done, {report.errors} unreadable "
        f"in {report.elapsed_s:.1f} s{rate} -> {out}"
    )
    if report.errors:
        raise InputError(
            f"{report.errors} source render(s) could not be read; see the 'error' records in {out}/manifest.jsonl "
            "(a rerun retries them)"
        )


@cli_errors
def pseudo_depth(
    data: Annotated[Path, typer.Option("--data", help="Dataset (ZeroShape layout) whose images get pseudo-depth.")],
    model: Annotated[
        str, typer.Option(help="Depth Anything V2 id or folder.")
    ] = "depth-anything/Depth-Anything-V2-Small-hf",
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda if available, else cpu).")] = None,
    dtype: Annotated[str | None, typer.Option(help=_DTYPE_HELP)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    shard: Annotated[str, typer.Option(help="Take every n-th image from the i-th: i/n.")] = "0/1",
    overwrite: Annotated[bool, typer.Option(help="Recompute files that already exist.")] = False,
) -> None:
    from zsw.cli._common import RichReporter
    from zsw.synth.pipeline import pseudo_depth as run

    report = run(data, model, device=device, dtype=dtype, batch_size=batch_size, shard=shard, overwrite=overwrite,
                 reporter=RichReporter(min_total=1))  # fmt: skip
    typer.echo(f"{report.written} written, {report.skipped} already present -> {data}/pseudo_depth")
