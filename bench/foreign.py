"""Objects and renders that zsw's synthesiser did not make: how the model does on them against the
fitted sphere and the ellipsoid with each object's true extents.

    python -m zsw.bench.foreign --out bench/results/foreign/zsw-demo-v6 [--weights W] [--per-category 5] \
        [--elevation=0,10] [--aspect 4:3]
    python -m zsw.bench.foreign --export data/foreign   # the same views as photos and meshes, for
    zsw eval --data data/foreign --format folder --out foreign.json   # any model, through zsw eval

The training data comes from one renderer (``zsw.synth``: SDF ray marching, ambient occlusion,
soft shadows, Blinn-Phong). Here the objects are built another way -- trimesh's primitives (box,
cylinder, cone, capsule, torus, ellipsoid) and, for shapes with concave corners (an L-shaped block,
a four-legged table), marching cubes of a union of boxes -- and drawn by another (cameras 10-40
degrees above the object's horizon unless ``--elevation`` says otherwise; 0-10 is eye level,
which the training's 5-65 degrees barely reach): the z-buffer rasteriser of
:mod:`zsw.infer.preview` (two-sided Lambert with a fill light, no shadows), composited over a
background (a photo crop, a gradient or plain white, like a product shot), a third of them partly
hidden by a box or a ball in front; square, or with ``--aspect`` as landscape or portrait photos
(the shorter side 224 px, the object framed in it alike). The backgrounds come from the same pool
as the training's (``zsw.data.backgrounds``); everything else is new to the model.

Each view is scored as ``zsw eval`` scores it (``--reframe auto``, crumbs dropped, 10,000 points,
ZeroShape's normalisation), and so are the two baselines: a sphere fitted to the model's own
visible surface and the ellipsoid spanning the object's true extents along the camera axes.
Writes ``<out>.md`` (per category) and ``<out>.json`` (per view too).
"""

from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path

import numpy as np

CATEGORIES = ("box", "cylinder", "cone", "capsule", "torus", "ellipsoid", "lshape", "table")
SIZE = 224
ELEVATION = (10.0, 40.0)  # degrees above the object's horizon, drawn uniformly
FILL = (0.7, 0.85)  # the object's longer side (at its front) over the photo's shorter side, drawn uniformly


def _boxes_mesh(boxes: list[tuple[np.ndarray, np.ndarray]], resolution: int = 96):
    """The union of axis-aligned boxes ``(center [3], half extents [3])`` as one watertight mesh
    (marching cubes of the union's signed distance: no faces inside, unlike a concatenation)."""
    import trimesh
    from skimage.measure import marching_cubes

    lo = np.min([c - h for c, h in boxes], 0) - 0.05
    hi = np.max([c + h for c, h in boxes], 0) + 0.05
    step = (hi - lo).max() / resolution
    axes = [np.arange(lo[i], hi[i] + step, step) for i in range(3)]
    p = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    sdf = np.full(p.shape[:3], np.inf)
    for c, h in boxes:
        q = np.abs(p - c) - h
        box = np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)
        sdf = np.minimum(sdf, box)
    verts, faces, _, _ = marching_cubes(sdf, 0.0, spacing=(step, step, step))
    return trimesh.Trimesh(verts + lo, faces, process=True)  # outward faces: skimage winds them so for an SDF


def make_object(category: str, rng: np.random.Generator):
    """A watertight mesh of ``category`` in an object frame with y up, its longest side 1."""
    import trimesh

    u = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    if category == "box":
        mesh = trimesh.creation.box(extents=[u(0.4, 1), u(0.4, 1), u(0.4, 1)])
    elif category == "cylinder":
        mesh = trimesh.creation.cylinder(radius=u(0.2, 0.5), height=u(0.4, 1.2), sections=64)
    elif category == "cone":
        mesh = trimesh.creation.cone(radius=u(0.25, 0.5), height=u(0.5, 1.2), sections=64)
        mesh.apply_translation([0, 0, -mesh.bounds[:, 2].mean()])
    elif category == "capsule":
        mesh = trimesh.creation.capsule(height=u(0.3, 1.0), radius=u(0.15, 0.35), count=[32, 32])
    elif category == "torus":
        mesh = trimesh.creation.torus(major_radius=0.5, minor_radius=u(0.12, 0.25), major_sections=64,
                                      minor_sections=32)  # fmt: skip
    elif category == "ellipsoid":
        mesh = trimesh.creation.icosphere(subdivisions=4)
        mesh.apply_scale([u(0.3, 1), u(0.3, 1), u(0.3, 1)])
    elif category == "lshape":
        a, b, t = u(0.6, 1), u(0.4, 0.9), u(0.15, 0.35)
        depth = u(0.2, 0.6)
        mesh = _boxes_mesh([(np.array([a / 2, t / 2, 0]), np.array([a / 2, t / 2, depth / 2])),
                            (np.array([t / 2, b / 2, 0]), np.array([t / 2, b / 2, depth / 2]))])  # fmt: skip
    elif category == "table":
        w, d, h, top, leg = u(0.7, 1), u(0.4, 0.8), u(0.4, 0.8), u(0.04, 0.1), u(0.04, 0.08)
        boxes = [(np.array([0, h - top / 2, 0]), np.array([w / 2, top / 2, d / 2]))]
        for sx in (-1, 1):
            for sz in (-1, 1):
                c = np.array([sx * (w / 2 - leg), (h - top) / 2, sz * (d / 2 - leg)])
                boxes.append((c, np.array([leg / 2, (h - top) / 2, leg / 2])))
        mesh = _boxes_mesh(boxes)
    else:
        raise ValueError(f"unknown category {category!r}; choose from {', '.join(CATEGORIES)}")
    if category in ("cylinder", "cone", "capsule"):  # trimesh builds these along z: stand them up
        mesh.apply_transform(trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0]))
    mesh.apply_translation(-mesh.bounds.mean(0))
    mesh.apply_scale(1.0 / mesh.extents.max())
    return mesh


def _camera_rotation(yaw: float, elevation: float) -> np.ndarray:  # [3, 3] object (y up) -> camera (y down)
    cy, sy = math.cos(yaw), math.sin(yaw)
    turn = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    flip = np.diag([1.0, -1.0, 1.0])
    ce, se = math.cos(elevation), math.sin(elevation)
    tilt = np.array([[1, 0, 0], [0, ce, -se], [0, se, ce]])  # the top turns towards a camera above
    return tilt @ flip @ turn


@functools.cache
def _backgrounds(kind: str):
    """One source per kind, kept: the photo kind reads scikit-image's sample photos once."""
    from zsw.data.backgrounds import Backgrounds

    return Backgrounds((kind,))


def photo_size(aspect: float) -> tuple[int, int]:
    """(height, width) of a view whose width is ``aspect`` times its height, the shorter side
    :data:`SIZE` (1: the square the model takes)."""
    if aspect >= 1:
        return SIZE, int(round(SIZE * aspect))
    return int(round(SIZE / aspect)), SIZE


def parse_aspect(text: str) -> float:
    """``W:H`` (``4:3``) or a number, as a positive width over height; SystemExit naming it otherwise."""
    try:
        w, _, h = text.partition(":")
        value = float(w) / float(h) if h else float(w)
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    if not (math.isfinite(value) and 0.2 <= value <= 5):
        raise SystemExit(f"--aspect must be W:H or a number between 0.2 and 5, got {text!r}")
    return value


def make_view(
    category: str,
    seed: int,
    elevation: tuple[float, float] = ELEVATION,
    aspect: float = 1.0,
    fill: tuple[float, float] = FILL,
) -> dict:
    """One view: ``image`` [H, W, 3] uint8 (224 x 224, or with ``aspect`` = W / H the shorter side
    224: a landscape or portrait photo, the object framed in its shorter side alike), ``mask``
    (the object's visible pixels), ``K``, ``gt`` (10,000 points on the object, camera frame),
    ``up`` (the object's up axis, camera frame) and what was drawn; the camera looks down on the
    object at an ``elevation`` drawn uniformly from the range (degrees), from a distance where the
    object's longer side, at the depth of its nearest point, spans a ``fill`` drawn from the range
    of the shorter side (its image is smaller: the default 0.7-0.85 draws it at ~0.55-0.75; from
    ~1.5 on, the frame cuts it)."""
    import trimesh

    from zsw.infer.preview import render_mesh

    H, W = photo_size(aspect)
    rng = np.random.default_rng(seed)
    obj = make_object(category, rng)
    R = _camera_rotation(rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(*elevation)))
    v = obj.vertices @ R.T
    fov = math.radians(rng.uniform(35, 55))  # across the shorter side
    f = SIZE / 2 / math.tan(fov / 2)
    K = np.array([[f, 0, W / 2 - 0.5], [0, f, H / 2 - 0.5], [0, 0, 1.0]])
    extent = (v.max(0) - v.min(0))[:2].max()
    share = rng.uniform(*fill)  # the object's longer side in the frame, as photos are cropped
    depth = f * extent / (share * SIZE) + (v[:, 2].max() - v[:, 2].min()) / 2
    v = v - (v.max(0) + v.min(0)) / 2 + np.array([0, 0, depth])
    obj = trimesh.Trimesh(v, obj.faces, process=False)
    albedo = rng.uniform(0.15, 0.95, 3)
    meshes = [(obj, albedo)]
    occluded = rng.random() < 1 / 3
    if occluded:  # a box or a ball between the camera and the object, over part of it
        occ = trimesh.creation.box(extents=[1, 1, 1]) if rng.random() < 0.5 else trimesh.creation.icosphere(3)
        occ.apply_scale(extent * rng.uniform(0.25, 0.45) / occ.extents.max())
        side = rng.uniform(0.1, 0.3, 2) * extent * rng.choice([-1, 1], 2)
        front = v[:, 2].min() - occ.extents.max()
        occ.apply_translation([side[0], side[1], front])
        meshes.append((occ, rng.uniform(0.15, 0.95, 3)))
    verts = np.concatenate([m.vertices for m, _ in meshes])
    offsets = np.cumsum([0] + [len(m.vertices) for m, _ in meshes])
    faces = np.concatenate([m.faces + o for (m, _), o in zip(meshes, offsets)])
    colors = np.concatenate([np.tile(c, (len(m.vertices), 1)) for m, c in meshes])
    light = (rng.uniform(-1, 1), -rng.uniform(0.2, 1), -rng.uniform(0.3, 1))
    kw = dict(vertex_colors=colors, light=light, supersample=3)
    on_white = render_mesh(verts, faces, K, (H, W), background=(1, 1, 1), **kw).astype(np.float32)
    on_black = render_mesh(verts, faces, K, (H, W), background=(0, 0, 0), **kw).astype(np.float32)
    alpha = 1 - (on_white - on_black).mean(-1, keepdims=True) / 255
    kind = rng.choice(["photo", "gradient", "white"], p=[0.5, 0.25, 0.25])
    if kind == "white":
        background = np.full((H, W, 3), 255, np.float32)
    else:  # a square of the longer side, its centre kept
        big = _backgrounds(str(kind)).sample(rng, max(H, W)).astype(np.float32)
        top, left = (big.shape[0] - H) // 2, (big.shape[1] - W) // 2
        background = big[top : top + H, left : left + W]
    image = np.clip(on_black + (1 - alpha) * background + 0.5, 0, 255).astype(np.uint8)
    alone = render_mesh(obj.vertices, obj.faces, K, (H, W), background=(0, 0, 0), vertex_colors=np.ones(
        (len(obj.vertices), 3)), light=light, supersample=1)  # fmt: skip
    gt = np.asarray(trimesh.sample.sample_surface(obj, 10000, seed=seed)[0], np.float32)
    return {"image": image, "K": K, "gt": gt, "alpha": alpha[..., 0], "object_pixels": alone.max(-1) > 0,
            "occluded": bool(occluded), "background": str(kind), "mesh": obj, "up": R[:, 1]}  # fmt: skip


def view_names(per_category: int, seed: int = 31):
    """``(category, name, seed of make_view)`` of every view, as :func:`score_views` draws them."""
    for c, category in enumerate(CATEGORIES):
        for i in range(per_category):
            yield category, f"{category}_{i:02d}", seed * 1000 + c * 100 + i


def export_views(
    folder: Path,
    per_category: int,
    seed: int = 31,
    elevation: tuple[float, float] = ELEVATION,
    aspect: float = 1.0,
    fill: tuple[float, float] = FILL,
) -> int:
    """Write every view as ``zsw eval --format folder`` reads it: ``<category>/<name>.png`` beside
    ``<name>.ply``, the object's mesh in glTF's camera frame (OpenCV's with y and z negated).
    Returns the number of views."""
    from PIL import Image

    n = 0
    for category, name, view_seed in view_names(per_category, seed):
        view = make_view(category, view_seed, elevation, aspect, fill)
        (folder / category).mkdir(parents=True, exist_ok=True)
        Image.fromarray(view["image"]).save(folder / category / f"{name}.png")
        mesh = view["mesh"].copy()
        mesh.vertices = mesh.vertices * np.array([1.0, -1.0, -1.0])
        mesh.export(folder / category / f"{name}.ply")
        n += 1
    return n


def score_views(
    backend,
    per_category: int,
    resolution: int,
    seed: int = 31,
    background: str = "auto",
    elevation: tuple[float, float] = ELEVATION,
    tta: str = "auto",
    smooth: int | None = None,
    aspect: float = 1.0,
    fill: tuple[float, float] = FILL,
    cutout: str = "auto",
) -> list[dict]:
    """Reconstruct and score every view (and the baselines on it), one row each; ``background``,
    ``tta`` and ``smooth``: the reconstruction's ``--background``, ``--tta`` and ``--smooth``
    settings (``smooth`` None: the default); ``elevation``: the cameras' range (degrees);
    ``aspect``: the photos' width over height; ``fill``: how much of them the object spans (:func:`make_view`);
    ``cutout``: the reconstruction's ``--cutout``."""
    from zsw.eval.evaluate import baseline_points, mesh_points, sample_rng, score
    from zsw.infer.cutout import open_cutout
    from zsw.infer.image import load_image
    from zsw.infer.reconstruct import Reconstructor
    from zsw.infer.settings import SMOOTH, GridSettings

    recon = Reconstructor(backend, grid=GridSettings(resolution), frame="camera", color="none", background=background,
                          tta=tta, smooth=SMOOTH if smooth is None else smooth)  # fmt: skip
    remover = open_cutout(cutout)
    rows = []
    for category, name, view_seed in view_names(per_category, seed):
        view = make_view(category, view_seed, elevation, aspect, fill)
        rec = recon([load_image(view["image"], backend.config.pixel.image_size, name=name, cutout=remover)])[0]
        rng = sample_rng(0, name)
        row = {"name": name, "category": category, "occluded": view["occluded"], "background": view["background"]}
        row["model"] = score(mesh_points(rec.mesh, 10000, rng), view["gt"])["cd"]
        for kind in ("sphere", "ellipsoid"):
            pts = baseline_points(kind, rec.visible_points, view["gt"], 10000, sample_rng(0, name))
            row[kind] = score(pts, view["gt"])["cd"]
        rows.append(row)
        print(f"{name}: CD model {row['model']:.4f}, sphere {row['sphere']:.4f}, ellipsoid {row['ellipsoid']:.4f}")
    return rows


def summary_markdown(rows: list[dict], title: str) -> str:
    cols = ("model", "sphere", "ellipsoid")
    lines = [f"# {title}", "", "CD (ZeroShape's normalisation; lower is better)", "",
             "| category | n | model | fitted sphere | true-size ellipsoid |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    groups = [(c, [r for r in rows if r["category"] == c]) for c in CATEGORIES]
    groups += [("**all**", rows), ("occluded", [r for r in rows if r["occluded"]])]
    groups += [
        (f"on {kind}", [r for r in rows if r["background"] == kind]) for kind in sorted({r["background"] for r in rows})
    ]
    for name, rs in groups:
        if rs:
            means = {k: float(np.mean([r[k] for r in rs])) for k in cols}
            best = min(means.values())
            cells = [f"**{means[k]:.4f}**" if means[k] == best else f"{means[k]:.4f}" for k in cols]
            lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from zsw.bench._harness import output_path
    from zsw.errors import ConfigError
    from zsw.infer.settings import SMOOTH
    from zsw.infer.tta import resolve_tta
    from zsw.infer.weights import open_backend
    from zsw.io import atomic_write_json, atomic_write_text
    from zsw.synth.pipeline import elevation_range

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="output path without suffix")
    ap.add_argument("--export", type=Path, help="write the views for `zsw eval --format folder` instead")
    ap.add_argument("--weights", default=None, help="checkpoint (default: the packaged model)")
    ap.add_argument("--per-category", type=int, default=5)
    ap.add_argument("--resolution", type=int, default=128, help="grid cells per axis (fast extraction)")
    ap.add_argument("--background", default="auto", help="zsw reconstruct's --background (auto or never)")
    ap.add_argument("--cutout", default="auto", help="zsw reconstruct's --cutout (auto, none, grabcut, rembg, ...)")
    ap.add_argument("--tta", default="auto", help="zsw reconstruct's --tta (auto, flip, flip-pixel or none)")
    ap.add_argument("--smooth", type=int, default=SMOOTH, help="zsw reconstruct's --smooth (passes)")
    ap.add_argument(
        "--elevation",
        default="10,40",
        help="LO,HI: the cameras' elevation above the object's horizon, degrees (--elevation=-10,15 for a negative LO)",
    )
    ap.add_argument(
        "--aspect",
        default="1",
        help="the photos' width:height (4:3 landscape, 3:4 portrait, 16:9; default 1, the model's square), "
        "the shorter side 224 px and the object framed in it",
    )
    ap.add_argument(
        "--fill",
        default="0.7,0.85",
        help="LO,HI: the object's longer side, at its nearest point's depth, over the photo's shorter side "
        "(its image is smaller; from ~1.5 on, close-ups the frame cuts)",
    )
    args = ap.parse_args()
    try:
        lo, hi = (float(v) for v in args.fill.split(","))
    except ValueError:
        lo = hi = float("nan")
    if not (0.05 <= lo <= hi <= 3.0):
        raise SystemExit(f"--fill must be LO,HI with 0.05 <= LO <= HI <= 3, got {args.fill!r}")
    fill = (lo, hi)
    try:  # the synthesiser's own option and rule (-85 to 85 degrees)
        elevation = elevation_range(args.elevation)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    aspect = parse_aspect(args.aspect)
    if args.export is not None:
        n = export_views(args.export, args.per_category, elevation=elevation, aspect=aspect, fill=fill)
        print(f"wrote {n} views to {args.export}: zsw eval --data {args.export} --format folder --out OUT.json")
        return
    if args.out is None:
        raise SystemExit("--out is required (or --export DIR)")

    backend, label, _ = open_backend("torch", args.weights, None, "cpu")
    try:
        tta = resolve_tta(args.tta, backend.device)  # recorded as it resolved (auto: flip-pixel on the CPU)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    rows = score_views(backend, args.per_category, args.resolution, background=args.background, elevation=elevation,
                       tta=tta, smooth=args.smooth, aspect=aspect, fill=fill, cutout=args.cutout)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (
        f"Objects and renders zsw did not make: {label}, resolution {args.resolution}, --background "
        f"{args.background}, --tta {tta}, --smooth {args.smooth}, elevation {elevation[0]:g}-{elevation[1]:g} degrees, "
        + (f"photos {args.aspect} ({' x '.join(map(str, photo_size(aspect)[::-1]))} px), " if aspect != 1 else "")
        + (f"the object at {fill[0]:g}-{fill[1]:g} of the shorter side, " if fill != FILL else "")
        + f"{len(rows)} views"
    )
    record = {"weights": label, "resolution": args.resolution, "elevation": elevation, "tta": tta,
              "smooth": args.smooth, "aspect": aspect, "fill": fill, "rows": rows}  # fmt: skip
    atomic_write_json(output_path(out, ".json"), record)
    atomic_write_text(output_path(out, ".md"), summary_markdown(rows, title))


if __name__ == "__main__":
    main()
