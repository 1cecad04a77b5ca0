"""How much of a mesh lies over the photo's background, with and without silhouette carving
(``zsw.infer.carve``): for each photo, the share of the mesh's vertices whose projection falls more
than 2 and 5 pixels (of the 224-pixel model input) outside the union of the visible and occluder
masks, the vertex count and the grid points decoded.

    python -m zsw.bench.carving examples/*.png --out bench/results/carving/photos.md

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


def main() -> None:
    import zsw
    from zsw.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="+", type=Path)
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
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
