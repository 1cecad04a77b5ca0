"""What ``--smooth`` and ``--faces`` do to real reconstructions: how often a decimated mesh stays
watertight, and what smoothing and decimation cost (``docs/reconstruct.md``, "Smoothing and
decimation").

    python -m zsw.bench.mesh_ops [--data data/demo/test] [--images 21] [--out bench/results/mesh-ops.md]

The packaged model reconstructs the bundled photos (``examples/*.png``) and ``--images`` procedural
test images drawn with a fixed seed from ``--data``'s ``images_processed`` (none without it), at
resolution 128, ``fast``, without colours; each mesh is smoothed (20 passes) and then decimated to
every budget of ``--budgets``, as ``zsw reconstruct --smooth 20 --faces N`` does.
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


def measure(paths: list[Path], budgets=BUDGETS, smooth: int = 20) -> dict:
    """Per budget: decimations, how many stayed watertight, median seconds; and the smoothing's."""
    import trimesh

    import zsw
    from zsw.infer.mesh_ops import decimate_mesh, smooth_mesh

    rows = {b: {"meshes": 0, "within": 0, "watertight": 0, "merged": 0, "pinched": 0, "seconds": []} for b in budgets}
    smooth_s, faces = [], []
    for path in paths:
        mesh = zsw.reconstruct(path, color="none").mesh
        if len(mesh.faces) == 0 or not mesh.is_watertight:
            continue
        faces.append(len(mesh.faces))
        t0 = time.perf_counter()
        smoothed = smooth_mesh(mesh.copy(), smooth)
        smooth_s.append(time.perf_counter() - t0)
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
    return {"rows": rows, "smooth_s": smooth_s, "faces": faces, "smooth": smooth}


def markdown(result: dict, paths: list[Path]) -> str:
    import torch

    from zsw.bench._harness import environment

    env = environment("cpu")
    lines = [
        "# `--smooth` and `--faces` on the packaged model's meshes",
        "",
        f"`python -m zsw.bench.mesh_ops`: {len(result['faces'])} meshes ({len(paths)} images: the bundled photos "
        "and procedural test images), resolution 128, `fast`; median "
        f"{int(np.median(result['faces'])):,} faces before decimation. {result['smooth']} smoothing passes: median "
        f"{np.median(result['smooth_s']):.3f} s. Host: {env.gpu.removeprefix('cpu: ')}, "
        f"{torch.get_num_threads()} threads, torch {env.torch}, zsw {env.git_sha}.",
        "",
        "| --faces | decimations | within the budget | watertight | watertight with vertices merged by position "
        "| with edges left open or pinched | median seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    total = [0, 0, 0]
    for b, row in result["rows"].items():
        total[0] += row["meshes"]
        total[1] += row["watertight"]
        total[2] += row["merged"]
        lines.append(
            f"| {b:,} | {row['meshes']} | {row['within']} | {row['watertight']} | {row['merged']} | {row['pinched']} "
            f"| {np.median(row['seconds']):.3f} |"
        )
    lines += ["", f"In all: {total[1]} of {total[0]} decimations watertight by vertex index, {total[2]} with "
              "vertices merged by position.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="a procedural test set (zsw synthesize)")
    parser.add_argument("--images", type=int, default=21, help="procedural images drawn from --data")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--out", type=Path, default=None, help="write the table here too (markdown)")
    args = parser.parse_args(argv)
    paths = photos(args.data, args.images)
    text = markdown(measure(paths, tuple(args.budgets)), paths)
    print(text)
    if args.out is not None:
        from zsw.io import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
