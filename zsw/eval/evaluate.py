"""Evaluation runs with ZeroShape's protocol: reconstruct, sample, normalise, align, score, summarise.

Per sample (an :class:`~zsw.data.eval_sets.EvalSample`):

1. reconstruct the mesh from ``sample.image`` (camera frame; the visible mask is predicted unless
   ``use_mask``; ZeroShape models always take the sample's mask);
2. sample ``num_points`` (10,000) points on it; an empty mesh gives zeros, as in ZeroShape;
3. normalise prediction and ground truth each by centroid and max(x-extent, y-extent);
4. align (optional): ``brute-force`` (6,912 rotations) or ``icp``;
5. accuracy, completeness, CD and F-scores (:func:`~zsw.eval.metrics.chamfer_fscore`).

Two naive baselines replace step 1-2 with the model's own predicted visible surface: ``sphere``
(a least-squares sphere fitted to it -- under per-cloud normalisation every sphere scores the
same, so this is "the answer is a ball") and ``visible`` (the visible surface itself, no hidden
geometry). They show what the decoder adds. A third, ``ellipsoid``, is an oracle: the ellipsoid
whose axes are the ground truth's extents along the camera axes ("a blob that knows the object's
true size"); a model that does not beat it has learnt size, not shape.

Runs are resumable: every finished sample is appended (and fsynced) to a JSONL file whose first
line records the settings; a rerun with the same settings skips what is there.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from zsw.errors import ConfigError, InputError, OptionError
from zsw.eval.metrics import THRESHOLDS, chamfer_fscore, normalize_pc, sample_surface

__all__ = [
    "EvalSettings",
    "ALIGNS",
    "BASELINES",
    "METRICS",
    "score",
    "fit_sphere",
    "baseline_points",
    "mesh_points",
    "sample_rng",
    "evaluate_samples",
    "ResultsLog",
    "summarize",
    "summary_markdown",
    "format_metric",
]

ALIGNS = ("none", "brute-force", "icp")
BASELINES = ("sphere", "visible", "ellipsoid")
#: metric keys, in table order
METRICS = ("acc", "comp", "cd", *(f"fscore@{t}" for t in THRESHOLDS))


@dataclass(frozen=True)
class EvalSettings:
    """What a run measured; a resumed run must match the one it continues."""

    format: str
    weights: str = ""  # what identifies them (zsw.infer.weights.weights_identity: a content hash)
    resolution: int = 128
    extraction: str = "fast"
    fast: dict | None = None  # `fast`'s refinement rule (zsw.infer.settings.GridSettings.refinement)
    threshold: float = 0.5
    bound: float = 1.5
    close: bool = True
    num_points: int = 10000
    align: str = "none"
    prompt: str = "object"  # text, "category" (the sample's category), "auto"/"clip" or "vlm:<id>"
    use_mask: bool = False
    baseline: str | None = None  # None = the model's mesh; "sphere", "visible" or "ellipsoid"
    seed: int = 0
    precision: str = "fp32"  # as resolved for the run (zsw.infer.precision.resolve_precision)
    reframe: str = "never"  # the model input cut around the object (zsw.infer.reconstruct.Reconstructor)
    background: str = "never"  # the predicted visible mask corrected by the photo's own background
    min_part: float = 0.0  # disconnected parts under this fraction of the largest's area dropped from the mesh
    smooth: int = 0  # passes of Taubin smoothing of the mesh (zsw.infer.mesh_ops)
    faces: int | None = None  # the mesh decimated to at most this many triangles (None: not decimated)
    tta: str = "none"  # test-time augmentation of the occupancy ("flip": averaged with the mirrored photo's)
    carve: bool = False  # occupancy bounded where the photo shows background (zsw.infer.carve)
    cutout: str = "none"  # the photo's background removed first (zsw.infer.cutout: the remover's identity)
    data: str = ""  # the evaluation set: resolved path and a fingerprint of its sample names
    zsw_version: str = ""  # the release that scored it: another may mesh or score a sample differently
    zsw_code: str = ""  # zsw.io.code_identity() of the code that scored it (edits within a release count)

    def __post_init__(self) -> None:
        if self.align not in ALIGNS:
            raise OptionError(f"--align must be one of {', '.join(ALIGNS)}, got {self.align!r}")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise OptionError(f"--baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.num_points < 1:
            raise OptionError(f"--num-points must be positive, got {self.num_points}")


def _centred(points: np.ndarray | torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N, 3] float32
    """``points`` less their centroid, subtracted in float64 before the float32 the metric runs in:
    a cloud at 1e6 from the origin would otherwise be rounded to 0.0625 first (the metric centres
    and scales each cloud, so the shift changes nothing else)."""
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    p = np.asarray(points, np.float64)
    return torch.from_numpy((p - p.mean(axis=0)).astype(np.float32))


def score(
    pred_points: np.ndarray | torch.Tensor,  # [N, 3]
    gt_points: np.ndarray | torch.Tensor,  # [M, 3]
    align: str = "none",
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Normalise both clouds, align the prediction, and compute the metrics."""
    from zsw.eval.align import brute_force_align, icp

    device = torch.device(device or "cpu")
    pred = normalize_pc(_centred(pred_points).to(device))
    gt = normalize_pc(_centred(gt_points).to(device))
    if align == "brute-force":
        pred, _, _ = brute_force_align(pred, gt)
    elif align == "icp":
        pred = icp(pred, gt)
    elif align != "none":
        raise ConfigError(f"align must be one of {', '.join(ALIGNS)}, got {align!r}")
    return chamfer_fscore(pred, gt)


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:  # [P, 3] -> center [3], radius
    """Least-squares sphere through ``points`` (algebraic fit), falling back to the centroid and
    the RMS distance when the points are too few or do not lie on a sphere of about their size
    (a flat patch, for instance)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) == 0:
        return np.zeros(3), 1.0
    centroid = p.mean(0)
    rms = float(np.sqrt(((p - centroid) ** 2).sum(1).mean())) or 1.0
    if len(p) >= 4:
        a = np.concatenate([2 * (p - centroid), np.ones((len(p), 1))], axis=1)
        b = ((p - centroid) ** 2).sum(1)
        sol, *_ = np.linalg.lstsq(a, b, rcond=None)
        center = centroid + sol[:3]
        r2 = sol[3] + (sol[:3] ** 2).sum()
        if r2 > 0:
            r = math.sqrt(r2)
            residual = float(np.sqrt(((np.linalg.norm(p - center, axis=1) - r) ** 2).mean()))
            # keep a fit that is about the patch's size and that the points actually lie on
            if r < 3 * rms and residual < 0.1 * r:
                return center, r
    return centroid, rms


def ellipsoid_points(gt: np.ndarray, count: int, seed: int = 0) -> np.ndarray:  # [P, 3] -> [count, 3]
    """Points on the axis-aligned ellipsoid spanning the bounding box of ``gt`` (camera axes)."""
    import trimesh

    lo, hi = gt.min(0), gt.max(0)
    ball = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    ball.apply_scale(np.maximum((hi - lo) / 2, 1e-6))
    ball.apply_translation((hi + lo) / 2)
    return sample_surface(ball, count, seed=seed)


def sample_rng(seed: int, name: str) -> np.random.Generator:
    """A sample's randomness, from the run's seed and the sample's name alone (not its position in
    the set or the batch size), so that every score of a sample is reproducible on its own."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def mesh_points(mesh, count: int, rng: np.random.Generator) -> np.ndarray:  # [count, 3]
    """The points ``zsw eval`` scores on a predicted mesh."""
    return sample_surface(mesh, count, seed=int(rng.integers(1 << 31)))


def baseline_points(
    kind: str, visible: np.ndarray, gt: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:  # [count, 3]
    """The points ``zsw eval --baseline`` scores: ``sphere`` (fitted to the model's ``visible``
    surface), ``visible`` (that surface alone) or ``ellipsoid`` (the oracle spanning ``gt``'s extents)."""
    if kind == "ellipsoid":
        return ellipsoid_points(np.asarray(gt, dtype=np.float64), count, seed=int(rng.integers(1 << 31)))
    if len(visible) == 0:
        return np.zeros((count, 3), np.float32)
    if kind == "visible":
        return visible[rng.choice(len(visible), count, replace=len(visible) < count)].astype(np.float32)
    import trimesh

    center, radius = fit_sphere(visible)
    ball = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    ball.apply_translation(center)
    return sample_surface(ball, count, seed=int(rng.integers(1 << 31)))


class ResultsLog:
    """Per-sample results, appended to a JSONL file whose first line holds the run's settings.

    ``fingerprints`` (sample name -> :meth:`~zsw.data.eval_sets.EvalSet.fingerprints`) go into
    each row, and a resumed row must match its sample's: scores of a sample rewritten in place are
    refused, while a rerun that picks other samples of the same set (``--max-per-category``,
    ``--limit``) keeps the rows of the ones it shares."""

    def __init__(
        self,
        path: str | os.PathLike,
        settings: EvalSettings,
        overwrite: bool = False,
        fingerprints: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.settings = settings
        self.fingerprints = fingerprints or {}
        self.rows: list[dict] = []
        header = {"settings": asdict(settings)}
        if self.path.exists() and not overwrite:
            lines = self.path.read_text().splitlines()
            records = []
            for i, line in enumerate(lines):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    if i != len(lines) - 1:  # only a torn last line is expected (a killed run)
                        msg = f"{self.path} line {i + 1} is not JSON; remove the file to start over"
                        raise ConfigError(msg) from None
            # runs from before the release was recorded were all scored by 0.1.0, the only release then;
            # those from before the code was recorded by code no hash names (never the same as now)
            old = {"zsw_version": "0.1.0", "zsw_code": "", **(records[0].get("settings") or {})} if records else None
            if old is not None and old != header["settings"]:
                diff = [k for k in header["settings"] if old.get(k) != header["settings"][k]]
                hint = " (another set folder)" if "data" in diff else ""
                if "zsw_version" in diff:
                    hint += f" (scored by zsw {old['zsw_version']})"
                elif "zsw_code" in diff:
                    hint += " (scored by other zsw code)"
                raise ConfigError(
                    f"{self.path} holds results of a run with other settings ({', '.join(diff) or 'unknown'} differ"
                    f"{hint}); pass --overwrite or choose another --out"
                )
            self.rows = [r for r in records[1:] if "name" in r]
            changed = [r["name"] for r in self.rows if r["name"] in self.fingerprints
                       and r.get("sample_fp") != self.fingerprints[r["name"]]]  # fmt: skip
            if changed:
                raise ConfigError(
                    f"{self.path} holds scores of {len(changed)} sample(s) whose files changed since (first: "
                    f"{changed[0]}): data differ; pass --overwrite or choose another --out"
                )
            self._rewrite(header)  # drops a torn last line
        else:
            self._rewrite(header)

    def _rewrite(self, header: dict) -> None:
        from zsw.io import atomic_write_text

        lines = [json.dumps(header)] + [json.dumps(r) for r in self.rows]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    @property
    def done(self) -> set[str]:
        return {r["name"] for r in self.rows}

    def append(self, row: dict) -> None:
        if row["name"] in self.fingerprints:
            row = {**row, "sample_fp": self.fingerprints[row["name"]]}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)


def evaluate_samples(
    samples: Iterable,  # EvalSample
    reconstructor,  # zsw.infer.reconstruct.Reconstructor with frame="camera"
    settings: EvalSettings,
    log: ResultsLog,
    *,
    batch_size: int = 1,
    estimator: Callable | None = None,
    on_sample: Callable[[dict | None, str | None], None] | None = None,
    cutout: Callable | None = None,
) -> list[dict]:
    """Reconstruct and score every sample not yet in ``log``; returns all rows of the log.

    ``on_sample(row, error)`` is called after each sample (for progress bars and messages);
    ``cutout``: a background remover for the photos (:mod:`zsw.infer.cutout`), not used where the
    samples' visible masks are given to the model (``use_mask``, or a model that needs them).
    """
    from zsw.errors import ZswError

    size = reconstructor.backend.config.pixel.image_size
    needs_mask = settings.use_mask or reconstructor.needs_mask
    cutout = None if needs_mask else cutout
    done = log.done
    batch: list = []

    def flush() -> None:
        if not batch:
            return
        t0 = time.perf_counter()
        images, masks, readable = [], [], []
        for s in batch:
            try:
                im, mask = _model_input(s, size, cutout)
                if needs_mask and mask is None:  # never the predicted mask in a run that says it gave them
                    why = "--use-mask" if settings.use_mask else "this model (it has no mask heads)"
                    raise InputError(f"no visible mask for {why} (folder format: <name>.mask.png beside the photo)")
            except ZswError as e:  # a photo or mask of the folder format that cannot be read
                if on_sample:
                    on_sample(None, f"{s.name}: {e}")
                continue
            images.append(im)
            masks.append(mask)
            readable.append(s)
        batch[:] = readable
        if not batch:
            return
        if settings.prompt == "category":
            prompts = [s.category for s in batch]
        elif estimator is not None:
            from PIL import Image

            prompts = estimator([Image.fromarray(im.image) for im in images])
        else:
            prompts = settings.prompt
        try:
            recs = reconstructor(images, prompts, masks if needs_mask else None, with_mesh=settings.baseline is None)
        except ZswError as e:
            for s in batch:
                if on_sample:
                    on_sample(None, f"{s.name}: {e}")
            batch.clear()
            return
        seconds = (time.perf_counter() - t0) / len(batch)
        for s, rec in zip(batch, recs):
            rng = sample_rng(settings.seed, s.name)
            if settings.baseline is None:
                pts = mesh_points(rec.mesh, settings.num_points, rng)
            else:
                pts = baseline_points(settings.baseline, rec.visible_points, s.gt_points, settings.num_points, rng)
            t1 = time.perf_counter()
            try:  # a true shape with NaN points fails its sample alone (zsw.eval.metrics says which)
                metrics = score(pts, s.gt_points, settings.align, device=reconstructor.backend.device)
            except ZswError as e:
                if on_sample:
                    on_sample(None, f"{s.name}: {e}")
                continue
            row = {
                "name": s.name,
                "category": s.category,
                **metrics,
                "prompt": rec.prompt,
                "faces": len(rec.mesh.faces) if settings.baseline is None else None,  # a baseline makes no mesh
                "seconds": seconds + time.perf_counter() - t1,
            }
            log.append(row)
            if on_sample:
                on_sample(row, None)
        batch.clear()

    for s in samples:
        if s.name in done:
            continue
        batch.append(s)
        if len(batch) >= batch_size:
            flush()
    flush()
    return log.rows


def _model_input(sample, size: int, cutout: Callable | None = None):
    """A sample's model input (:class:`~zsw.infer.image.LoadedImage`) and its visible mask at that
    input (``[size, size]`` bool, or None): a stored ``[size, size, 3]`` image as it is, any other
    array or a photo's path (the ``folder`` format) read and framed as ``zsw reconstruct`` does,
    its background removed by ``cutout`` (None: not)."""
    from zsw.infer.image import LoadedImage, load_image, load_mask

    source = sample.image
    if not isinstance(source, (str, os.PathLike)):
        source = np.asarray(source)
        if source.shape == (size, size, 3) and source.dtype == np.uint8 and cutout is None:
            return LoadedImage(sample.name, source, (size, size)), sample.mask
    image = load_image(source, size, name=sample.name, cutout=cutout)
    return image, None if sample.mask is None else load_mask(sample.mask, image)


def _mean(rows: Sequence[dict], key: str) -> float | None:
    # None (JSON null) when nothing was scored: NaN is not JSON, and zero would be a fake score
    return float(np.mean([r[key] for r in rows])) if rows else None


def summarize(rows: Sequence[dict]) -> dict:
    """Overall (mean over samples) and per-category means, plus the mean over categories
    (None where no sample was scored)."""
    cats: dict[str, list[dict]] = {}
    for r in rows:
        cats.setdefault(r["category"], []).append(r)
    categories = {c: {"count": len(rs), **{k: _mean(rs, k) for k in METRICS}} for c, rs in sorted(cats.items())}
    overall = {"count": len(rows), **{k: _mean(rows, k) for k in METRICS}}
    category_mean = {
        "count": len(categories),
        **{k: float(np.mean([v[k] for v in categories.values()])) if categories else None for k in METRICS},
    }
    empty = sum(r.get("faces") == 0 for r in rows)  # the model's own rows say how many faces it made
    return {"overall": overall, "category_mean": category_mean, "categories": categories, "empty_meshes": empty}


def format_metric(value: float | None) -> str:
    """A metric for a table: four decimals, or a dash where nothing was scored."""
    return "-" if value is None else f"{value:.4f}"


def summary_markdown(summary: dict, title: str = "") -> str:
    """The per-category and overall tables as Markdown."""
    head = "| category | n | " + " | ".join(METRICS) + " |"
    rule = "|---|---:|" + "---:|" * len(METRICS)
    lines = [f"# {title}", ""] if title else []
    notes = []
    if summary.get("limit") and summary.get("set_samples", 0) > summary.get("samples", 0):
        notes.append(f"The first {summary['samples']} of the set's {summary['set_samples']} samples (--limit).")
    if summary.get("empty_meshes"):
        notes.append(
            f"{summary['empty_meshes']} of the {summary['overall']['count']} predicted meshes are empty "
            "(scored as ZeroShape scores them: every point at the origin)."
        )
    lines += [" ".join(notes), ""] if notes else []
    lines += [head, rule]

    def row(name: str, d: dict) -> str:
        return f"| {name} | {d['count']} | " + " | ".join(format_metric(d[k]) for k in METRICS) + " |"

    lines += [row(c, d) for c, d in summary["categories"].items()]
    lines += [row("**overall**", summary["overall"]), row("*mean of categories*", summary["category_mean"])]
    return "\n".join(lines) + "\n"
