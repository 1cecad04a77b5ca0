"""What ``--smooth`` and ``--faces`` do to real reconstructions: how often a decimated mesh stays
watertight, and what smoothing and decimation cost (``docs/reconstruct.md``, "Smoothing and
decimation").

    python -m zsw.bench.mesh_ops [--data data/demo/test] [--images 21] [--out bench/results/mesh-ops.md]

The packaged model reconstructs the bundled photos (``examples/*.png``) and ``--images`` procedural
test images drawn with a fixed seed from ``--data``'s ``images_processed`` (none without it), at
resolution 128, ``fast``, without colours and unsmoothed; each mesh is smoothed (``--smooth``
passes, the default's by default) and then decimated to every budget of ``--budgets``, as
``zsw reconstruct --faces N`` does. How rough a mesh is: the mean angle between neighbouring faces, and
the share of neighbours more than 20 degrees apart, before and after the smoothing.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (32, 100, 500, 1000, 2000, 5000, 20000)


def photos(data: Path | None, images: int, seed: int = 0) -> list[Path]:
    """The bundled photos, then ``images`` procedural test images drawn from ``data``."""
    paths = sorted((REPO / "examples").glob("*.png"))
    if data is not None and images:
        pool = sorted(Path(data).glob("images_processed/*/*.png"))
        paths += random.Random(seed).sample(pool, min(images, len(pool)))
    return paths


def roughness(mesh) -> tuple[float, float]:
    """Mean angle between neighbouring faces (degrees) and the share of neighbours over 20 degrees apart."""
    angles = np.degrees(mesh.face_adjacency_angles)
    return float(angles.mean()), float((angles > 20.0).mean())


def measure(paths: list[Path], budgets=BUDGETS, smooth: int | None = None) -> dict:
    """Per budget: decimations, how many stayed watertight, the share of the smoothed surface's area
    each kept (a collapse to slivers keeps almost none), median seconds; the smoothing's seconds
    and the meshes' roughness before and after it (``smooth`` None: the default passes)."""
    import trimesh

    import zsw
    from zsw.infer.mesh_ops import decimate_mesh, smooth_mesh
    from zsw.infer.settings import SMOOTH

    smooth = SMOOTH if smooth is None else smooth

    counts = ("meshes", "within", "watertight", "merged", "pinched")
    rows = {b: {**dict.fromkeys(counts, 0), "seconds": [], "kept": []} for b in budgets}
    smooth_s, faces, rough = [], [], []
    for path in paths:
        mesh = zsw.reconstruct(path, color="none", smooth=0).mesh
        if len(mesh.faces) == 0 or not mesh.is_watertight:
            continue
        faces.append(len(mesh.faces))
        t0 = time.perf_counter()
        smoothed = smooth_mesh(mesh.copy(), smooth)
        smooth_s.append(time.perf_counter() - t0)
        rough.append((*roughness(mesh), *roughness(smoothed)))
        for b in budgets:
            t0 = time.perf_counter()
            small, opened = decimate_mesh(smoothed, b)
            row = rows[b]
            row["seconds"].append(time.perf_counter() - t0)
            row["meshes"] += 1
            row["within"] += len(small.faces) <= b
            row["watertight"] += bool(small.is_watertight)
            # as STL readers and slicers read it: vertices at one position are one vertex
            row["merged"] += bool(trimesh.Trimesh(small.vertices, small.faces, process=True).is_watertight)
            row["pinched"] += opened > 0
            row["kept"].append(float(small.area) / float(smoothed.area))
    return {"rows": rows, "smooth_s": smooth_s, "faces": faces, "smooth": smooth, "roughness": rough}


def markdown(result: dict, paths: list[Path]) -> str:
    import torch

    from zsw.bench._harness import environment

    env = environment("cpu")
    threads = torch.get_num_threads()
    rough = np.mean(result["roughness"], axis=0)
    lines = [
        "# `--smooth` and `--faces` on the packaged model's meshes",
        "",
        f"`python -m zsw.bench.mesh_ops`: {len(result['faces'])} meshes ({len(paths)} images: the bundled photos "
        "and procedural test images), resolution 128, `fast`; median "
        f"{int(np.median(result['faces'])):,} faces before decimation. {result['smooth']} smoothing passes: median "
        f"{np.median(result['smooth_s']):.3f} s. Host: {env.gpu.removeprefix('cpu: ')}, "
        f"{threads} thread{'s' if threads > 1 else ''}, torch {env.torch}, zsw {env.git_sha}.",
        "",
        f"Roughness (mean over the meshes): mean angle between neighbouring faces {rough[0]:.1f} degrees "
        f"as extracted, {rough[2]:.1f} after {result['smooth']} passes; neighbours over 20 degrees apart "
        f"{rough[1]:.1%} -> {rough[3]:.1%}.",
        "",
        "| --faces | decimations | within the budget | watertight | watertight with vertices merged by position "
        "| with edges left open or pinched | surface kept: least, median | median seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    total = [0, 0, 0]
    for b, row in result["rows"].items():
        total[0] += row["meshes"]
        total[1] += row["watertight"]
        total[2] += row["merged"]
        lines.append(
            f"| {b:,} | {row['meshes']} | {row['within']} | {row['watertight']} | {row['merged']} | {row['pinched']} "
            f"| {min(row['kept']):.0%}, {np.median(row['kept']):.0%} | {np.median(row['seconds']):.3f} |"
        )
    lines += ["", f"In all: {total[1]} of {total[0]} decimations watertight by vertex index, {total[2]} with "
              "vertices merged by position.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="a procedural test set (zsw synthesize)")
    parser.add_argument("--images", type=int, default=21, help="procedural images drawn from --data")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--smooth", type=int, default=None, help="smoothing passes (default: zsw's default)")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too (markdown)")
    args = parser.parse_args(argv)
    paths = photos(args.data, args.images)
    text = markdown(measure(paths, tuple(args.budgets), args.smooth), paths)
    print(text)
    if args.out is not None:
        from zsw.io import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
