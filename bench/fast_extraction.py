"""How many points ``fast`` (coarse-to-fine) extraction decodes for each setting, and how far its
mesh is from ``dense``'s, on real model outputs.

Each image's occupancy is decoded once on the dense (R+1)^3 grid; every ``fast`` setting then
"decodes" by looking its points up in that grid, which gives exactly what decoding them would, so
a setting costs no model time. Reported per setting: points decoded (mean, max), the occupancy
IoU of the two grids, the share of ``fast`` vertices that coincide with a ``dense`` vertex, and the
largest vertex distance between the meshes in grid cells.

    python -m zsw.bench.fast_extraction examples/*.png --out bench/results/fast-extraction.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

SETTINGS = [  # (coarse_resolution, margin, dilate); the first is the default
    (32, 2.0, 1), (16, 4.0, 1), (8, 8.0, 1), (32, 1.5, 1), (16, 3.0, 1), (32, 1.0, 1), (16, 2.0, 1),
    (32, 2.0, 0), (32, 1.0, 0), (32, 0.5, 1), (32, 0.0, 1), (32, 0.0, 0),
]  # fmt: skip


def dense_logits(images: list[str], resolution: int, bound: float) -> list[torch.Tensor]:
    """The packaged model's logits on the dense grid of each image, ``[R+1]^3`` each."""
    from zsw.infer.backend import predict
    from zsw.infer.grid import occupancy_grid
    from zsw.infer.image import load_image
    from zsw.infer.reconstruct import cached_backend

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


def compare(logits: list[torch.Tensor], resolution: int, bound: float, setting: tuple[float, ...]) -> dict:
    from scipy.spatial import cKDTree

    from zsw.infer.grid import marching_cubes, occupancy_grid

    coarse, margin, dilate = setting
    cell = 2 * bound / resolution
    points, iou, same, worst = [], [], [], []
    for dense in logits:

        def lookup(p: torch.Tensor, dense=dense) -> torch.Tensor:  # [1, N, 3] -> [1, N]
            ix = torch.round((p + bound) / (2 * bound) * resolution).long().clamp(0, resolution)
            return dense[ix[..., 0], ix[..., 1], ix[..., 2]]

        probs, stats = occupancy_grid(lookup, 1, resolution, mode="fast", bound=bound, coarse_resolution=int(coarse),
                                      margin=margin, dilate=int(dilate))  # fmt: skip
        points.append(stats[0].evaluated_points)
        a, b = probs[0] > 0.5, dense > 0
        iou.append(float((a & b).sum() / max(1, int((a | b).sum()))))
        fv = np.asarray(marching_cubes(probs[0], 0.5, bound).vertices)
        dv = np.asarray(marching_cubes(torch.sigmoid(dense), 0.5, bound).vertices)
        if len(fv) == 0 or len(dv) == 0:
            same.append(float(len(fv) == len(dv)))
            worst.append(0.0 if len(fv) == len(dv) else float("inf"))
            continue
        d1, _ = cKDTree(dv).query(fv)
        d2, _ = cKDTree(fv).query(dv)
        same.append(float(((d1 < 1e-6).mean() + (d2 < 1e-6).mean()) / 2))
        worst.append(float(max(d1.max(), d2.max()) / cell))
    return dict(points_mean=np.mean(points), points_max=max(points), iou_min=min(iou), same_mean=np.mean(same),
                same_min=min(same), worst_cells=max(worst))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--bound", type=float, default=1.5)
    parser.add_argument("--out", type=Path, default=None, help="Markdown table to write.")
    args = parser.parse_args(argv)
    logits = dense_logits(args.images, args.resolution, args.bound)
    lines = [
        f"{len(logits)} images, resolution {args.resolution} ({(args.resolution + 1) ** 3:,} grid points)",
        "",
        "| coarse | margin | dilate | points (mean / max) | IoU min | same vertices (mean / min) | worst (cells) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in SETTINGS:
        r = compare(logits, args.resolution, args.bound, s)
        lines.append(
            f"| {s[0]} | {s[1]} | {s[2]} | {r['points_mean'] / 1e3:.0f}k / {r['points_max'] / 1e3:.0f}k | "
            f"{r['iou_min']:.4f} | {r['same_mean']:.4f} / {r['same_min']:.4f} | {r['worst_cells']:.2f} |"
        )
        print(lines[-1], flush=True)
    if args.out:
        from zsw.io import atomic_write_text

        atomic_write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
