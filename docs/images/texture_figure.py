"""Regenerate docs/images/texture.png: bundled photos reconstructed by the packaged model and
decimated to 2,000 faces, seen from the input camera: the photo, the mesh with vertex colours, the
same mesh with `--texture 1024` (each pixel looks its colour up in the atlas), both shaded alike.

    python docs/images/texture_figure.py [-o docs/images/texture.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ("toy.png", "case.png")
FACES = 2000


def render_textured(rec, panel: int) -> np.ndarray:  # [panel, panel, 3]: the atlas seen from the input camera
    import torch

    from zsw.infer.color import _bilinear
    from zsw.infer.preview import _rasterize

    t = rec.texture
    S = rec.image.shape[0]
    K = np.asarray(rec.intrinsics, dtype=np.float64).copy()
    K[:2] *= panel / S
    K[:2, 2] += (panel / S - 1) / 2
    v = torch.as_tensor(rec.camera_vertices()[t.vertex_index], dtype=torch.float32)
    face_id, bary = _rasterize(v, torch.as_tensor(t.faces), torch.as_tensor(K, dtype=torch.float32), panel, panel)
    face_id, bary = face_id.numpy(), bary.numpy()
    out = np.full((panel, panel, 3), 255.0)
    hit = face_id >= 0
    uv = (t.uv[t.faces[face_id[hit]]] * bary[hit][..., None]).sum(axis=1)
    size = t.image.shape[0]
    out[hit] = _bilinear(t.image, uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5)
    return out.astype(np.uint8)


def main() -> None:
    import zsw
    from zsw.infer.preview import render_mesh

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "images" / "texture.png")
    parser.add_argument("--panel", type=int, default=256)
    args = parser.parse_args()
    p = args.panel
    rows = []
    for name in PHOTOS:
        rec = zsw.reconstruct(ROOT / "examples" / name, faces=FACES, texture=1024)
        S = rec.image.shape[0]
        K = np.asarray(rec.intrinsics, dtype=np.float64).copy()
        K[:2] *= p / S
        K[:2, 2] += (p / S - 1) / 2
        colors = np.asarray(rec.mesh.visual.vertex_colors)[:, :3]
        vertex = render_mesh(rec.camera_vertices(), np.asarray(rec.mesh.faces), K, (p, p), vertex_colors=colors)
        photo = np.asarray(Image.fromarray(rec.image).resize((p, p), Image.Resampling.BICUBIC))
        white = np.full_like(colors, 255)  # the shading alone, to light the texture as the vertex colours are
        shade = render_mesh(rec.camera_vertices(), np.asarray(rec.mesh.faces), K, (p, p), vertex_colors=white)
        textured = (render_textured(rec, p) * (shade / 255.0)).round().astype(np.uint8)
        rows.append(np.concatenate([photo, vertex, textured], axis=1))
    from zsw.io import atomic_write

    with atomic_write(args.out) as fh:
        Image.fromarray(np.concatenate(rows, axis=0)).save(fh, format="PNG")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
