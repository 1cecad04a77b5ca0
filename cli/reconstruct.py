"""``zsw reconstruct``: reconstruct meshes (plus depth, masks and a preview) from images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors

COMMAND = dict(
    help="Reconstruct meshes (plus depth, masks and a preview) from images."
    "\n\nINPUT is any number of image files (PNG, JPEG, WebP, BMP, TIFF), folders or glob patterns. Each "
    "image gets OUT/<name>/ with mesh.glb (or --format), depth.png, visible_mask.png, occluder_mask.png, "
    "preview.png and result.json. An image whose result.json records the same input (content hash), "
    "settings and weights is skipped unless --overwrite; any other earlier result is redone. Unreadable "
    "images are reported and the others still run; the exit code is 1 if any failed."
    "\n\nMesh frame: --frame gltf (default) is y up with the object facing +z, as glTF viewers show it; "
    "--frame camera is x right, y down, z forward. Units follow the predicted (relative) depth."
    "\n\nExample:\n\n  zsw reconstruct photo.jpg -o out/"
    "\n\n  zsw reconstruct photos/ 'more/*.jpg' -o out/ --format obj --format glb --resolution 128",
)

_FRAMES = ("gltf", "camera")
_FORMATS = ("glb", "obj", "ply")
_EXTRACTIONS = ("fast", "dense")
_BACKENDS = ("torch", "onnxruntime", "tensorrt")


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=option)
    return value


def _output_names(paths: list[Path]) -> list[str]:
    """Folder names under OUT: the file stem, made unique with -2, -3, ... in input order."""
    names, used = [], set()
    for p in paths:
        name, k = p.stem, 2
        while name in used:
            name, k = f"{p.stem}-{k}", k + 1
        used.add(name)
        names.append(name)
    return names


@cli_errors
def reconstruct(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Image files, folders or glob patterns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (one sub-folder per image).")] = Path("out"),
    formats: Annotated[
        list[str] | None, typer.Option("--format", "-f", help="Mesh format: glb, obj or ply (repeatable).")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="Checkpoint (.safetensors). Default: the packaged demo model. 'random:PRESET' = untrained."),
    ] = None,
    prompt: Annotated[
        str,
        typer.Option(
            help="Category prompt, e.g. 'chair'. 'auto' (= 'clip') picks it by CLIP zero-shot over LVIS + ShapeNet; "
            "'vlm:<hub id or folder>' asks a vision-language model."
        ),
    ] = "object",
    resolution: Annotated[int, typer.Option(min=8, max=1024, help="Grid cells per axis (N+1 samples).")] = 128,
    extraction: Annotated[str, typer.Option(help="fast (coarse to fine) or dense (every grid point).")] = "fast",
    threshold: Annotated[float, typer.Option(min=0.001, max=0.999, help="Occupancy probability of the surface.")] = 0.5,
    frame: Annotated[str, typer.Option(help="Mesh frame: gltf (y up, facing +z) or camera (y down, z forward).")] = (
        "gltf"
    ),
    masks: Annotated[
        Path | None,
        typer.Option(help="Folder of visible masks named like the images (<name>.png); required by ZeroShape models."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cuda, cuda:1, cpu ... (default: CUDA if available).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 1,
    chunk_points: Annotated[
        int, typer.Option(min=1024, help="Most query points per decoder call (bounds memory).")
    ] = 65536,
    backend: Annotated[str, typer.Option(help="torch, onnxruntime or tensorrt.")] = "torch",
    engine: Annotated[Path | None, typer.Option(help="Folder written by `zsw export` (onnxruntime/tensorrt).")] = None,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on the CPU), fp32, bf16 or fp16 (PyTorch backend).")
    ] = "auto",
    color: Annotated[str, typer.Option(help="Vertex colours: photo (from the input photo) or none.")] = "photo",
    close: Annotated[
        bool, typer.Option("--close/--no-close", help="Space outside the grid is empty: watertight meshes.")
    ] = True,
    preview: Annotated[bool, typer.Option("--preview/--no-preview", help="Write preview.png.")] = True,
    overwrite: Annotated[
        bool, typer.Option(help="Redo images even when their result records the same input and settings.")
    ] = False,
) -> None:
    formats = [_choice(f, _FORMATS, "--format") for f in (formats or ["glb"])]
    _choice(extraction, _EXTRACTIONS, "--extraction")
    _choice(frame, _FRAMES, "--frame")
    _choice(backend, _BACKENDS, "--backend")
    _choice(color, ("photo", "none"), "--color")
    if masks is not None and not masks.is_dir():
        raise typer.BadParameter(f"{masks} is not a folder", param_hint="--masks")

    from rich.console import Console

    from zsw.infer.image import find_images

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    paths, problems = find_images(inputs)
    failed: list[tuple[str, str]] = list(problems)
    for item, reason in problems:
        console.print(f"[red]error:[/red] {item}: {reason}")
    names = _output_names(paths)
    from zsw.infer.reconstruct import plan_reruns, weights_identity

    settings = dict(
        weights=weights_identity(weights, engine), backend=backend, resolution=resolution, extraction=extraction,
        threshold=threshold, frame=frame, formats=sorted(formats), prompt=prompt, precision=precision, close=close,
        color=color, preview=preview, device=device or "auto",
    )  # fmt: skip
    todo, changed, errors = plan_reruns(paths, names, out, settings, masks, overwrite)
    for p, reason in errors:
        failed.append((str(p), reason))
        console.print(f"[red]error:[/red] {p}: {reason}")
    skipped = len(paths) - len(todo) - len(errors)
    if skipped:
        console.print(f"skipping {skipped} image(s) already reconstructed in {out} from the same input and settings")
    if changed:
        console.print(f"redoing {changed} image(s) made from another input, settings or weights in {out}")
    done = 0
    if todo:
        done = _run(todo, out, formats, weights, prompt, resolution, extraction, threshold, frame, masks,
                    device, batch_size, chunk_points, backend, engine, preview, console, failed, precision, close,
                    color)  # fmt: skip
    total = len(paths) + len(problems)
    summary = f"reconstructed {done}, skipped {skipped}, failed {len(failed)} of {total} input(s) -> {out}"
    console.print(("[red]" if failed else "[green]") + summary)
    if failed:
        raise typer.Exit(1)


def _run(todo, out, formats, weights, prompt, resolution, extraction, threshold, frame, masks, device,
         batch_size, chunk_points, backend, engine, preview, console, failed, precision, close,
         color) -> int:  # fmt: skip
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from zsw.errors import InputError, ZswError
    from zsw.infer.image import load_image, load_mask
    from zsw.infer.reconstruct import Reconstructor, find_mask, open_backend

    be, label, warning = open_backend(backend, weights, engine, device)
    if warning:
        console.print(f"[bold yellow]WARNING:[/bold yellow] {warning}")
    recon = Reconstructor(be, resolution=resolution, extraction=extraction, threshold=threshold, frame=frame,
                          chunk_points=chunk_points, weights_label=label, precision=precision,
                          close=close, color=color)  # fmt: skip
    if warning:
        recon.warnings.append(warning)
    category = None
    if prompt in ("auto", "clip") or prompt.startswith("vlm:"):
        from zsw.infer.category import get_estimator

        category = get_estimator(prompt, device=str(be.device))
    size = be.config.pixel.image_size
    done = 0
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=len(todo) < 2,
    )  # fmt: skip
    with progress:
        task = progress.add_task("reconstructing", total=len(todo))
        for start in range(0, len(todo), batch_size):
            batch = []
            for path, name, request in todo[start : start + batch_size]:
                try:
                    t0 = time.perf_counter()
                    loaded = load_image(path, size, name=name)
                    mask = None
                    if masks is not None:
                        mask_file = find_mask(masks, path)
                        if mask_file is not None:
                            mask = load_mask(mask_file, loaded)
                        elif recon.needs_mask:
                            raise InputError(f"{path}: no mask named {path.stem}.* in {masks}")
                    batch.append((path, loaded, mask, time.perf_counter() - t0, request))
                except ZswError as e:
                    failed.append((str(path), str(e)))
                    progress.console.print(f"[red]error:[/red] {e}")
                    progress.advance(task)
            if not batch:
                continue
            done += _reconstruct_batch(batch, recon, category, prompt, out, formats, preview, progress, failed)
            progress.advance(task, len(batch))
    return done


def _reconstruct_batch(batch, recon, category, prompt, out, formats, preview, progress, failed) -> int:
    """Reconstruct and save one batch; a failing batch is retried image by image. Returns successes."""
    images = [b[1] for b in batch]
    if category is not None:
        from PIL import Image

        prompts, source = category([Image.fromarray(im.image) for im in images]), "auto"
    else:
        prompts, source = [prompt] * len(batch), ("user" if prompt != "object" else "default")
    return _save_batch(batch, recon, prompts, source, out, formats, preview, progress, failed)


def _save_batch(batch, recon, prompts, source, out, formats, preview, progress, failed) -> int:
    from zsw.errors import ZswError

    masks = [b[2] for b in batch] if any(b[2] is not None for b in batch) else None
    try:
        results = recon([b[1] for b in batch], prompts, masks)
    except ZswError as e:
        if len(batch) == 1:
            failed.append((str(batch[0][0]), str(e)))
            progress.console.print(f"[red]error:[/red] {batch[0][0]}: {e}")
            return 0
        return sum(
            _save_batch([item], recon, [p], source, out, formats, preview, progress, failed)
            for item, p in zip(batch, prompts)
        )
    done = 0
    for (path, _, _, load_s, request), rec in zip(batch, results):
        try:
            rec.info["request"] = request
            rec.info["prompt_source"] = source
            rec.info["timings_s"]["load"] = load_s
            rec.save(out / rec.name, formats, preview=preview)
            done += 1
            m = rec.info["mesh"]
            progress.console.print(f"{path} -> {out / rec.name} ({m['vertices']} vertices, {m['faces']} faces)")
        except (OSError, ZswError) as e:
            failed.append((str(path), str(e)))
            progress.console.print(f"[red]error:[/red] {path}: cannot write results ({e})")
    return done
