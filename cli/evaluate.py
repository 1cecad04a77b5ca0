"""``zsw eval``: evaluate Chamfer distance and F-score with ZeroShape's protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import zsw
from zsw.cli import _common as opts
from zsw.cli._common import RichReporter, cli_errors

COMMAND = dict(
    help="Evaluate Chamfer distance and F-score with ZeroShape's protocol: 10,000 points on each mesh, "
    "clouds normalised by max(x, y) extent, accuracy/completeness/CD (plain L2) and F-score at "
    "0.005-0.2, optional rotation alignment. Writes OUT (summary), OUT with .md (tables) and "
    ".samples.jsonl (per sample); a rerun with the same settings resumes from the JSONL."
    "\n\nExample:\n\n  zsw eval --data data/Pix3D --format pix3d --weights model.safetensors --out results.json"
    "\n\n  zsw eval --data data/proc_test --format procedural --out demo.json --baseline sphere"
    "\n\n  zsw eval --data my_photos/ --format folder --out mine.json   # photo.jpg beside photo.glb, ...",
)

_PER_CATEGORY = "At most this many samples per category (default: all; 10 for zeroshape)."
_FORMATS = ("zeroshape", "pix3d", "ocrtoc", "omniobject3d", "procedural", "folder")  # for --help; the job validates
# help texts too long for a line of the signature
_PROMPT = "Category prompt: text, 'category' (each sample's ground-truth category), 'auto' (CLIP) or 'vlm:<id>'."
_BASELINE = "Score a baseline instead of the mesh: sphere, visible or ellipsoid (oracle: the true extents)."


@cli_errors
def evaluate(
    data: Annotated[Path, typer.Option(help="Evaluation set folder.")],
    format: Annotated[str, typer.Option(help=f"One of {', '.join(_FORMATS)}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Summary JSON (tables beside it).")] = Path("results.json"),
    weights: opts.Weights = None,
    align: Annotated[str, typer.Option(help="none, brute-force (6,912 rotations) or icp.")] = "none",
    resolution: opts.Resolution = 128,
    extraction: opts.Extraction = "fast",
    threshold: opts.Threshold = 0.5,
    num_points: Annotated[int, typer.Option(min=1, help="Points sampled on each predicted mesh.")] = 10000,
    prompt: Annotated[str, typer.Option(help=_PROMPT)] = "object",
    use_mask: Annotated[bool, typer.Option(help="Give the model the set's visible masks (default: predict).")] = False,
    baseline: Annotated[str | None, typer.Option(help=_BASELINE)] = None,
    split: Annotated[str | None, typer.Option(help="List split to read (default: test; val for zeroshape).")] = None,
    max_per_category: Annotated[int | None, typer.Option(min=1, help=_PER_CATEGORY)] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N samples.")] = None,
    device: opts.Device = None,
    batch_size: opts.BatchSize = 1,
    backend: opts.Backend = "auto",
    engine: opts.Engine = None,
    seed: Annotated[int, typer.Option(help="Seed of the surface sampling.")] = 0,
    precision: opts.Precision = "auto",
    reframe: opts.Reframe = "auto",
    background: opts.Background = "auto",
    cutout: opts.Cutout = "auto",
    tta: opts.Tta = "auto",
    carve: opts.Carve = True,
    min_part: opts.MinPart = 0.02,
    smooth: opts.Smooth = 30,
    faces: opts.Faces = None,
    overwrite: Annotated[bool, typer.Option(help="Discard earlier per-sample results instead of resuming.")] = False,
) -> None:
    from zsw.eval.jobs import EvalJobSettings, evaluate_set

    settings = EvalJobSettings(format=format, weights=weights, grid=zsw.GridSettings(resolution, extraction, threshold),
        num_points=num_points, align=align, prompt=prompt, use_mask=use_mask, baseline=baseline, seed=seed,
        precision=precision, split=split, max_per_category=max_per_category, limit=limit, device=device,
        batch_size=batch_size, backend=backend, engine=engine, overwrite=overwrite, reframe=reframe, carve=carve,
        background=background, min_part=min_part, smooth=smooth, faces=faces, tta=tta, cutout=cutout)  # fmt: skip
    _print_report(reporter := RichReporter(min_total=1), evaluate_set(data, out, settings, reporter))


def _print_report(reporter: RichReporter, report) -> None:
    """The tables of ``report`` (a :class:`zsw.eval.jobs.EvalReport`), then where they were written;
    exit code 1 when samples failed."""
    _print_tables(reporter.console, report.summary, report.title)
    reporter.info(f"wrote {report.out}, {report.markdown} and {report.samples_jsonl}")
    if empty := report.summary.get("empty_meshes"):
        reporter.warning(f"{empty} of the {report.summary['overall']['count']} predicted meshes are empty")
    if not report.ok:
        reporter.summary(f"{len(report.failures)} sample(s) failed", ok=False)
        raise typer.Exit(1)


def _print_tables(console, summary: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Column, Table

    from zsw.eval.evaluate import METRICS, format_metric

    if not console.is_terminal:  # a log file or pipe: no need to squeeze the table into 80 columns
        console = Console(file=console.file, width=160, highlight=False)
    table = Table(
        "category", *(Column(k.replace("fscore@", "F@"), justify="right") for k in ("n", *METRICS)), title=title
    )
    categories = list(summary["categories"].items())
    for i, (name, d) in enumerate(
        [*categories, ("overall", summary["overall"]), ("mean of categories", summary["category_mean"])]
    ):
        table.add_row(
            name, str(d["count"]), *(format_metric(d[k]) for k in METRICS), end_section=i == len(categories) - 1
        )
    console.print(table)
