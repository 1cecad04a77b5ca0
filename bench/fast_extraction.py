"""How many points ``fast`` (coarse-to-fine) extraction decodes for each setting, and how far its
mesh is from ``dense``'s, on real model outputs.

Each image's occupancy is decoded once on the dense (R+1)^3 grid; every ``fast`` setting then
"decodes" by looking its points up in that grid, which gives exactly what decoding them would, so
a setting costs no model time. Reported per setting: points decoded (mean, max); in how many images
the two meshes have the same vertices, and the largest vertex distance between them in grid cells,
both for the raw meshes and for what a user gets (parts under ``MIN_PART`` of the largest part's
area dropped, as ``zsw reconstruct`` does by default).

    python -m zsw.bench.fast_extraction examples/*.png --cache /tmp/logits.pt --out bench/results/fast-extraction.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

SETTINGS = [  # (coarse_resolution, margin, dilate, grow); the first is the default, the second the one before it
    (16, 2.0, 1, True), (32, 2.0, 1, False), (32, 2.0, 1, True), (16, 2.0, 1, False), (32, 1.0, 1, True),
    (16, 1.5, 1, True), (16, 1.0, 1, True), (32, 0.5, 1, True), (32, 2.0, 0, True), (32, 1.0, 0, True),
    (32, 0.0, 1, True), (32, 0.0, 0, True), (32, 0.0, 0, False),
]  # fmt: skip


def dense_logits(images: list[str], resolution: int, bound: float) -> list[torch.Tensor]:
    """The packaged model's logits on the dense grid of each image, ``[R+1]^3`` each."""
    from zsw.infer.backend import predict
    from zsw.infer.grid import occupancy_grid
    from zsw.infer.image import load_image
    from zsw.infer.weights import cached_backend

    backend = cached_backend("torch", None, None, "cpu")[0]
    size = backend.config.pixel.image_size
    out = []
    for path in images:
        im = load_image(path, size)
        batch = torch.from_numpy(im.image[None]).permute(0, 3, 1, 2).float() / 255.0
        pred = predict(backend, batch)
        probs, _ = occupancy_grid(lambda p, pred=pred: backend.decode(pred.latents, p), 1, resolution, bound=bound)
        out.append(torch.logit(probs[0].double().clamp(1e-12, 1 - 1e-12)).float())
    return out


def _agreement(fast, dense, cell: float) -> tuple[bool, float]:
    """Whether two meshes have the same vertices (every one within 1e-6 of one of the other's, both
    ways) and their largest vertex distance in grid cells."""
    from scipy.spatial import cKDTree

    fv, dv = np.asarray(fast.vertices), np.asarray(dense.vertices)
    if len(fv) == 0 or len(dv) == 0:
        return len(fv) == len(dv), 0.0 if len(fv) == len(dv) else float("inf")
    far = max(cKDTree(dv).query(fv)[0].max(), cKDTree(fv).query(dv)[0].max())
    return bool(far < 1e-6), float(far / cell)


def compare(logits: list[torch.Tensor], resolution: int, bound: float, setting: tuple[float, ...]) -> dict:
    from zsw.infer.grid import drop_small_parts, marching_cubes, occupancy_grid
    from zsw.infer.settings import MIN_PART

    coarse, margin, dilate, grow = setting
    cell = 2 * bound / resolution
    points, same, worst, same_kept, worst_kept = [], [], [], [], []
    for dense in logits:

        def lookup(p: torch.Tensor, dense=dense) -> torch.Tensor:  # [1, N, 3] -> [1, N]
            ix = torch.round((p + bound) / (2 * bound) * resolution).long().clamp(0, resolution)
            return dense[ix[..., 0], ix[..., 1], ix[..., 2]]

        probs, stats = occupancy_grid(lookup, 1, resolution, mode="fast", bound=bound, coarse_resolution=int(coarse),
                                      margin=margin, dilate=int(dilate), grow=grow)  # fmt: skip
        points.append(stats[0].evaluated_points)
        fast_mesh = marching_cubes(probs[0], 0.5, bound)
        dense_mesh = marching_cubes(torch.sigmoid(dense), 0.5, bound)
        ok, far = _agreement(fast_mesh, dense_mesh, cell)
        same.append(ok)
        worst.append(far)
        # what a user gets: the crumbs (parts under MIN_PART of the largest's area) dropped
        ok, far = _agreement(drop_small_parts(fast_mesh, MIN_PART)[0], drop_small_parts(dense_mesh, MIN_PART)[0], cell)
        same_kept.append(ok)
        worst_kept.append(far)
    return dict(points_mean=np.mean(points), points_max=max(points), same=sum(same), worst_cells=max(worst),
                same_kept=sum(same_kept), worst_kept_cells=max(worst_kept), images=len(logits))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--bound", type=float, default=1.5)
    parser.add_argument("--out", type=Path, default=None, help="Markdown table to write.")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="File holding the dense logits of these images: read if it exists, else written.",
    )
    args = parser.parse_args(argv)
    if args.cache and args.cache.exists():
        logits = torch.load(args.cache)
    else:
        logits = dense_logits(args.images, args.resolution, args.bound)
        if args.cache:
            torch.save(logits, args.cache)
    lines = [
        f"{len(logits)} images, resolution {args.resolution} ({(args.resolution + 1) ** 3:,} grid points)",
        "",
        "| coarse | margin | dilate | grow | points (mean / max) | same mesh | worst (cells) "
        "| same mesh, crumbs dropped | worst, crumbs dropped (cells) |",
        "| ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in SETTINGS:
        r = compare(logits, args.resolution, args.bound, s)
        lines.append(
            f"| {s[0]} | {s[1]} | {s[2]} | {'yes' if s[3] else 'no'} "
            f"| {r['points_mean'] / 1e3:.0f}k / {r['points_max'] / 1e3:.0f}k | "
            f"{r['same']} / {r['images']} | {r['worst_cells']:.2f} | {r['same_kept']} / {r['images']} | "
            f"{r['worst_kept_cells']:.2f} |"
        )
        print(lines[-1], flush=True)
    if args.out:
        from zsw.io import atomic_write_text

        atomic_write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
