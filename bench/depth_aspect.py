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
  exceed);
* ``cd@fF`` (``--focal-scale``): reconstructed again with the pixel model's focal lengths
  multiplied by F (:class:`FocalScaled`), the calibration a biased focal head would call for: a
  longer focal length lifts the same depth map into a deeper, narrower surface;
* for a ``procedural`` set, whose views carry their depth and intrinsics: ``log_relief_pred`` /
  ``log_relief_true``, the same aspect of the lifted visible surface alone (the pixel model's
  share of the flatness, before the decoder adds the hidden side), and ``log_focal_pred`` /
  ``log_focal_true``.

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


class FocalScaled:
    """A backend whose pixel model predicts ``factor`` times the focal lengths (everything else is
    the wrapped backend's): what follows -- lifting, the decoder's pixel-aligned projection,
    carving -- sees the scaled intrinsics, as it would from a pixel model with that focal prior."""

    def __init__(self, backend, factor: float):
        self._backend, self._factor = backend, factor

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def pixel(self, image, text):
        import dataclasses

        out = self._backend.pixel(image, text)
        K = out.intrinsics.clone()
        K[:, :2, :2] *= self._factor
        return dataclasses.replace(out, intrinsics=K)


def visible_relief(depth, K, mask) -> float:  # [S, S], [3, 3], [S, S] bool -> log aspect of the lifted surface
    import torch

    from zsw.model.geometry import unproject_depth

    points = unproject_depth(torch.as_tensor(depth, dtype=torch.float32)[None, None], torch.as_tensor(K)[None])[0]
    return log_aspect(points.numpy()[np.asarray(mask).reshape(-1)])


def views(data: Path, fmt: str, split: str | None, weights: str | None, focal_scales: list[float] = ()):
    """(sample, {focal scale: reconstruction}) for every view, reconstructed as zsw eval does
    (scale 1: the model as it is)."""
    from zsw.data.eval_sets import open_eval_set
    from zsw.eval.evaluate import _model_input
    from zsw.eval.jobs import EvalJobSettings
    from zsw.infer.weights import open_backend, resolve_backend

    s = EvalJobSettings(format=fmt, weights=weights)
    backend, label, _ = open_backend(resolve_backend(s.backend, s.weights, s.engine, s.device, s.precision),
                                     s.weights, s.engine, s.device)  # fmt: skip
    recons = {f: s.reconstructor(backend if f == 1 else FocalScaled(backend, f), label) for f in (1.0, *focal_scales)}
    size = backend.config.pixel.image_size
    for sample in open_eval_set(data, fmt, split=split):
        image, _ = _model_input(sample, size)
        yield sample, {f: r([image], s.prompt, None, with_mesh=True)[0] for f, r in recons.items()}


def points(rec, name: str) -> np.ndarray | None:  # [10k, 3] on the mesh as zsw eval samples it; None: empty
    from zsw.eval.evaluate import mesh_points, sample_rng

    return mesh_points(rec.mesh, 10000, sample_rng(0, name)) if len(rec.mesh.faces) else None


def scored(row: dict, key: str, cloud: np.ndarray | None, true: np.ndarray) -> None:
    """``row["cd" + key]`` and ``row["f" + key]``: ZeroShape's CD and F@0.05 of ``cloud`` against
    ``true``; NaN for a variant that gave no mesh (``cloud`` None)."""
    from zsw.eval.evaluate import score

    m = score(cloud, true) if cloud is not None else {"cd": np.nan, "fscore@0.05": np.nan}
    row[f"cd{key}"], row[f"f{key}"] = float(m["cd"]), float(m["fscore@0.05"])


def paired(rows: list[dict], key: str, base: str = "cd") -> str:
    d = np.array([r[key] - r[base] for r in rows])
    d = d[np.isfinite(d)]  # a variant that gave an empty mesh
    return f"{d.mean():+.4f} +- {d.std(ddof=1) / np.sqrt(len(d)):.4f} ({int((d < 0).sum())} of {len(d)} better)"


def summary(rows: list[dict], factors: list[float], focal_scales: list[float]) -> list[str]:
    """The markdown tables of :func:`main`'s rows."""
    mean = lambda key: float(np.nanmean([r[key] for r in rows]))  # noqa: E731
    lines = [
        "Logs, camera frame; aspects are z extent / max x-y extent between the 1st and 99th percentiles;",
        "the relief is that of the lifted visible surface alone; the focal length is in pixels of the model input.",
        "",
        "| log | predicted (s.d.) | true (s.d.) | true - predicted (s.d.) | correlation | true = a + b x predicted |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for what, key in (("mesh aspect", "log_aspect"), ("visible relief", "log_relief"), ("focal length", "log_focal")):
        if f"{key}_pred" not in rows[0]:
            continue
        p = np.array([r[f"{key}_pred"] for r in rows])
        t = np.array([r[f"{key}_true"] for r in rows])
        b, a = np.polyfit(p, t, 1)
        lines.append(
            f"| {what} | {p.mean():+.3f} ({p.std(ddof=1):.3f}) | {t.mean():+.3f} ({t.std(ddof=1):.3f}) | "
            f"{np.mean(t - p):+.3f} ({np.std(t - p, ddof=1):.3f}) | {np.corrcoef(p, t)[0, 1]:.2f} | "
            f"{a:+.3f} + {b:.2f} x |"
        )
    lines += [
        "",
        "| variant | CD | F@0.05 | CD against the model as it is (paired, s.e.) |",
        "| --- | ---: | ---: | --- |",
        f"| the model as it is | {mean('cd'):.4f} | {mean('f'):.3f} | |",
    ]
    variants = [(f"mesh z stretched x{k:g}", f"x{k:g}") for k in factors]
    variants += [("mesh stretched to the true aspect (oracle)", "true")]
    variants += [(f"focal lengths x{f:g}", f"f{f:g}") for f in focal_scales]
    for label, key in variants:
        lines.append(f"| {label} | {mean(f'cd@{key}'):.4f} | {mean(f'f@{key}'):.3f} | {paired(rows, f'cd@{key}')} |")
    return lines


def main() -> None:
    import torch

    from zsw.bench._harness import write_rows_and_summary

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--format", default="procedural", help="zsw eval's --format")
    ap.add_argument("--split", default=None)
    ap.add_argument("--weights", default=None, help="checkpoint (default: the packaged model)")
    ap.add_argument("--stretch", default="1.05,1.1,1.15,1.2", help="z factors to try, comma-separated")
    ap.add_argument("--focal-scale", default="", help="focal length factors to try, comma-separated")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix")
    args = ap.parse_args()
    factors = [float(x) for x in args.stretch.split(",") if x]
    focal_scales = [float(x) for x in args.focal_scale.split(",") if x]
    torch.set_grad_enabled(False)
    truth = None
    if args.format == "procedural":  # the views' depth, intrinsics and visible masks, by name
        from zsw.data.dataset import ShapeDataset

        truth = ShapeDataset([args.data], args.split or "test", with_shape=False)
        index = {truth.sample_id(i)[1].name: i for i in range(len(truth))}

    rows = []
    for sample, recs in views(args.data, args.format, args.split, args.weights, focal_scales):
        rec, pred, true = recs[1.0], points(recs[1.0], sample.name), np.asarray(sample.gt_points)
        if pred is None:
            print(f"{sample.name}: empty mesh, left out", flush=True)
            continue
        row = {"name": sample.name, "category": sample.category,
               "log_aspect_pred": log_aspect(pred), "log_aspect_true": log_aspect(true)}  # fmt: skip
        if truth is not None:
            item = truth[index[sample.name]]
            row["log_relief_pred"] = log_aspect(np.asarray(rec.visible_points))
            row["log_relief_true"] = visible_relief(item["depth"][0], item["intrinsics"], item["visible_mask"][0] > 0.5)
            row["log_focal_pred"] = float(np.log(rec.intrinsics[0, 0]))
            row["log_focal_true"] = float(np.log(item["intrinsics"][0, 0]))
        scored(row, "", pred, true)
        for k in factors:
            scored(row, f"@x{k:g}", stretched(pred, k), true)
        scored(row, "@true", stretched(pred, np.exp(row["log_aspect_true"] - row["log_aspect_pred"])), true)
        for f in focal_scales:
            scored(row, f"@f{f:g}", points(recs[f], sample.name), true)
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if not rows:
        raise SystemExit(f"{args.data}: no view gave a mesh")

    lines = [f"# Depth aspect: {args.data} ({args.format}, {len(rows)} views)", ""]
    lines += summary(rows, factors, focal_scales)
    write_rows_and_summary(args.out, rows, lines)


if __name__ == "__main__":
    main()
