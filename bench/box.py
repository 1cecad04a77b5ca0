"""What a box around the object (``--box``) is worth on a procedural test set: each image
reconstructed as ``zsw eval`` reconstructs it by default (the packaged model, resolution 128,
``fast``, the CLI's defaults), without a box and with one -- the bounding box of the image's true
visible mask, widened on every side by ``--margin`` of its longer side, as a user would draw it --
and scored with ZeroShape's protocol (``zsw.eval.evaluate.score``, the same surface samples).

    python -m zsw.bench.box --data data/demo/test --out bench/results/box/test.md [--margin 0.1]

Writes the table (overall, per category, the paired change) and ``<out>.jsonl`` (per image).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def true_box(mask: np.ndarray, margin: float) -> tuple[float, float, float, float]:
    """The bounding box (x0, y0, x1, y1, pixel edges) of ``mask``'s pixels, widened on every side
    by ``margin`` of its longer side."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1.0, rows[0], rows[-1] + 1.0
    pad = margin * max(x1 - x0, y1 - y0)
    return float(x0 - pad), float(y0 - pad), float(x1 + pad), float(y1 + pad)


def run(data: Path, margin: float, limit: int | None = None, weights: str | None = None) -> list[dict]:
    """Per image: name, category, the box, and CD and F@0.05 without and with it."""
    from zsw.data.eval_sets import open_eval_set
    from zsw.eval.evaluate import mesh_points, sample_rng, score
    from zsw.infer.image import LoadedImage
    from zsw.infer.reconstruct import Reconstructor
    from zsw.infer.weights import open_backend, resolve_backend

    backend = open_backend(resolve_backend("auto", weights, None, "cpu", "auto"), weights, None, "cpu")[0]
    recon = Reconstructor(backend, frame="camera", color="none")  # zsw eval's reconstruction, its defaults
    samples = open_eval_set(data, "procedural")
    rows = []
    for i in range(min(limit or len(samples), len(samples))):
        s = samples[i]
        size = s.image.shape[0]
        image = LoadedImage(s.name, s.image, (size, size))
        box = true_box(s.mask, margin) if s.mask is not None and s.mask.any() else None
        row = {"name": s.name, "category": s.category, "rectangle": box}
        for arm, boxes in (("none", None), ("box", [box])):
            rec = recon([image], "object", None, boxes=boxes)[0]
            metrics = score(mesh_points(rec.mesh, 10000, sample_rng(0, s.name)), s.gt_points, "none")
            row[arm] = {"cd": metrics["cd"], "fscore@0.05": metrics["fscore@0.05"]}
        rows.append(row)
        print(f"{s.name}: CD {row['none']['cd']:.4f} -> {row['box']['cd']:.4f}", flush=True)
    return rows


def table(rows: list[dict], margin: float) -> str:
    """Markdown: CD and F@0.05 without and with the box, overall and per category, and the paired
    change of CD (mean +- standard error, images better / worse)."""

    def line(label: str, group: list[dict]) -> str:
        cd = np.array([[r["none"]["cd"], r["box"]["cd"]] for r in group])
        f = np.array([[r["none"]["fscore@0.05"], r["box"]["fscore@0.05"]] for r in group])
        d = cd[:, 1] - cd[:, 0]
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        return (
            f"| {label} | {len(group)} | {cd[:, 0].mean():.4f} / {f[:, 0].mean():.3f} | "
            f"{cd[:, 1].mean():.4f} / {f[:, 1].mean():.3f} | {d.mean():+.4f} +- {se:.4f} | "
            f"{int((d < 0).sum())} / {int((d > 0).sum())} |"
        )

    lines = [
        f"Box: the true visible mask's bounding box, widened by {margin:g} of its longer side on every side.",
        "",
        "| images | n | no box: CD / F@0.05 | box: CD / F@0.05 | CD change | better / worse |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        line("**all**", rows),
    ]
    for category in sorted({r["category"] for r in rows}):
        lines.append(line(category, [r for r in rows if r["category"] == category]))
    return "\n".join(lines) + "\n"


def main() -> None:
    from zsw.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a procedural test split (zsw synthesize procedural)")
    ap.add_argument("--out", required=True, help="markdown table to write (<out>.jsonl: per image)")
    ap.add_argument("--margin", type=float, default=0.1, help="box widening, fraction of its longer side")
    ap.add_argument("--limit", type=int, default=None, help="the first N images only")
    ap.add_argument("--weights", default=None, help="checkpoint (default: the packaged model)")
    args = ap.parse_args()
    rows = run(Path(args.data), args.margin, args.limit, args.weights)
    text = table(rows, args.margin)
    print(text)
    atomic_write_text(args.out, text)
    atomic_write_text(Path(args.out).with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
