"""How much of a reconstruction's colour comes from the wrong thing -- the background or an
occluder instead of the object -- on procedural test images whose true masks are known.

Each view is reconstructed once (the packaged model, ``zsw reconstruct``'s defaults, no colours);
every setting of :func:`zsw.infer.color.photo_colors` then colours the same mesh. A vertex counts
as *wrong* when its colour is nearer (RGB, by more than ``--margin``) to a pixel of the background
or an occluder than to any pixel of the object: the true visible mask (``visible_masks/`` of a
baked set; ``masks/`` holds the whole object, occluded parts included) shrunk by one pixel gives
the object's colours, the rest of the photo, one pixel away from it, the others'. Reported per
setting: the share of wrong vertices (mean over views, and over the vertices the photo does not
show), and the mean RGB distance of a vertex colour to the nearest object colour.

    python -m zsw.bench.vertex_colors --data data/demo/test --out bench/results/vertex-colors.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# (label, photo_colors keyword arguments); the first is the old rule, the default is marked
SETTINGS = [
    ("nearest seen vertex (before)", {"erode": 0, "blur": 0}),
    ("mask rim off (erode 1)", {"erode": 1, "blur": 0}),
    ("blurred photo behind the object (blur 4)", {"erode": 0, "blur": 4.0}),
    ("both: erode 1, blur 4 (default)", {}),
    ("erode 1, blur 2", {"erode": 1, "blur": 2.0}),
    ("erode 1, blur 8", {"erode": 1, "blur": 8.0}),
    ("erode 2, blur 4", {"erode": 2, "blur": 4.0}),
    ("erode 2, blur 8", {"erode": 2, "blur": 8.0}),
]


def palette_distances(photo: np.ndarray, object_mask: np.ndarray, colors: np.ndarray, limit: int = 4000):
    """RGB distance of each colour ``[V, 3]`` to the nearest object pixel and to the nearest other
    pixel (the object's rim of one pixel belongs to neither)."""
    from scipy.ndimage import binary_dilation, binary_erosion
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)

    def tree(pixels: np.ndarray):
        pixels = np.unique(pixels.reshape(-1, 3), axis=0).astype(np.float32)
        if len(pixels) > limit:
            pixels = pixels[rng.choice(len(pixels), limit, replace=False)]
        return cKDTree(pixels)

    inner = binary_erosion(object_mask, iterations=1)
    outer = ~binary_dilation(object_mask, iterations=1)
    c = colors.astype(np.float32)
    d_obj = tree(photo[inner if inner.any() else object_mask]).query(c)[0]
    d_other = tree(photo[outer]).query(c)[0] if outer.any() else np.full(len(c), np.inf)
    return d_obj, d_other


def main() -> None:
    import zsw
    from zsw.data.layout import ZeroShapeLayout
    from zsw.infer.color import photo_colors
    from zsw.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="procedural dataset with masks (zsw synthesize ... --bake test)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-per-category", type=int, default=100)
    ap.add_argument("--margin", type=float, default=10.0, help="RGB units a wrong colour must be nearer by")
    ap.add_argument("--weights", default=None, help="checkpoint (default: the packaged model)")
    ap.add_argument("--out", required=True, help="markdown file")
    args = ap.parse_args()

    layout = ZeroShapeLayout(args.data)
    samples = [sid for cat in layout.categories() for sid in layout.read_list(cat, args.split)[: args.max_per_category]]
    if not samples:
        ap.error(f"no {args.split} lists in {layout.root / 'lists'}")
    wrong = {label: [] for label, _ in SETTINGS}
    wrong_hidden = {label: [] for label, _ in SETTINGS}
    dist = {label: [] for label, _ in SETTINGS}
    for sid in samples:
        rec = zsw.reconstruct(layout.image(sid), args.weights, color="none")
        if len(rec.mesh.faces) == 0:
            continue
        truth = layout.read_mask(layout.visible_mask(sid) if layout.visible_mask(sid).is_file() else layout.mask(sid))
        cam, faces = rec.camera_vertices(), np.asarray(rec.mesh.faces)
        for label, kwargs in SETTINGS:
            col = photo_colors(cam, faces, rec.image, rec.intrinsics, rec.visible_mask, **kwargs)
            d_obj, d_other = palette_distances(rec.image, truth, col.rgb)
            bad = d_other + args.margin < d_obj
            wrong[label].append(bad.mean())
            if (~col.seen).any():
                wrong_hidden[label].append(bad[~col.seen].mean())
            dist[label].append(d_obj.mean())
        print(f"{sid.category}/{sid.name}: " + ", ".join(f"{wrong[lb][-1]:.3f}" for lb, _ in SETTINGS), flush=True)

    lines = [
        "# Vertex colours: how much comes from the background or an occluder",
        "",
        f"`python -m zsw.bench.vertex_colors --data {args.data}`: {len(wrong[SETTINGS[0][0]])} views "
        f"({args.split} split), the packaged model, `zsw reconstruct`'s defaults. A vertex is *wrong* when "
        f"its colour is nearer (by > {args.margin:g} RGB units) to a background or occluder pixel than to "
        "any object pixel (true masks). Means over views.",
        "",
        "| setting | wrong vertices | wrong among the unseen | RGB distance to the object's colours |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, _ in SETTINGS:
        lines.append(
            f"| {label} | {100 * np.mean(wrong[label]):.1f} % | {100 * np.mean(wrong_hidden[label]):.1f} % "
            f"| {np.mean(dist[label]):.1f} |"
        )
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
