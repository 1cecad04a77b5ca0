"""Regenerate docs/images/carving.png: the packaged model's meshes of two bundled photos whose
objects stand on legs, shaded without colours from the front and from below-left, without
silhouette carving (``--no-carve``, top row of each pair) and with it (the default, bottom row).

    python docs/images/carving_figure.py [-o docs/images/carving.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ("tiger.png", "dispenser.png")
VIEWS = ((0.0, 0.0), (35.0, -20.0))  # azimuth, elevation (degrees): the photo's view, then from below-left


def main() -> None:
    import zsw
    from zsw.infer.preview import orbit_camera, render_mesh
    from zsw.io import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "images" / "carving.png")
    parser.add_argument("--panel", type=int, default=224)
    args = parser.parse_args()
    rows = []
    for name in PHOTOS:
        photo = None
        for carve in (False, True):
            rec = zsw.reconstruct(ROOT / "examples" / name, color="none", frame="camera", carve=carve)
            photo = rec.image
            v, f = np.asarray(rec.mesh.vertices, np.float64), np.asarray(rec.mesh.faces)
            row = [photo if carve is False else np.full_like(photo, 255)]
            for azimuth, elevation in VIEWS:
                moved, K = orbit_camera(v, args.panel, azimuth, elevation)
                row.append(render_mesh(moved, f, K, (args.panel, args.panel)))
            rows.append(np.concatenate(row, axis=1))
    sheet = np.concatenate(rows, axis=0)
    with atomic_write(args.out) as fh:
        Image.fromarray(sheet).save(fh, format="PNG")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
