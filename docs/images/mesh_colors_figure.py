"""Regenerate docs/images/mesh-colors.png: three meshes rendered by `zsw synthesize meshes`, in their own
colours (`--appearance mesh`, top) and in a random colour (`--appearance random`, bottom): a can
wrapped in a photo (a glTF base-colour texture), a torus with vertex colours (PLY), a chair of
five parts with a material colour each (glTF base-colour factors).

    python docs/images/mesh_colors_figure.py [-o docs/images/mesh-colors.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def meshes(folder: Path) -> None:
    import trimesh
    from skimage import data
    from trimesh.visual.material import PBRMaterial

    # a can: the astronaut photo wrapped around a cylinder (u around, v up), the caps on a grey
    # strip at the top of the texture
    can = trimesh.creation.cylinder(0.3, 0.9, sections=96)
    can.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # axis along y
    can.unmerge_vertices()
    v = can.vertices
    u = (np.arctan2(v[:, 0], v[:, 2]) / (2 * np.pi) + 0.5) % 1.0
    # a side triangle straddling the seam takes its corners from one side of it
    corners = u[can.faces]
    wrap = corners.max(1) - corners.min(1) > 0.5
    fixed = np.where(wrap[:, None] & (corners < 0.5), corners + 1.0, corners)
    u = np.zeros(len(v))
    u[can.faces.reshape(-1)] = fixed.reshape(-1)
    uv = np.stack([u, (v[:, 1] / 0.9 + 0.5) * 0.9], axis=1)
    caps = np.abs(can.face_normals[:, 1]) > 0.5
    uv[can.faces[caps].reshape(-1), 1] = 0.97
    texture = np.full((288, 512, 3), 150, np.uint8)
    texture[32:] = np.asarray(Image.fromarray(data.astronaut()).resize((512, 256)))
    photo = Image.fromarray(texture)
    can.visual = trimesh.visual.TextureVisuals(uv=uv, material=PBRMaterial(baseColorTexture=photo))
    can.export(folder / "can.glb")

    # a torus coloured by the angle around its ring, as a scanner writes vertex colours
    torus = trimesh.creation.torus(0.32, 0.12, major_sections=64, minor_sections=24)
    angle = np.arctan2(torus.vertices[:, 1], torus.vertices[:, 0]) / (2 * np.pi) + 0.5
    torus.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # lying flat
    import colorsys

    rgb = np.array([colorsys.hsv_to_rgb(a, 0.8, 0.95) for a in angle])
    torus.visual.vertex_colors = np.concatenate([rgb * 255, np.full((len(rgb), 1), 255)], axis=1).astype(np.uint8)
    torus.export(folder / "torus.ply")

    # a chair: a seat, a back and four legs, each part with its material's base colour
    scene = trimesh.Scene()
    wood, dark, cushion = [186, 122, 64, 255], [60, 45, 35, 255], [40, 90, 170, 255]
    parts = [((0.5, 0.06, 0.5), (0, 0.45, 0), cushion), ((0.5, 0.45, 0.06), (0, 0.7, -0.22), wood)]
    parts += [((0.05, 0.45, 0.05), (x, 0.2, z), dark) for x in (-0.22, 0.22) for z in (-0.22, 0.22)]
    for extents, centre, colour in parts:
        box = trimesh.creation.box(extents, trimesh.transformations.translation_matrix(centre))
        box.visual = trimesh.visual.TextureVisuals(material=PBRMaterial(baseColorFactor=colour))
        scene.add_geometry(box)
    scene.export(folder / "chair.glb")


def render(folder: Path, out: Path, appearance: str) -> list[np.ndarray]:
    from zsw.report import Reporter
    from zsw.synth.meshes import generate_meshes
    from zsw.synth.pipeline import mesh_config

    cfg = mesh_config("1,0,0", None, "20,35", views=1, seed=3, appearance=appearance, grid=160)
    generate_meshes(folder, out, cfg, workers=1, reporter=Reporter())
    names = ("can", "torus", "chair")
    folder = out / "images_processed" / "object"
    return [np.asarray(Image.open(folder / f"object_{n}_00.png").convert("RGB")) for n in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "images" / "mesh-colors.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "meshes").mkdir()
        meshes(tmp / "meshes")
        rows = [render(tmp / "meshes", tmp / appearance, appearance) for appearance in ("mesh", "random")]
    sheet = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    Image.fromarray(sheet).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
