"""Regenerate docs/images/cutout.png: scikit-image's coffee photo (a cup on a saucer on a wooden
table, filling the frame) reconstructed by the packaged model as it is (top) and after the object
was cut out into an RGBA file (bottom): each row is ``zsw reconstruct``'s preview (the input, the
mesh from the photo's camera, a three-quarter view).

The cut-out here is a rough hand-drawn alpha (two ellipses over the cup and the saucer), standing in
for a background remover such as rembg, whose weights this machine cannot download.

    python docs/images/cutout_figure.py [-o docs/images/cutout.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
#: the alpha's two ellipses, as fractions of the photo's width and height
ELLIPSES = ((0.07, 0.35, 0.8, 0.98), (0.25, 0.05, 0.7, 0.6))


def main() -> None:
    from skimage import data

    import zsw
    from zsw.io import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "images" / "cutout.png")
    args = parser.parse_args()
    photo = Image.fromarray(data.coffee())
    W, H = photo.size
    alpha = Image.new("L", photo.size, 0)
    for x0, y0, x1, y1 in ELLIPSES:
        ImageDraw.Draw(alpha).ellipse([x0 * W, y0 * H, x1 * W, y1 * H], fill=255)
    cut = photo.copy()
    cut.putalpha(alpha)
    rows = [zsw.reconstruct(image).preview(panel=224) for image in (photo, cut)]
    with atomic_write(args.out, "wb") as f:
        Image.fromarray(np.concatenate(rows, axis=0)).save(f, format="PNG", optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
