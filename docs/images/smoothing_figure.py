"""Regenerate docs/images/smoothing.png: the packaged model's meshes of two bundled photos, shaded
without colours from two three-quarter views, as extracted (top row) and after the default Taubin
smoothing (bottom row).

    python docs/images/smoothing_figure.py [-o docs/images/smoothing.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ("teddy_bear.png", "armchair.png")
VIEWS = ((40.0, 25.0), (140.0, 20.0))  # azimuth, elevation (degrees)


def main() -> None:
    import zsw
    from zsw.infer.mesh_ops import smooth_mesh
    from zsw.infer.preview import orbit_camera, render_mesh
    from zsw.infer.settings import SMOOTH
    from zsw.io import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "images" / "smoothing.png")
    parser.add_argument("--panel", type=int, default=224)
    args = parser.parse_args()
    rows: list[list[np.ndarray]] = [[], []]
    for name in PHOTOS:
        raw = zsw.reconstruct(ROOT / "examples" / name, smooth=0, color="none", frame="camera").mesh
        for row, mesh in zip(rows, (raw, smooth_mesh(raw.copy(), SMOOTH))):
            v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces)
            for azimuth, elevation in VIEWS:
                moved, K = orbit_camera(v, args.panel, azimuth, elevation)
                row.append(render_mesh(moved, f, K, (args.panel, args.panel)))
    sheet = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    with atomic_write(args.out) as fh:
        Image.fromarray(sheet).save(fh, format="PNG")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
