"""How far off is ``--frame upright``? The angle between the object's up axis the model predicts and
the true one, against the camera's own up (what ``--frame gltf`` stands the mesh on).

    python -m zsw.bench.upright --data data/demo/test --out bench/results/upright/test
    python -m zsw.bench.upright --foreign --elevation=0,10 --out bench/results/upright/foreign-eye-level

Each view goes through the reconstruction as ``zsw reconstruct`` runs it (its defaults: framing,
the background's mask correction, test-time augmentation), without the grid: the up axis comes
from the encoder. The truth is the object frame's y axis in the camera frame -- a ``procedural``
set's ``camera_data/extr`` (:func:`zsw.train.up_head.up_views`) or the foreign renders' cameras
(``zsw.bench.foreign``, objects and a renderer zsw did not make). Per view ``model_deg`` and
``camera_deg``, and the elevation the camera looked down from (``true_elevation``;
``model_elevation``: the one the model's up implies). Writes
``<out>.jsonl`` and ``<out>.md``: median, mean and 90th percentile per category, and how often the
model's up is the closer one.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from zsw.infer.orient import CAMERA_UP


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    c = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def elevation_deg(up: np.ndarray) -> float:
    """How far a camera looks down on an object whose up axis is ``up`` (camera frame): the up
    axis leans towards the camera (-z) by that angle."""
    u = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    return math.degrees(math.asin(min(1.0, max(-1.0, -u[2]))))


def foreign_views(per_category: int, elevation: tuple[float, float]):
    """(name, category, image, true up) of :mod:`zsw.bench.foreign`'s renders."""
    from zsw.bench import foreign

    for category, name, seed in foreign.view_names(per_category):
        view = foreign.make_view(category, seed, elevation)
        yield name, category, view["image"], view["up"]


def measure(views, weights: str | None) -> list[dict]:
    from zsw.eval.jobs import EvalJobSettings
    from zsw.infer.image import load_image
    from zsw.infer.weights import open_backend, resolve_backend

    s = EvalJobSettings(format="folder", weights=weights)
    backend, label, _ = open_backend(resolve_backend(s.backend, s.weights, s.engine, s.device, s.precision),
                                     s.weights, s.engine, s.device)  # fmt: skip
    recon = s.reconstructor(backend, label)
    size = backend.config.pixel.image_size
    rows = []
    for name, category, image, true_up in views:
        rec = recon([load_image(image, size, name=name)], s.prompt, None, with_mesh=False)[0]
        if rec.up is None:
            raise SystemExit(f"{label}: the model predicts no up axis (its decoder has no axial queries)")
        row = {"name": name, "category": category, "model_deg": angle_deg(rec.up, true_up),
               "camera_deg": angle_deg(CAMERA_UP, true_up), "true_elevation": elevation_deg(true_up),
               "model_elevation": elevation_deg(rec.up)}  # fmt: skip
        rows.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


def summary(rows: list[dict]) -> list[str]:
    def stats(v: np.ndarray) -> str:
        return f"{np.median(v):.1f} | {v.mean():.1f} | {np.percentile(v, 90):.1f}"

    cats = sorted({r["category"] for r in rows})
    lines = ["Angle to the true up axis, degrees: the model's up (`--frame upright`) and the camera's (`gltf`).", "",
             "| category | n | model: median | mean | 90th pct. | camera: median | mean | 90th pct. | model closer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, group in [(c, [r for r in rows if r["category"] == c]) for c in cats] + [("**all**", rows)]:
        m = np.array([r["model_deg"] for r in group])
        c = np.array([r["camera_deg"] for r in group])
        lines.append(f"| {name} | {len(group)} | {stats(m)} | {stats(c)} | {np.mean(m < c):.0%} |")
    te = np.array([r["true_elevation"] for r in rows])
    me = np.array([r["model_elevation"] for r in rows])
    slope = np.polyfit(te, me, 1)[0] if np.ptp(te) > 0 else float("nan")
    lines += ["", f"Camera elevation {te.min():.0f} to {te.max():.0f} degrees; the model's implied elevation "
              f"{me.min():.0f} to {me.max():.0f} (slope {slope:.2f} against the truth, correlation "
              f"{np.corrcoef(te, me)[0, 1]:.2f})."]  # fmt: skip
    return lines


def main() -> None:
    import torch

    from zsw.bench._harness import write_rows_and_summary
    from zsw.synth.pipeline import elevation_range

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="a procedural set (zsw synthesize procedural ... --bake test)")
    src.add_argument("--foreign", action="store_true", help="zsw.bench.foreign's renders instead")
    ap.add_argument("--split", default="test")
    ap.add_argument("--per-category", type=int, default=5, help="foreign views per category")
    ap.add_argument("--elevation", default="10,40", help="LO,HI: the foreign cameras' elevation, degrees")
    ap.add_argument("--weights", default=None, help="checkpoint (default: the packaged model)")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    if args.foreign:
        elevation = elevation_range(args.elevation)
        views, title = foreign_views(args.per_category, elevation), f"foreign renders, elevation {args.elevation}"
    else:
        from zsw.train.up_head import up_views

        views, title = up_views(args.data, args.split), f"{args.data} ({args.split})"
    rows = measure(views, args.weights)
    if not rows:
        raise SystemExit("no views")
    lines = [f"# Up axis: {title}, {len(rows)} views, weights {args.weights or 'packaged'}", ""] + summary(rows)
    write_rows_and_summary(args.out, rows, lines)


if __name__ == "__main__":
    main()
