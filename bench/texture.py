"""What ``--texture`` keeps of the photo that vertex colours lose, and what it costs.

The packaged model reconstructs the bundled photos (``examples/*.png``) at resolution 128,
``fast``, with the default smoothing, decimated to each of ``--faces``; each mesh is then coloured
(vertex colours, :mod:`zsw.infer.color`) and baked into a ``--size`` atlas
(:mod:`zsw.infer.texture`). On the faces the photo sees (all three vertices seen), three random
points per face are looked up both ways -- the texture at the point's uv, and the blend of the
face's vertex colours -- and compared with the photo's bilinear colour at the point's projection
(mean absolute RGB difference, 0-255): how much of the photo's detail the file keeps where the
photo shows the object. Also reported: the seconds the bake takes (median over the photos).

    python -m zsw.bench.texture [--faces 2000 5000 20000] [--size 1024] [--out bench/results/texture.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def measure(paths: list[Path], budgets=(2000, 5000, 20000), size: int = 1024, seed: int = 0) -> list[dict]:
    """One row per face budget: photo-to-file colour errors of the texture and the vertex colours,
    and the bake's seconds."""
    import zsw
    from zsw.infer.color import _bilinear, photo_colors, project
    from zsw.infer.texture import bake_texture

    rows = []
    for budget in budgets:
        tex_err, vc_err, seconds, faces = [], [], [], []
        for path in paths:
            rec = zsw.reconstruct(path, faces=budget, color="none", frame="camera")
            v, f = rec.camera_vertices(), np.asarray(rec.mesh.faces)
            if len(f) == 0:
                continue
            colors = photo_colors(v, f, rec.image, rec.intrinsics, rec.visible_mask)
            t0 = time.perf_counter()
            tex = bake_texture(v, f, rec.image, rec.intrinsics, rec.visible_mask, colors.rgb, colors.seen, size)
            seconds.append(time.perf_counter() - t0)
            faces.append(len(f))
            shown = colors.seen[tex.vertex_index][tex.faces].all(axis=1)
            if not shown.any():
                continue
            rng = np.random.default_rng(seed)
            corners = tex.faces[shown]  # [F, 3] atlas vertices
            xyz, uvs = v[tex.vertex_index][corners], tex.uv[corners]  # [F, 3, 3], [F, 3, 2]
            rgb = colors.rgb[tex.vertex_index][corners].astype(np.float64)  # [F, 3, 3]
            for w in rng.dirichlet(np.ones(3), size=(3, len(corners)))[..., None]:  # [F, 3, 1] each
                p = project((xyz * w).sum(axis=1), rec.intrinsics, rec.image.shape[:2])
                photo = _bilinear(rec.image, p.u, p.v)
                uv = (uvs * w).sum(axis=1)
                texel = _bilinear(tex.image, uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5)
                blend = (rgb * w).sum(axis=1)
                tex_err.append(np.abs(texel - photo).mean(axis=1))
                vc_err.append(np.abs(blend - photo).mean(axis=1))
        t, c = np.concatenate(tex_err), np.concatenate(vc_err)
        rows.append({
            "faces": budget, "meshes": len(seconds), "median_faces": int(np.median(faces)),
            "texture_mean": float(t.mean()), "texture_p90": float(np.percentile(t, 90)),
            "vertex_mean": float(c.mean()), "vertex_p90": float(np.percentile(c, 90)),
            "seconds": statistics.median(seconds), "points": len(t),
        })  # fmt: skip
    return rows


def markdown(rows: list[dict], size: int, photos: int) -> str:
    import torch

    from zsw.bench._harness import environment

    env = environment("cpu")
    threads = torch.get_num_threads()
    lines = [
        "# `--texture`: the photo in the file, by face budget",
        "",
        f"`python -m zsw.bench.texture`: the {photos} bundled photos, the packaged model, resolution 128, `fast`, "
        f"the default smoothing, decimated to `--faces`, baked into a {size} x {size} atlas. Colour error on the "
        "faces the photo sees (mean absolute RGB difference to the photo at three random points per face; 0-255). "
        f"Host: {env.gpu.removeprefix('cpu: ')}, {threads} thread{'s' if threads > 1 else ''}, torch {env.torch}, "
        f"zsw {env.git_sha}.",
        "",
        "| --faces | meshes (median faces) | points | texture: mean / 90th pct | vertex colours: mean / 90th pct "
        "| bake (s, median) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['faces']:,} | {r['meshes']} ({r['median_faces']:,}) | {r['points']:,} "
            f"| {r['texture_mean']:.1f} / {r['texture_p90']:.1f} | {r['vertex_mean']:.1f} / {r['vertex_p90']:.1f} "
            f"| {r['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[2000, 5000, 20000])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None, help="write the table here too (markdown)")
    args = parser.parse_args(argv)
    paths = sorted((REPO / "examples").glob("*.png"))
    text = markdown(measure(paths, tuple(args.faces), args.size), args.size, len(paths))
    print(text)
    if args.out is not None:
        from zsw.io import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
