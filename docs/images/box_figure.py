"""Regenerate docs/images/box.png: a photo of two things (the bundled teddy bear and dispenser
photos side by side on white, 448 x 224) reconstructed by the packaged model as it is (top), with
``--box 0,0,224,224`` (middle) and with ``--box 224,0,448,224`` (bottom): each row is ``zsw
reconstruct``'s preview (the model's input, the mesh from the photo's camera, a three-quarter view).

    python docs/images/box_figure.py [-o docs/images/box.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
BOXES = (None, (0, 0, 224, 224), (224, 0, 448, 224))


def main() -> None:
    import zsw
    from zsw.io import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "images" / "box.png")
    args = parser.parse_args()
    photo = Image.new("RGB", (448, 224), "white")
    for x, name in ((0, "teddy_bear"), (224, "dispenser")):
        photo.paste(Image.open(ROOT / "examples" / f"{name}.png").convert("RGB"), (x, 0))
    rows = [zsw.reconstruct(photo, box=box).preview(panel=224) for box in BOXES]
    with atomic_write(args.out, "wb") as f:
        Image.fromarray(np.concatenate(rows, axis=0)).save(f, format="PNG", optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
