"""How much a model loses when the photo does not frame the object as the training renders do, and
how much ``--reframe`` wins back.

    python -m zsw.bench.framing --out bench/results/framing/zsw-demo-v5 [--weights W]

Renders the same unseen objects (``--objects``, seed 21: not a training, validation or test seed)
from the same cameras three times, backgrounds and 1-2 occluders baked in:

* ``tight``: cropped as in training (the object's longer side at 0.74-0.87 of the frame);
* ``loose``: 1.8-2.6x that margin (0.38-0.56 of the frame), occluders scaled alike, 224 px;
* ``loose448``: the same at 448 px, as a photo would give more pixels than the model's input.

Each set is scored as ``zsw eval`` scores it (ZeroShape's normalisation, CD and F@0.05) with
``--reframe never``, ``auto`` and ``always``, and once framed on the **true** visible mask (given to
the reconstructor as the image's alpha, which a model with mask heads uses only for framing): the
most any framing can recover. The sets are made once under ``--data`` and reused.

Writes ``<out>.md`` (the table) and ``<out>.json`` (the numbers per set and variant).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SETS = {  # name: (crop margin, size)
    "tight": ((1.15, 1.35), 224),
    "loose": ((1.8, 2.6), 224),
    "loose448": ((1.8, 2.6), 448),
}
TRAINING_MARGIN = 1.25  # the mean of the renders' default crop margin


def make_set(root: Path, margin: tuple[float, float], size: int, objects: int) -> None:
    """``objects`` unseen objects, one baked view each; occluders keep their size relative to the object."""
    from zsw.synth.procedural import CATEGORIES, ProceduralConfig, generate
    from zsw.synth.render import CameraConfig

    k = TRAINING_MARGIN / (sum(margin) / 2)
    cfg = ProceduralConfig(objects=objects, views=1, seed=21, size=size, categories=tuple(CATEGORIES),
                           split_fractions=(0.0, 0.0, 1.0), bake_splits=("test",),
                           camera=CameraConfig(crop_margin=margin), occluder_scale=(0.4 * k, 0.6 * k))  # fmt: skip
    generate(root, cfg)  # resumes: a finished set is reused


def score_set(root: Path, backend, resolution: int, variant: str, min_part: float) -> list[dict]:
    """One row per view: ``zsw eval``'s sampling and scoring of the reconstruction."""
    from PIL import Image

    from zsw.data.eval_sets import open_eval_set
    from zsw.eval.evaluate import mesh_points, sample_rng, score
    from zsw.infer.image import load_image
    from zsw.infer.reconstruct import Reconstructor
    from zsw.infer.settings import GridSettings

    size = backend.config.pixel.image_size
    reframe = {"never": "never", "auto": "auto", "always": "always", "true_mask": "always"}[variant]
    recon = Reconstructor(backend, grid=GridSettings(resolution), frame="camera", color="none", reframe=reframe,
                          min_part=min_part)  # fmt: skip
    rows = []
    for s in open_eval_set(root, "procedural"):
        im = load_image(np.asarray(s.image), size, name=s.name)
        if variant == "true_mask":
            mask = np.asarray(s.mask).astype(bool)
            im.pixel_alpha = mask
            small = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
            im.alpha = np.asarray(small) > 127
        rec = recon([im])[0]
        m = score(mesh_points(rec.mesh, 10000, sample_rng(0, s.name)), s.gt_points, "none")
        rows.append({"name": s.name, "category": s.category, "cd": m["cd"], "fscore@0.05": m["fscore@0.05"],
                     "window": rec.info["input"]["window"]})  # fmt: skip
    return rows


def main() -> None:
    from zsw.bench._harness import output_path
    from zsw.infer.settings import MIN_PART
    from zsw.infer.weights import open_backend
    from zsw.io import atomic_write_json, atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output path without suffix")
    ap.add_argument("--weights", default=None, help="checkpoint (default: the packaged model)")
    ap.add_argument("--data", default="data/framing", help="where the three sets are made (once)")
    ap.add_argument("--objects", type=int, default=44)
    ap.add_argument("--resolution", type=int, default=64, help="grid cells per axis (fast extraction)")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--variants", default="never,auto,always,true_mask")
    ap.add_argument("--min-part", type=float, default=MIN_PART, help="crumbs dropped from each mesh, as zsw eval")
    args = ap.parse_args()

    backend, _, _ = open_backend("torch", args.weights, None, "cpu")
    results: dict[str, dict[str, dict]] = {}
    variants = args.variants.split(",")
    for name in args.sets.split(","):
        margin, size = SETS[name]
        root = Path(args.data) / name
        make_set(root, margin, size, args.objects)
        results[name] = {}
        for v in variants:
            rows = score_set(root, backend, args.resolution, v, args.min_part)
            cd, fscore = float(np.mean([r["cd"] for r in rows])), float(np.mean([r["fscore@0.05"] for r in rows]))
            results[name][v] = {"cd": cd, "fscore@0.05": fscore, "rows": rows}
            print(f"{name:9s} {v:10s} CD {results[name][v]['cd']:.4f} F@0.05 {results[name][v]['fscore@0.05']:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_path(out, ".json"), {"weights": args.weights or "packaged", "resolution": args.resolution,
                                                 "min_part": args.min_part, "objects": args.objects,
                                                 "results": results})  # fmt: skip
    head = "| set | " + " | ".join(f"`{v}`: CD / F@0.05" for v in variants) + " |"
    title = f"{args.weights or 'the packaged model'}, {args.objects} objects, resolution {args.resolution}"
    lines = [f"# Framing: {title}, min_part {args.min_part}",
             "", head, "| --- |" + " ---: |" * len(variants)]  # fmt: skip
    for name, by in results.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{by[v]['cd']:.4f} / {by[v]['fscore@0.05']:.3f}" for v in variants) + " |"
        )
    atomic_write_text(output_path(out, ".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
