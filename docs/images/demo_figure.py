"""Regenerate the README picture: ``zsw reconstruct``'s preview (input | mesh from the input view |
three-quarter view) of the packaged default model on bundled photos and held-out procedural test
images, stacked into one PNG.

    python docs/images/demo_figure.py --test-data data/demo/test -o docs/images/demo-model.png

``--test-data`` is the held-out test set of docs/training.md (``zsw synthesize procedural ...
--seed 1 --bake test``); the rows are its first view of each listed category.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ("armchair.png", "teddy_bear.png")
CATEGORIES = ("box", "torus", "table", "mug")


def main() -> None:
    import zsw
    from zsw.data.layout import ZeroShapeLayout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-data", type=Path, required=True)
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "images" / "demo-model.png")
    parser.add_argument("--panel", type=int, default=192)
    args = parser.parse_args()

    sources = [ROOT / "examples" / name for name in PHOTOS]
    layout = ZeroShapeLayout(args.test_data)
    for cat in CATEGORIES:
        sid = layout.read_list(cat, "test")[0]
        sources.append(layout.image(sid))
    rows = [zsw.reconstruct(src, resolution=128).preview(panel=args.panel) for src in sources]
    sheet = np.concatenate(rows, axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
