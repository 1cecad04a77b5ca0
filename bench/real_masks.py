"""The visible mask of one or more models on ZeroShape's ten real example photos, against
ZeroShape's own masks (``examples/masks/``): the gate a candidate default model must pass before
its procedural scores matter (``bench/results/shape-learning.md`` (p)).

    python -m zsw.bench.real_masks --weights demo --weights runs/x/best.safetensors [--out F.md] \
        [--tta flip-pixel]

Per photo: the IoU of the model's visible mask at probability 0.5 on the 224 x 224 input (as
``tests/test_reconstruct.py::test_packaged_model_finds_the_object_in_real_photos`` computes it),
and after ``--background auto``'s correction by the photo (its plain background, or its colours:
``zsw.infer.background.correct_visible_mask``). The pixel model runs
as ``zsw reconstruct`` runs it (``zsw.infer.tta.pixel_function``: a pixel both masks claim goes
to the more confident one); ``--tta flip-pixel`` averages its outputs with those for the mirrored
photo first (``flip`` leaves the masks as they are: it mirrors the occupancy only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def mask_ious(weights: str, examples: Path = REPO / "examples", tta: str = "none") -> dict[str, tuple[float, float]]:
    """{photo: (IoU of the model's mask, IoU after the background correction)} over the photos of
    ``examples`` (a source checkout's ``examples/``, with ZeroShape's masks in ``masks/``);
    ``tta="flip-pixel"``: the pixel model's outputs averaged with the mirrored photo's."""
    import torch

    from zsw.infer.backend import predict
    from zsw.infer.background import correct_visible_mask
    from zsw.infer.image import load_image, load_mask
    from zsw.infer.tta import pixel_function
    from zsw.infer.weights import open_backend

    backend = open_backend(weights=weights)[0]
    pixel_fn = pixel_function(backend, tta)  # as zsw reconstruct runs the pixel model
    out = {}
    for path in sorted(Path(examples).glob("*.png")):
        image = load_image(path, 224)
        x = torch.from_numpy(image.image).permute(2, 0, 1)[None].float() / 255
        pred = predict(backend, x, pixel_fn=pixel_fn)
        mask = pred.visible_mask[0, 0].float().numpy() > 0.5
        occluder = pred.occluder_mask[0, 0].float().numpy() > 0.5
        gt = load_mask(Path(examples) / "masks" / path.name, image)
        fixed = correct_visible_mask(image.image, mask, occluder, image.photo_area, image.alpha)[0]
        fixed = mask if fixed is None else fixed
        out[path.stem] = tuple(float((m & gt).sum() / max((m | gt).sum(), 1)) for m in (mask, fixed))
    return out


def main() -> None:
    from zsw.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", action="append", help="checkpoint, or demo (repeatable; default: demo)")
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    ap.add_argument("--tta", default="none", help="none or flip-pixel (the masks zsw reconstruct uses with it)")
    ap.add_argument("--examples", default=str(REPO / "examples"), help="folder of photos with masks/ beside them")
    args = ap.parse_args()
    names = args.weights or ["demo"]
    results = {w: mask_ious(w, Path(args.examples), args.tta) for w in names}
    photos = sorted(next(iter(results.values())))
    label = {w: w if w == "demo" else f"{Path(w).parent.name}/{Path(w).name}" for w in names}
    head = " | ".join(f"`{label[w]}`: model / corrected" for w in names)
    lines = [f"| photo | {head} |", "| --- |" + " ---: |" * len(names)]
    rows = {p: [results[w][p] for w in names] for p in photos}
    rows["**mean**"] = [tuple(np.mean(list(results[w].values()), axis=0)) for w in names]
    for p, pairs in rows.items():
        lines.append(f"| {p} | " + " | ".join(f"{raw:.2f} / {fixed:.2f}" for raw, fixed in pairs) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
