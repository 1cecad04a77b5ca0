"""What a phone-sized photo costs `zsw reconstruct`, with and without zsw's two large-photo paths.

The bundled teddy bear is scaled into a 4:3 JPEG (or ``--format png``) of each ``--megapixels``.
Each photo runs in two modes, each in a fresh process that warms up on a small photo first:

* ``zsw``: as shipped -- the model input's resize box-averages first (``REDUCING_GAP``) and a photo
  over ``DECODE_SIDE`` pixels is read at 1/2, 1/4 or 1/8 (by the JPEG decoder; other formats
  box-reduced once decoded);
* ``exact``: both off (an exact Lanczos resize of the full-size photo), as zsw did before.

Per photo and mode: the median seconds of ``load_image`` and of the whole ``zsw.reconstruct`` (packaged
model, defaults) over ``--rounds``, the process's peak memory, and how far the model input is from the
exact mode's (mean and largest absolute difference, 0-255). Modes alternate per photo, so a noisy
shared machine slows both alike; the ratios compare them within one run.

    python -m zsw.bench.photo_sizes [--megapixels 12 48 200] [--rounds 3] [--format jpg|png] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("zsw", "exact")

_CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np
import zsw
import zsw.infer.image as image

photo, mode, rounds, inputs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "exact":
    image.REDUCING_GAP, image.DECODE_SIDE = None, 1 << 30
zsw.reconstruct(sys.argv[5])  # warm-up: model, imports
load, whole = [], []
for _ in range(rounds):
    t = time.perf_counter()
    im = image.load_image(photo)
    load.append(time.perf_counter() - t)
    t = time.perf_counter()
    zsw.reconstruct(photo)
    whole.append(time.perf_counter() - t)
np.save(inputs, im.image)
print(json.dumps({"load_s": statistics.median(load), "reconstruct_s": statistics.median(whole),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "size": list(im.original_size)}))
"""


def make_photo(megapixels: float, path: Path) -> tuple[int, int]:
    """The teddy bear on a plain 4:3 canvas of about ``megapixels``, as a JPEG (quality 90) or, by
    ``path``'s suffix, a PNG (the fastest compression: the bench times reading, not writing)."""
    from PIL import Image

    h = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    w = h * 4 // 3
    prev, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        bear = Image.open(REPO / "examples" / "teddy_bear.png").convert("RGB").resize((h, h), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (w, h), (200, 190, 180))
        canvas.paste(bear, ((w - h) // 2, 0))
        canvas.save(path, **({"compress_level": 1} if path.suffix == ".png" else {"quality": 90}))
    finally:
        Image.MAX_IMAGE_PIXELS = prev
    return w, h


def measure(megapixels: list[float], rounds: int = 3, fmt: str = "jpg") -> list[dict]:
    """One row per photo (``fmt``: ``jpg`` or ``png``) and mode."""
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in megapixels:
            photo = Path(tmp) / f"photo-{mp:g}mp.{fmt}"
            w, h = make_photo(mp, photo)
            inputs = {}
            for mode in MODES:
                inputs[mode] = Path(tmp) / f"{mode}.npy"
                cmd = [sys.executable, "-c", _CHILD, str(photo), mode, str(rounds), str(inputs[mode]),
                       str(REPO / "examples" / "toy.png")]  # fmt: skip
                done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                rows.append({"megapixels": mp, "photo": f"{w}x{h} {fmt.upper()}", "mode": mode,
                             **json.loads(done.stdout.strip().splitlines()[-1])})  # fmt: skip
            d = np.abs(np.load(inputs["zsw"]).astype(int) - np.load(inputs["exact"]).astype(int))
            rows[-2].update(input_diff_mean=float(d.mean()), input_diff_max=int(d.max()))
            rows[-1].update(input_diff_mean=0.0, input_diff_max=0)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| photo | mode | decoded at | load_image (s) | zsw.reconstruct (s) | peak memory (MB) "
        "| input vs exact: mean / max |\n| --- | --- | --- | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['megapixels']:g} MP ({r['photo']}) | {r['mode']} | {r['size'][0]}x{r['size'][1]} "
            f"| {r['load_s']:.3f} | {r['reconstruct_s']:.2f} | {r['peak_mb']:.0f} "
            f"| {r['input_diff_mean']:.3f} / {r['input_diff_max']} |"
        )
    ratios = []
    for z, e in zip(rows[::2], rows[1::2]):
        ratios.append(
            f"* {z['megapixels']:g} MP: speed-up (exact's seconds / zsw's) load_image "
            f"{e['load_s'] / z['load_s']:.1f}x, zsw.reconstruct {e['reconstruct_s'] / z['reconstruct_s']:.2f}x; "
            f"peak memory {z['peak_mb'] / e['peak_mb']:.2f} of exact's"
        )
    return "\n".join(lines) + "\n\nzsw against exact, in this run:\n\n" + "\n".join(ratios) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megapixels", type=float, nargs="+", default=[12, 48, 200])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="the photos' format")
    p.add_argument("--out", type=Path, help="markdown file to write")
    a = p.parse_args(argv)
    import PIL
    import torch

    text = table(measure(a.megapixels, a.rounds, a.format))
    text += f"\n{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
    text += f"torch {torch.__version__}, Pillow {PIL.__version__}\n"
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)


if __name__ == "__main__":
    main()
