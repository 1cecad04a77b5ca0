"""The visible mask ``zsw reconstruct`` uses, on photos of every shape: ZeroShape's ten example
objects (cut out by their masks, ``examples/masks/``) pasted into photos of scikit-image's textures
at a fraction of the photo's shorter side, in square (1200 x 1200), landscape (1600 x 1200),
portrait (1200 x 1600) and wide (1600 x 900) photos, and the IoU, in photo pixels, of the mask the
reconstruction ends with (after ``--reframe auto`` and ``--background auto``) against the pasted
object's.

    python -m zsw.bench.padding --out bench/results/padding/NAME [--backgrounds gravel,grass,brick] \
        [--fraction 0.5] [--weights W] [--background auto|never] [--cutout auto|none|grabcut|rembg] \
        [--degrade none|dark|bright|noise|jpeg|jpeg10|blur|cast|grey]
    python -m zsw.bench.padding --procedural data/demo/test --out NAME [--background auto|never]

``--procedural DIR`` scores a procedural set's images instead (``zsw synthesize procedural``), each
against its true visible mask (``visible_masks/``; where a view has none, its depth's pixels), as
``zsw reconstruct`` makes the mask.

``--degrade KIND`` spoils each composed photo as a camera or a web page would before zsw sees it
(:data:`DEGRADATIONS`: under- or over-exposed, sensor noise, heavy JPEG, out of focus, a colour
cast, grey): how the mask holds on photos worse than the training renders.

A photo that is not square is padded to one for the model's first look; what fills the padding
decides whether the model finds the object there (``zsw.infer.image``: the photo mirrored, formerly
white). Writes ``<out>.md`` (mean IoU per background and shape) and ``<out>.jsonl`` (per photo).
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"square": (1200, 1200), "landscape": (1200, 1600), "portrait": (1600, 1200), "wide": (900, 1600)}
#: ways a photo comes spoilt (``--degrade``), each a function of the photo and a seeded generator
DEGRADATIONS = ("none", "dark", "bright", "noise", "jpeg", "jpeg10", "blur", "cast", "grey")


def degrade(photo: np.ndarray, kind: str, rng) -> np.ndarray:  # [H, W, 3] uint8 -> the same
    """``photo`` spoilt as ``kind`` says: ``dark`` (a third of the exposure, with the sRGB curve),
    ``bright`` (three times, clipped), ``noise`` (Gaussian, sigma 20 of 255, per pixel and
    channel), ``jpeg`` (quality 75, a web page's), ``jpeg10`` (quality 10), ``blur`` (Gaussian,
    sigma 0.4 % of the shorter side), ``cast`` (warm white balance: red x1.25, blue x0.7), ``grey``
    (no colour) or ``none``."""
    import io

    from PIL import Image, ImageFilter

    if kind == "none":
        return photo
    if kind == "blur":
        return np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(0.004 * min(photo.shape[:2]))))
    if kind in ("jpeg", "jpeg10"):
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, "JPEG", quality=10 if kind == "jpeg10" else 75)
        return np.asarray(Image.open(buffer).convert("RGB"))
    x = photo.astype(np.float32) / 255
    if kind in ("dark", "bright"):  # exposure acts on linear light
        linear = x**2.2 * (1 / 3 if kind == "dark" else 3.0)
        x = np.clip(linear, 0, 1) ** (1 / 2.2)
    elif kind == "noise":
        x = x + rng.normal(0, 20 / 255, x.shape).astype(np.float32)
    elif kind == "cast":
        x = x * np.array([1.25, 1.0, 0.7], np.float32)
    elif kind == "grey":
        x = np.repeat(x @ np.array([0.299, 0.587, 0.114], np.float32), 3).reshape(x.shape)
    else:
        raise ValueError(f"unknown degradation {kind!r}; choose from {', '.join(DEGRADATIONS)}")
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def texture(name: str, height: int, width: int) -> np.ndarray:  # [H, W, 3] uint8
    """scikit-image's sample photo ``name`` (gravel, grass, brick, ...) stretched to the photo."""
    from skimage import data
    from skimage.transform import resize

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return (resize(img[..., :3], (height, width), anti_aliasing=True) * 255).round().astype(np.uint8)


def paste(background: np.ndarray, obj: np.ndarray, mask: np.ndarray, fraction: float, rng) -> tuple:
    """``obj`` (cut to its ``mask``'s box) pasted into a copy of ``background``, its longer side at
    ``fraction`` of the photo's shorter side, at a random place around the centre (within a quarter
    of the room left on each axis). Returns the photo and the object's pixels ``[H, W]``."""
    from skimage.transform import resize

    H, W = background.shape[:2]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    obj = obj[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    s = fraction * min(H, W) / max(mask.shape)
    h, w = max(4, int(mask.shape[0] * s)), max(4, int(mask.shape[1] * s))
    obj = (resize(obj, (h, w), anti_aliasing=True) * 255).round().astype(np.uint8)
    mask = resize(mask.astype(float), (h, w)) > 0.5
    y0 = (H - h) // 2 + int(rng.integers(-((H - h) // 4), (H - h) // 4 + 1))
    x0 = (W - w) // 2 + int(rng.integers(-((W - w) // 4), (W - w) // 4 + 1))
    photo, truth = background.copy(), np.zeros((H, W), bool)
    photo[y0 : y0 + h, x0 : x0 + w][mask] = obj[mask]
    truth[y0 : y0 + h, x0 : x0 + w] = mask
    return photo, truth


def photo_mask(rec, height: int, width: int) -> np.ndarray:  # [H, W] bool
    """A reconstruction's visible mask (model-input pixels) in the photo's pixels, through its window."""
    from PIL import Image

    x0, y0, side = rec.info["input"]["window"]
    big = np.asarray(Image.fromarray(rec.visible_mask.astype(np.uint8) * 255).resize((side, side), Image.NEAREST)) > 127
    out = np.zeros((height, width), bool)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0:sy1, sx0:sx1] = big[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    return out


def _reconstructor(weights: str | None, background: str):
    from zsw.infer.reconstruct import Reconstructor
    from zsw.infer.tta import resolve_tta
    from zsw.infer.weights import open_backend

    backend = open_backend("torch", weights, None, "cpu")[0]
    return Reconstructor(backend, color="none", tta=resolve_tta("auto", backend.device), background=background)


def final_mask(recon, photo: np.ndarray, name: str, cutout=None):
    """The visible mask ``zsw reconstruct`` ends with for ``photo``, in its pixels, and the
    reconstruction (its ``info``: the notes, which mask); ``cutout``: a background remover
    (:func:`zsw.infer.cutout.open_cutout`) applied first, as ``--cutout`` does."""
    from zsw.infer.image import load_image

    image = load_image(photo, recon.backend.config.pixel.image_size, name=name, cutout=cutout)
    rec = recon([image], with_mesh=False)[0]
    return photo_mask(rec, *photo.shape[:2]), rec


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def run(
    backgrounds, fraction: float, weights: str | None = None, shapes=tuple(SHAPES), names=None, background="auto",
    cutout: str = "auto", spoil: str = "none",
) -> list[dict]:  # fmt: skip
    """One row per photo: background, shape, object, the mask's IoU, whether the input was reframed;
    ``names``: the example objects (default: all ten); ``background``, ``cutout``: ``zsw
    reconstruct``'s options; ``spoil``: a :func:`degrade` applied to each photo."""
    from PIL import Image

    from zsw.infer.cutout import open_cutout

    recon = _reconstructor(weights, background)
    remover = open_cutout(cutout)
    names = names or sorted(p.stem for p in (REPO / "examples").glob("*.png"))
    rows = []
    for kind in backgrounds:
        for shape in shapes:
            H, W = SHAPES[shape]
            background = texture(kind, H, W)
            for name in names:
                obj = np.asarray(Image.open(REPO / "examples" / f"{name}.png").convert("RGB"))
                mask = np.asarray(Image.open(REPO / "examples" / "masks" / f"{name}.png").convert("L")) > 127
                rng = np.random.default_rng(zlib.crc32(f"{kind}/{shape}/{name}".encode()))
                photo, truth = paste(background, obj, mask, fraction, rng)
                photo = degrade(photo, spoil, rng)
                got, rec = final_mask(recon, photo, name, remover)
                score = iou(got, truth)
                reframed = any(n.startswith("reframed") for n in rec.info["input"]["notes"])
                rows.append({"background": kind, "shape": shape, "name": name, "iou": score, "reframed": reframed,
                             "mask": rec.info["mask"]})  # fmt: skip
                print(f"{kind} {shape} {name}: IoU {score:.3f}{', reframed' if reframed else ''}")
    return rows


def run_procedural(data: Path, weights: str | None = None, background: str = "auto") -> list[dict]:
    """One row per image of a procedural set: name, category, the final mask's IoU against the true
    visible mask, which mask ``zsw reconstruct`` used (``result.json``'s ``mask``)."""
    from PIL import Image

    recon = _reconstructor(weights, background)
    rows = []
    for path in sorted((data / "images_processed").glob("*/*.png")):
        photo = np.asarray(Image.open(path).convert("RGB"))
        truth_path = data / "visible_masks" / path.parent.name / path.name
        if truth_path.exists():
            truth = np.asarray(Image.open(truth_path).convert("L")) > 127
        else:  # a view over white, nothing in front: the object's depth (as zsw.data.eval_sets reads it)
            truth = np.load(data / "depth" / path.parent.name / f"{path.stem}.npy") > 0
        got, rec = final_mask(recon, photo, path.stem)
        rows.append({"name": path.stem, "category": path.parent.name, "iou": iou(got, truth), "mask": rec.info["mask"]})
        print(f"{path.stem}: IoU {rows[-1]['iou']:.3f} ({rec.info['mask']})")
    return rows


def procedural_summary(rows: list[dict], title: str) -> list[str]:
    masks = sorted({r["mask"] for r in rows})
    lines = [f"# {title}", "", "Visible-mask IoU against the true visible mask, by the mask zsw reconstruct used",
             "", "| mask | images | IoU |", "| --- | ---: | ---: |"]  # fmt: skip
    for m in [*masks, None]:
        rs = [r["iou"] for r in rows if m is None or r["mask"] == m]
        lines.append(f"| {m or '**all**'} | {len(rs)} | {np.mean(rs):.3f} |")
    return lines


def summary(rows: list[dict], title: str) -> list[str]:
    shapes = [s for s in SHAPES if any(r["shape"] == s for r in rows)]
    kinds = list(dict.fromkeys(r["background"] for r in rows))
    odd_column = any(s != "square" for s in shapes)  # (none where only square photos were run)
    lines = [f"# {title}", "", "Visible-mask IoU in photo pixels, mean over the ten objects", "",
             "| background | " + " | ".join([*shapes, "not square"][: len(shapes) + odd_column]) + " |",
             "| --- | " + " | ".join(["---:"] * (len(shapes) + odd_column)) + " |"]  # fmt: skip
    for kind in [*kinds, "all"]:
        rs = [r for r in rows if kind == "all" or r["background"] == kind]
        cells = [np.mean([r["iou"] for r in rs if r["shape"] == s]) for s in shapes]
        if odd_column:
            cells.append(np.mean([r["iou"] for r in rs if r["shape"] != "square"]))
        name = "**all**" if kind == "all" else kind
        lines.append(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return lines


def main() -> None:
    from zsw.bench._harness import write_rows_and_summary

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output path without suffix")
    ap.add_argument("--backgrounds", default="gravel,grass,brick", help="scikit-image sample photos, comma-separated")
    ap.add_argument("--fraction", type=float, default=0.5, help="the object's longer side over the photo's shorter")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="photo shapes: " + ", ".join(SHAPES))
    ap.add_argument("--weights", default=None, help="checkpoint (default: the packaged model)")
    ap.add_argument("--background", default="auto", choices=("auto", "never"), help="zsw reconstruct's --background")
    ap.add_argument("--procedural", default=None, help="a procedural set's folder: score its images instead")
    ap.add_argument("--cutout", default="auto", help="zsw reconstruct's --cutout (auto, none, grabcut, rembg, ...)")
    ap.add_argument("--degrade", default="none", choices=DEGRADATIONS, help="spoil each photo first (see degrade())")
    args = ap.parse_args()
    if args.procedural:
        data = Path(args.procedural)
        if not (data / "images_processed").is_dir():
            raise SystemExit(f"--procedural: {data} has no images_processed/ (a set of zsw synthesize procedural)")
        rows = run_procedural(data, args.weights, args.background)
        title = f"The visible mask on {data} ({args.weights or 'packaged model'}, --background {args.background})"
        write_rows_and_summary(Path(args.out), rows, procedural_summary(rows, title))
        return
    shapes = tuple(args.shapes.split(","))
    if unknown := [s for s in shapes if s not in SHAPES]:
        raise SystemExit(f"--shapes: unknown {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    from skimage import data

    kinds = args.backgrounds.split(",")
    if unknown := [k for k in kinds if not callable(getattr(data, k, None))]:
        raise SystemExit(f"--backgrounds: {', '.join(unknown)} is not a scikit-image sample photo (gravel, grass, ...)")
    if not 0.0 < args.fraction <= 1.0:
        raise SystemExit(f"--fraction must be in (0, 1], got {args.fraction}")
    rows = run(kinds, args.fraction, args.weights, shapes, background=args.background, cutout=args.cutout,
               spoil=args.degrade)  # fmt: skip
    title = (
        f"The object's mask in photos of every shape ({args.weights or 'packaged model'}, fraction {args.fraction}, "
        f"--background {args.background}, --cutout {args.cutout}, --degrade {args.degrade})"
    )
    write_rows_and_summary(Path(args.out), rows, summary(rows, title))


if __name__ == "__main__":
    main()
