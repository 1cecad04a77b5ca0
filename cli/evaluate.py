"""``zsw eval``: evaluate Chamfer distance and F-score with ZeroShape's protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

COMMAND = dict(
    help="Evaluate Chamfer distance and F-score with ZeroShape's protocol: 10,000 points on each mesh, "
    "clouds normalised by max(x, y) extent, accuracy/completeness/CD (plain L2) and F-score at "
    "0.005-0.2, optional rotation alignment. Writes OUT (summary), OUT with .md (tables) and "
    ".samples.jsonl (per sample); a rerun with the same settings resumes from the JSONL."
    "\n\nExample:\n\n  zsw eval --data data/Pix3D --format pix3d --weights model.safetensors --out results.json"
    "\n\n  zsw eval --data data/proc_test --format procedural --out demo.json --baseline sphere",
)

_FORMATS = ("zeroshape", "pix3d", "ocrtoc", "omniobject3d", "procedural")
_ALIGNS = ("none", "brute-force", "icp")
_BASELINES = ("sphere", "visible", "ellipsoid")


def _choice(value: str | None, choices: tuple[str, ...], option: str) -> None:
    if value is not None and value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=option)


@cli_errors
def evaluate(
    data: Annotated[Path, typer.Option(help="Evaluation set folder.")],
    format: Annotated[str, typer.Option("--format", help=f"One of {', '.join(_FORMATS)}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Summary JSON (tables go next to it).")] = Path(
        "results.json"
    ),
    weights: Annotated[str | None, typer.Option(help="Checkpoint (.safetensors); default: the demo model.")] = None,
    align: Annotated[str, typer.Option(help="none, brute-force (6,912 rotations) or icp.")] = "none",
    resolution: Annotated[int, typer.Option(min=8, max=1024, help="Grid cells per axis.")] = 128,
    extraction: Annotated[str, typer.Option(help="fast or dense grid extraction.")] = "fast",
    threshold: Annotated[float, typer.Option(min=0.001, max=0.999, help="Occupancy level of the surface.")] = 0.5,
    num_points: Annotated[int, typer.Option(min=1, help="Points sampled on each predicted mesh.")] = 10000,
    prompt: Annotated[
        str,
        typer.Option(
            help="Category prompt: text, 'category' (each sample's ground-truth category), 'auto' (CLIP) or 'vlm:<id>'."
        ),
    ] = "object",
    use_mask: Annotated[bool, typer.Option(help="Give the model the set's visible masks (default: predict).")] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Score a baseline instead of the mesh: sphere, visible or ellipsoid (oracle: the true extents)."
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(help="List split to read (default: test).")] = None,
    max_per_category: Annotated[int | None, typer.Option(min=1, help="At most this many samples per category.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N samples.")] = None,
    device: Annotated[str | None, typer.Option(help="cuda, cpu, ... (default: CUDA if available).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 1,
    backend: Annotated[str, typer.Option(help="torch, onnxruntime or tensorrt.")] = "torch",
    engine: Annotated[Path | None, typer.Option(help="Folder written by `zsw export`.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the surface sampling.")] = 0,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on the CPU), fp32, bf16 or fp16 (PyTorch backend).")
    ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Discard earlier per-sample results instead of resuming.")] = False,
) -> None:
    _choice(format, _FORMATS, "--format")
    _choice(align, _ALIGNS, "--align")
    _choice(baseline, _BASELINES, "--baseline")
    _choice(extraction, ("fast", "dense"), "--extraction")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from zsw.data.eval_sets import open_eval_set
    from zsw.eval.evaluate import EvalSettings, ResultsLog, evaluate_samples, summarize, summary_markdown
    from zsw.infer.reconstruct import Reconstructor, open_backend
    from zsw.io import atomic_write_json, atomic_write_text

    if out.is_dir():
        from zsw.errors import ConfigError

        raise ConfigError(f"--out {out} is a folder; give the summary's file name (e.g. {out / 'results.json'})")
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    samples = open_eval_set(data, format, split=split, max_per_category=max_per_category)
    names = samples.names()[:limit] if limit else samples.names()
    if not names:
        from zsw.errors import InputError

        raise InputError(f"{data} holds no {format} samples")
    be, label, warning = open_backend(backend, weights, engine, device)
    if warning:
        console.print(f"[bold yellow]WARNING:[/bold yellow] {warning}")
    import hashlib

    from zsw.infer.reconstruct import resolve_precision

    resolved = resolve_precision(precision, be.device) if be.name == "torch" else "engine"
    fingerprint = hashlib.sha1("\n".join(samples.names()).encode()).hexdigest()[:12]  # the whole set, not --limit
    settings = EvalSettings(
        precision=resolved,
        data=f"{data.resolve()}#{fingerprint}",
        format=format,
        weights=label,
        resolution=resolution,
        extraction=extraction,
        threshold=threshold,
        num_points=num_points,
        align=align,
        prompt=prompt,
        use_mask=use_mask,
        baseline=baseline,
        seed=seed,
    )
    jsonl = out.with_name(out.stem + ".samples.jsonl")
    log = ResultsLog(jsonl, settings, overwrite=overwrite)
    if log.rows:
        console.print(f"resuming: {len(log.rows)} sample(s) already in {jsonl}")
    recon = Reconstructor(be, resolution=resolution, extraction=extraction, threshold=threshold, frame="camera",
                          weights_label=label, precision=precision, color="none")  # fmt: skip
    estimator = None
    if prompt in ("auto", "clip") or prompt.startswith("vlm:"):
        from zsw.infer.category import get_estimator

        estimator = get_estimator(prompt, device=str(be.device))
    if align == "brute-force" and be.device.type != "cuda" and num_points > 2000:
        console.print(
            f"[yellow]note:[/yellow] brute-force alignment of {num_points} points on the CPU scores 3,216 distinct "
            "rotations with k-d trees: minutes per sample; a GPU runs the batched Chamfer kernel"
        )
    failures: list[str] = []
    todo = [i for i, n in enumerate(names) if n not in log.done]
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[cd]}"), console=console, transient=True,
    )  # fmt: skip

    def lazy():
        for i in todo:
            try:
                yield samples[i]
            except Exception as e:  # a corrupt sample: count it, go on
                from zsw.errors import ZswError

                if not isinstance(e, (ZswError, OSError, ValueError)):
                    raise
                on_sample(None, str(e))

    with progress:
        task = progress.add_task("evaluating", total=len(todo), cd="")

        def on_sample(row, error):
            if error:
                failures.append(error)
                progress.console.print(f"[red]error:[/red] {error}")
            progress.update(task, advance=1, cd=f"CD {row['cd']:.4f}" if row else "")

        rows = evaluate_samples(lazy(), recon, settings, log, batch_size=batch_size, estimator=estimator,
                                on_sample=on_sample)  # fmt: skip
    rows = [r for r in rows if r["name"] in set(names)]
    summary = summarize(rows)
    result = {
        "settings": settings.__dict__,
        "data": str(data),
        "samples": len(names),
        "evaluated": len(rows),
        "failed": len(failures),
        "skipped_unreadable": samples.skipped,
        **summary,
    }
    atomic_write_json(out, result)
    title = f"{format} - {label}" + (f" - baseline {baseline}" if baseline else "")
    atomic_write_text(out.with_suffix(".md"), summary_markdown(summary, title))
    _print_tables(console, summary, title)
    console.print(f"wrote {out}, {out.with_suffix('.md')} and {jsonl}")
    if failures:
        console.print(f"[red]{len(failures)} sample(s) failed[/red]")
        raise typer.Exit(1)


def _print_tables(console, summary: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from zsw.eval.evaluate import METRICS

    if not console.is_terminal:  # a log file or pipe: no need to squeeze the table into 80 columns
        console = Console(file=console.file, width=160, highlight=False)

    table = Table(title=title)
    table.add_column("category")
    table.add_column("n", justify="right")
    for k in METRICS:
        table.add_column(k.replace("fscore@", "F@"), justify="right")
    for name, d in summary["categories"].items():
        table.add_row(name, str(d["count"]), *(f"{d[k]:.4f}" for k in METRICS))
    table.add_section()
    table.add_row("overall", str(summary["overall"]["count"]), *(f"{summary['overall'][k]:.4f}" for k in METRICS))
    cm = summary["category_mean"]
    table.add_row("mean of categories", str(cm["count"]), *(f"{cm[k]:.4f}" for k in METRICS))
    console.print(table)
