"""How much of a mesh lies over the photo's background, with and without silhouette carving
(``zsw.infer.carve``): for each photo, the share of the mesh's vertices whose projection falls more
than 2 and 5 pixels (of the 224-pixel model input) outside the union of the visible and occluder
masks, the vertex count and the grid points decoded. With ``--masks`` (the photos' true
masks, named like them), a second table, made with ``--reframe never`` so that the true mask
lines up with the model input: the pixels of the true background, more than 2 pixels outside the
predicted masks, that the mesh covers, and the share of true object pixels that the predicted
masks miss (by more than 2 pixels) which the mesh still covers -- what carving could have cut
off that was right.

    python -m zsw.bench.carving examples/*.png --masks examples/masks --out bench/results/carving/photos.md

The scores on the held-out sets come from ``zsw eval`` with and without ``--no-carve``
(bench/results/carving/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _union(rec) -> np.ndarray:  # [S, S] bool: the pixels either predicted mask claims
    from zsw.infer.carve import mask_union

    return mask_union(rec.visible_mask, rec.occluder_mask)


def _pixels(rec) -> tuple[np.ndarray, np.ndarray]:
    """The nearest pixel ``[V, 2]`` (column, row) of each of ``rec``'s vertices (camera frame), and
    which of them lie in front of the camera and inside the model input ``[V]``."""
    from zsw.infer.color import project

    S = rec.visible_mask.shape[0]
    p = project(np.asarray(rec.mesh.vertices, np.float64).reshape(-1, 3), rec.intrinsics, (S, S))
    return np.stack([p.px, p.py], axis=1), p.inside


def outside_shares(rec, pixels: tuple[float, ...]) -> list[float]:
    """For each of ``pixels``: the share of ``rec``'s vertices that project inside the model input
    more than that many pixels outside both masks."""
    from scipy import ndimage

    if not len(rec.mesh.vertices):
        return [0.0 for _ in pixels]
    uv, inside = _pixels(rec)
    distance = ndimage.distance_transform_edt(~_union(rec))[uv[:, 1], uv[:, 0]]
    return [float(np.mean(inside & (distance > p))) for p in pixels]


def coverage(rec) -> np.ndarray:  # [S, S] bool: the pixels the mesh covers in the model input
    from scipy import ndimage

    S = rec.visible_mask.shape[0]
    covered = np.zeros((S, S), bool)
    uv, inside = _pixels(rec)
    covered[uv[inside, 1], uv[inside, 0]] = True
    return ndimage.binary_closing(covered, iterations=2)  # vertices a pixel or two apart fill it


def against_true_mask(photo: Path, mask: Path, carve: bool) -> tuple[int, int, float]:
    """(true-background pixels beyond the margin the mesh covers, true object pixels the masks miss
    beyond the margin, the share of those the mesh covers), with ``--reframe never``."""
    from scipy import ndimage

    import zsw
    from zsw.infer.image import load_image, load_mask

    rec = zsw.reconstruct(photo, frame="camera", color="none", reframe="never", carve=carve)
    truth = np.asarray(load_mask(mask, load_image(photo, rec.visible_mask.shape[0]))) > 0.5
    beyond = ndimage.distance_transform_edt(~_union(rec)) > 2
    covered = coverage(rec)
    missed = truth & beyond
    share = float(covered[missed].mean()) if missed.any() else 0.0
    return int((covered & ~truth & beyond).sum()), int(missed.sum()), share


def main() -> None:
    import zsw
    from zsw.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="+", type=Path)
    ap.add_argument("--masks", type=Path, help="folder of the photos' true masks, named like them")
    ap.add_argument("--out", type=Path, required=True, help="Markdown table")
    args = ap.parse_args()
    lines = [
        "| photo | carve | vertices | > 2 px outside | > 5 px outside | grid points decoded |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for photo in args.photos:
        for carve in (False, True):
            rec = zsw.reconstruct(photo, frame="camera", color="none", carve=carve)
            two, five = outside_shares(rec, (2, 5))
            row = (f"| {photo.name} | {'on' if carve else 'off'} | {len(rec.mesh.vertices)} | {two:.2%} | "
                   f"{five:.2%} | {rec.info['grid']['evaluated_points']} |")  # fmt: skip
            lines.append(row)
            print(row, flush=True)
    if args.masks is not None:
        lines += [
            "",
            "Against the true masks (`--reframe never`): true-background pixels more than 2 px outside the predicted",
            "masks that the mesh covers; true object pixels the predicted masks miss by more than 2 px, and the share",
            "of those the mesh covers.",
            "",
            "| photo | carve | true background covered (px) | object missed by the masks (px) | of it covered |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for photo in args.photos:
            for carve in (False, True):
                wrong, missed, share = against_true_mask(photo, args.masks / photo.name, carve)
                lines.append(f"| {photo.name} | {'on' if carve else 'off'} | {wrong} | {missed} | {share:.0%} |")
                print(lines[-1], flush=True)
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
