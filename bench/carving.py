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


def outside_share(rec, pixels: float) -> float:
    """Share of ``rec``'s vertices (camera frame) that project inside the model input more than
    ``pixels`` outside both masks."""
    from scipy import ndimage

    union = rec.visible_mask | (rec.occluder_mask if rec.occluder_mask is not None else False)
    v = np.asarray(rec.mesh.vertices, np.float64)
    if not len(v):
        return 0.0
    uvw = v @ rec.intrinsics.T
    uv = uvw[:, :2] / uvw[:, 2:]
    S = union.shape[0]
    inside = (uvw[:, 2] > 0) & (uv >= 0).all(1) & (uv <= S - 1).all(1)
    ui = np.clip(np.round(uv).astype(int), 0, S - 1)
    distance = ndimage.distance_transform_edt(~union)[ui[:, 1], ui[:, 0]]
    return float(np.mean(inside & (distance > pixels)))


def coverage(rec) -> np.ndarray:  # [S, S] bool: the pixels the mesh covers in the model input
    from scipy import ndimage

    S = rec.visible_mask.shape[0]
    covered = np.zeros((S, S), bool)
    v = np.asarray(rec.mesh.vertices, np.float64)
    if len(v):
        uvw = v @ rec.intrinsics.T
        uv = np.round(uvw[:, :2] / uvw[:, 2:]).astype(int)
        keep = (uvw[:, 2] > 0) & (uv >= 0).all(1) & (uv < S).all(1)
        covered[uv[keep, 1], uv[keep, 0]] = True
    return ndimage.binary_closing(covered, iterations=2)  # vertices a pixel or two apart fill it


def against_true_mask(photo: Path, mask: Path, carve: bool) -> tuple[int, int, float]:
    """(true-background pixels beyond the margin the mesh covers, true object pixels the masks miss
    beyond the margin, the share of those the mesh covers), with ``--reframe never``."""
    from scipy import ndimage

    import zsw
    from zsw.infer.image import load_image, load_mask

    rec = zsw.reconstruct(photo, frame="camera", color="none", reframe="never", carve=carve)
    truth = np.asarray(load_mask(mask, load_image(photo, rec.visible_mask.shape[0]))) > 0.5
    union = rec.visible_mask | (rec.occluder_mask if rec.occluder_mask is not None else False)
    beyond = ndimage.distance_transform_edt(~union) > 2
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
            row = (f"| {photo.name} | {'on' if carve else 'off'} | {len(rec.mesh.vertices)} | "
                   f"{outside_share(rec, 2):.2%} | {outside_share(rec, 5):.2%} | "
                   f"{rec.info['grid']['evaluated_points']} |")  # fmt: skip
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
