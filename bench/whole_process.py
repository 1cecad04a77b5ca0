"""`zsw reconstruct` as a user runs it: whole processes, start-up included, backends alternating.

Each round runs ``python -m zsw reconstruct IMAGE -o TMP --backend B --tta T [--smooth N] --overwrite``
once per backend, test-time augmentation and smoothing, in turn, so that a noisy shared machine slows
every arm alike;
the wall clock is taken around the process, the stage times are read from its ``result.json``. The
medians over rounds go into a markdown table:

    python -m zsw.bench.whole_process examples/teddy_bear.png --backend auto --backend torch \\
        --rounds 5 --out bench/results/cpu-reconstruct-whole-process.md
    python -m zsw.bench.whole_process examples/teddy_bear.png --tta flip --tta none --rounds 7
    python -m zsw.bench.whole_process examples/teddy_bear.png --backend auto --smooth 30 --smooth 0
    python -m zsw.bench.whole_process coffee.jpg --backend auto --background auto --background never
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("pixel", "encode", "grid_decode", "marching_cubes", "smooth_decimate", "preview")


def command(
    image: str, backend: str, out: Path, extra: list[str], tta: str = "auto", smooth: int | None = None,
    background: str | None = None,
) -> list[str]:  # fmt: skip
    """The `zsw reconstruct` process of one run (``smooth``, ``background`` None: the defaults)."""
    cmd = [sys.executable, "-m", "zsw", "reconstruct", image, "-o", str(out), "--backend", backend, "--tta", tta]
    cmd += [] if smooth is None else ["--smooth", str(smooth)]
    cmd += [] if background is None else ["--background", background]
    return [*cmd, "--overwrite", *extra]


def one_run(
    image: str, backend: str, out: Path, extra: list[str], tta: str = "auto", smooth: int | None = None,
    background: str | None = None,
) -> dict:  # fmt: skip
    """Wall seconds of one `zsw reconstruct` process (:func:`command`) and its result.json."""
    cmd = command(image, backend, out, extra, tta, smooth, background)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    result = json.loads((out / Path(image).stem / "result.json").read_text())
    return {"wall": wall, "backend": result["model"]["backend"], "tta": result["model"]["tta"],
            "smooth": result["mesh"]["smooth"], "background": result["request"]["background"],
            "mask": result["mask"], **result["timings_s"], "grid": result["grid"]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image")
    p.add_argument("--backend", action="append", help="repeatable (default: auto and torch)")
    p.add_argument("--tta", action="append", help="repeatable (default: auto, zsw reconstruct's default)")
    p.add_argument("--smooth", type=int, action="append", help="repeatable (default: zsw reconstruct's)")
    p.add_argument("--background", action="append", help="repeatable (default: zsw reconstruct's)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, help="markdown file to write")
    p.add_argument("extra", nargs="*", help="more `zsw reconstruct` options, after --")
    a = p.parse_args(argv)
    arms = [
        (b, t, m, g)
        for b in a.backend or ["auto", "torch"]
        for t in a.tta or ["auto"]
        for m in a.smooth or [None]
        for g in a.background or [None]
    ]
    runs: dict[tuple, list[dict]] = {arm: [] for arm in arms}
    head = "| round | --backend | --tta | --smooth | --background | ran | whole process (s) | "
    lines = [head + " | ".join(f"{s} (s)" for s in STAGES) + " |"]
    lines.append("| ---: | --- | --- | ---: | --- | --- | ---: | " + " | ".join("---:" for _ in STAGES) + " |")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(1, a.rounds + 1):
            for b, t, m, g in arms:
                run = one_run(a.image, b, Path(tmp) / f"{b}-{t}-{m}-{g}", a.extra, t, m, g)
                runs[b, t, m, g].append(run)
                cells = " | ".join(f"{run.get(s, float('nan')):.3f}" for s in STAGES)
                arm = f"{b} | {t} | {run['smooth']} | {run['background']} | {run['backend']}, {run['tta']}"
                lines.append(f"| {r} | {arm} | {run['wall']:.2f} | {cells} |")
                print(lines[-1], flush=True)
    lines += ["", "Medians:", ""]
    for (b, t, _, _), rs in runs.items():
        med = {k: statistics.median(x.get(k, float("nan")) for x in rs) for k in ("wall", *STAGES)}
        grid = rs[-1]["grid"]
        lines.append(
            f"* `--backend {b} --tta {t} --smooth {rs[-1]['smooth']} --background {rs[-1]['background']}` "
            f"({rs[-1]['backend']}, {rs[-1]['tta']}, mask {rs[-1]['mask']}): "
            f"whole process **{med['wall']:.2f} s** "
            f"(range {min(x['wall'] for x in rs):.2f}-{max(x['wall'] for x in rs):.2f}); "
            + ", ".join(f"{s} {med[s]:.3f} s" for s in STAGES)
            + f"; {grid['evaluated_points']:,} of {grid['grid_points']:,} grid points decoded"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        from zsw.io import atomic_write_text

        atomic_write_text(a.out, text)


if __name__ == "__main__":
    main()
