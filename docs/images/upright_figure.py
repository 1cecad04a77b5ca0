"""Regenerate docs/images/upright.png: what ``--frame upright`` changes. Per row, the input, then the
packaged model's mesh seen from the side at eye level (a horizontal camera turned 90 degrees about
the vertical) in the ``gltf`` frame (the camera's up: the object leans back by the camera's
elevation) and in the ``upright`` frame (the object's predicted up), with the ground plane y = 0
of the upright frame drawn as a line under both.

    python docs/images/upright_figure.py --test-data data/demo/test [-o docs/images/upright.png]

``--test-data`` is the held-out test set of docs/training.md; the rows are its first view of each
listed category seen from at least 45 degrees above, then bundled photos.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = ("box", "mug", "table")
PHOTOS = ("hat.png", "teddy_bear.png")
STEEP = 45.0  # degrees: test views seen from at least this far above


def _side_view(y_up: np.ndarray, faces: np.ndarray, ground: float, panel: int) -> np.ndarray:
    """The y-up mesh from a horizontal camera on its +x side looking along -x (the photo's camera,
    at +z, to the left), framed on its bounding sphere, over a grey line at height ``ground``."""
    from zsw.infer.preview import render_mesh

    center = (y_up.min(0) + y_up.max(0)) / 2
    radius = float(np.linalg.norm(y_up - center, axis=1).max()) or 1.0
    half = math.radians(30.0) / 2
    distance = radius / math.sin(half) * 1.05
    p = y_up - center
    cam = np.stack([-p[:, 2], -p[:, 1], distance - p[:, 0]], axis=1)  # right = -z, down = -y, forward = -x
    focal = panel / 2 / math.tan(half)
    K = np.array([[focal, 0, (panel - 1) / 2], [0, focal, (panel - 1) / 2], [0, 0, 1]])
    image = render_mesh(cam, faces, K, (panel, panel))  # clay: the shape, not the photo's colours
    row = int(round(focal * -(ground - center[1]) / distance + (panel - 1) / 2))  # the ground at the centre's depth
    if 0 <= row < panel:
        image[row, :] = (150, 150, 150)
    return image


def main() -> None:
    import zsw
    from zsw.data.layout import SampleId, ZeroShapeLayout
    from zsw.infer.orient import frame_pose
    from zsw.io import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-data", type=Path, required=True)
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "images" / "upright.png")
    parser.add_argument("--panel", type=int, default=224)
    args = parser.parse_args()
    layout = ZeroShapeLayout(args.test_data)
    inputs = []
    for category in CATEGORIES:
        for path in sorted((args.test_data / "images_processed" / category).glob("*.png")):
            sid = SampleId.parse(category, path.name)
            up = np.load(layout.extrinsics(sid))[:3, 1]
            if math.degrees(math.asin(-up[2] / np.linalg.norm(up))) >= STEEP:
                inputs.append(path)
                break
    inputs += [ROOT / "examples" / name for name in PHOTOS]
    rows = []
    for path in inputs:
        rec = zsw.reconstruct(path, frame="upright", color="none")
        faces = np.asarray(rec.mesh.faces)
        upright = np.asarray(rec.mesh.vertices, np.float64)
        gltf = frame_pose("gltf").apply(rec.camera_vertices())
        gltf = gltf - [0.0, gltf[:, 1].min(), 0.0]  # both standing on their lowest point
        photo = np.asarray(Image.fromarray(rec.image).resize((args.panel, args.panel)))
        rows.append(np.concatenate([photo, _side_view(gltf, faces, 0.0, args.panel),
                                    _side_view(upright, faces, 0.0, args.panel)], axis=1))  # fmt: skip
    sheet = np.concatenate(rows, axis=0)
    with atomic_write(args.out) as fh:
        Image.fromarray(sheet).save(fh, format="PNG")
    print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
