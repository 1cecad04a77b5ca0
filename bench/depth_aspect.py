"""Is the reconstruction too flat? The depth-to-width aspect of a model's meshes against the truth's,
and what stretching the meshes along the camera's depth axis would buy.

    python -m zsw.bench.depth_aspect --data data/demo/test --out bench/results/depth-aspect/test
    python -m zsw.bench.depth_aspect --data data/foreign --format folder --out .../foreign

Each view is reconstructed as ``zsw eval`` reconstructs it (its defaults: ``fast`` at 128, crumbs
dropped, smoothing, carving; camera frame) and sampled with 10,000 points. Per view:

* ``log_aspect_pred`` / ``log_aspect_true``: log of the depth (z) extent over the larger x/y
  extent, extents between the 1st and 99th percentiles of each cloud;
* ``cd`` / ``f``: ZeroShape's metrics (``zsw.eval.evaluate.score``);
* ``cd@xS``: the same with the predicted cloud's z stretched by S (``--stretch``; the metric centres
  and scales each cloud by its x/y extent, so the centre of the stretch does not matter);
* ``cd@true``: stretched to the true aspect, view by view (an oracle: what no calibration can
  exceed).

Writes ``<out>.jsonl`` (per view) and ``<out>.md``: the aspects' bias, spread, correlation and
regression slope, and the stretches' CD and F@0.05 with paired differences against no stretch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def log_aspect(points: np.ndarray) -> float:  # [N, 3] camera frame -> log(z extent / max(x, y extent))
    lo, hi = np.percentile(points, 1, axis=0), np.percentile(points, 99, axis=0)
    e = np.maximum(hi - lo, 1e-12)
    return float(np.log(e[2] / max(e[0], e[1])))


def stretched(points: np.ndarray, factor: float) -> np.ndarray:
    out = np.array(points, dtype=np.float64)
    out[:, 2] *= factor
    return out


def views(data: Path, fmt: str, split: str | None, weights: str | None):
    """(sample, predicted points [10k, 3], true points) for every view, reconstructed as zsw eval does."""
    from zsw.data.eval_sets import open_eval_set
    from zsw.eval.evaluate import _model_input, mesh_points, sample_rng
    from zsw.eval.jobs import EvalJobSettings
    from zsw.infer.reconstruct import Reconstructor
    from zsw.infer.weights import open_backend, resolve_backend

    s = EvalJobSettings(format=fmt, weights=weights)
    backend, label, _ = open_backend(resolve_backend(s.backend, s.weights, s.engine, s.device, s.precision),
                                     s.weights, s.engine, s.device)  # fmt: skip
    recon = Reconstructor(backend, grid=s.grid, frame="camera", weights_label=label, precision=s.precision,
                          color="none", reframe=s.reframe, background=s.background, min_part=s.min_part,
                          smooth=s.smooth, faces=s.faces, tta=s.tta, carve=s.carve)  # fmt: skip
    size = backend.config.pixel.image_size
    for sample in open_eval_set(data, fmt, split=split):
        image, _ = _model_input(sample, size)
        rec = recon([image], s.prompt, None, with_mesh=True)[0]
        if len(rec.mesh.faces) == 0:
            yield sample, None, None
            continue
        yield sample, mesh_points(rec.mesh, s.num_points, sample_rng(s.seed, sample.name)), np.asarray(sample.gt_points)


def paired(rows: list[dict], key: str, base: str = "cd") -> str:
    d = np.array([r[key] - r[base] for r in rows])
    return f"{d.mean():+.4f} +- {d.std(ddof=1) / np.sqrt(len(d)):.4f} ({int((d < 0).sum())} of {len(d)} better)"


def main() -> None:
    import torch

    from zsw.eval.evaluate import score
    from zsw.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--format", default="procedural", help="zsw eval's --format")
    ap.add_argument("--split", default=None)
    ap.add_argument("--weights", default=None, help="checkpoint (default: the packaged model)")
    ap.add_argument("--stretch", default="1.05,1.1,1.15,1.2", help="z factors to try, comma-separated")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix")
    args = ap.parse_args()
    factors = [float(x) for x in args.stretch.split(",") if x]
    torch.set_grad_enabled(False)

    rows = []
    for sample, pred, true in views(args.data, args.format, args.split, args.weights):
        if pred is None:
            print(f"{sample.name}: empty mesh, left out", flush=True)
            continue
        row = {"name": sample.name, "category": sample.category,
               "log_aspect_pred": log_aspect(pred), "log_aspect_true": log_aspect(true)}  # fmt: skip
        m = score(pred, true)
        row["cd"], row["f"] = float(m["cd"]), float(m["fscore@0.05"])
        for k in factors:
            m = score(stretched(pred, k), true)
            row[f"cd@x{k:g}"], row[f"f@x{k:g}"] = float(m["cd"]), float(m["fscore@0.05"])
        m = score(stretched(pred, np.exp(row["log_aspect_true"] - row["log_aspect_pred"])), true)
        row["cd@true"], row["f@true"] = float(m["cd"]), float(m["fscore@0.05"])
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if not rows:
        raise SystemExit(f"{args.data}: no view gave a mesh")

    p = np.array([r["log_aspect_pred"] for r in rows])
    t = np.array([r["log_aspect_true"] for r in rows])
    slope, intercept = np.polyfit(p, t, 1)
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    lines = [
        f"# Depth aspect: {args.data} ({args.format}, {len(rows)} views)",
        "",
        "log(z extent / max x-y extent), 1st-99th percentiles, camera frame:",
        "",
        "| | predicted | true |",
        "| --- | ---: | ---: |",
        f"| mean | {p.mean():+.3f} | {t.mean():+.3f} |",
        f"| standard deviation | {p.std(ddof=1):.3f} | {t.std(ddof=1):.3f} |",
        "",
        f"true - predicted: mean {np.mean(t - p):+.3f}, standard deviation {np.std(t - p, ddof=1):.3f}; "
        f"correlation {np.corrcoef(p, t)[0, 1]:.2f}; true = {intercept:+.3f} + {slope:.2f} x predicted.",
        "",
        "| z stretch | CD | F@0.05 | CD against none (paired, s.e.) |",
        "| --- | ---: | ---: | --- |",
        f"| none | {mean('cd'):.4f} | {mean('f'):.3f} | |",
    ]
    for k in factors:
        lines.append(f"| x{k:g} | {mean(f'cd@x{k:g}'):.4f} | {mean(f'f@x{k:g}'):.3f} | {paired(rows, f'cd@x{k:g}')} |")
    lines.append(
        f"| to the true aspect (oracle) | {mean('cd@true'):.4f} | {mean('f@true'):.3f} | {paired(rows, 'cd@true')} |"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
