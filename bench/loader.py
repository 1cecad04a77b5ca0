"""Samples per second of the training data loader (``ShapeDataset.__getitem__``) in one process
and on one thread, per training stage, with the top of its profile.

The datasets are built as the trainer builds them (``zsw.train.setup.datasets``) from each
``--config`` with its ``data.roots`` replaced by ``--data`` and validation off. Items are read in
a fixed shuffled order (as the trainer's sampler reads them) over as many epochs as ``--samples``
needs; one untimed item first (imports, scikit-image's photos). The rate is what one DataLoader
worker delivers on one CPU core, so a trainer with ``w`` workers on ``w`` free cores gets about
``w`` times it.

    python -m zsw.bench.loader --data /tmp/loader-data [--config configs/gpu/shape.yaml ...] [--samples 120]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import time
from pathlib import Path

import numpy as np

#: the GPU demo's stages (bench/gpu_train_demo.sh)
CONFIGS = ("configs/gpu/pixel.yaml", "configs/gpu/shape.yaml", "configs/gpu/full.yaml")


def stage_dataset(config: str | Path, data: list[str | Path], model: str | Path | None = None):
    """``(stage, training ShapeDataset)`` of a training YAML on ``data``, as the trainer makes it."""
    from zsw.config import get_model_config, load_yaml, replace
    from zsw.train.config import TrainConfig
    from zsw.train.setup import datasets

    # the YAML as `zsw train --config` reads it (compose), without resolving init weights the data never use
    cfg = load_yaml(config, TrainConfig)
    cfg = replace(cfg, validate=False, model=str(model) if model else cfg.model,
                  data=replace(cfg.data, roots=tuple(str(d) for d in data), val_roots=()))  # fmt: skip
    train, _ = datasets(cfg, get_model_config(cfg.model).pixel.image_size, lambda _: None)
    return cfg.stage, train


def _order(n_items: int, samples: int, seed: int = 0) -> list[tuple[int, int]]:
    """``(epoch, index)`` pairs: a shuffled order per epoch, as many as ``samples``."""
    out: list[tuple[int, int]] = []
    epoch = 0
    while len(out) < samples:
        perm = np.random.default_rng([seed, epoch]).permutation(n_items)
        out.extend((epoch, int(i)) for i in perm[: samples - len(out)])
        epoch += 1
    return out


def _run(dataset, order: list[tuple[int, int]]) -> None:
    for epoch, index in order:
        if dataset.epoch != epoch:
            dataset.set_epoch(epoch)
        dataset[index]


def rate(dataset, samples: int) -> dict[str, float]:
    """Wall and CPU time of ``samples`` items: ``samples_per_s`` (wall) and ``samples_per_cpu_s``."""
    dataset.set_epoch(0)
    dataset[0]  # warm-up: lazy imports, scikit-image's photos
    order = _order(len(dataset), samples)
    wall, cpu = time.perf_counter(), time.process_time()
    _run(dataset, order)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"samples": samples, "wall_s": wall, "cpu_s": cpu, "samples_per_s": samples / wall,
            "samples_per_cpu_s": samples / cpu if cpu > 0 else math.inf}  # fmt: skip


def profile(dataset, samples: int, top: int = 15) -> str:
    """cProfile of ``samples`` items: the ``top`` lines by cumulative time, then by own time."""
    order = _order(len(dataset), samples, seed=1)
    prof = cProfile.Profile()
    prof.enable()
    _run(dataset, order)
    prof.disable()
    out = io.StringIO()
    for key in ("cumulative", "tottime"):
        out.write(f"-- sorted by {key}\n")
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats(key).print_stats(top)
    # pstats prints absolute paths and a banner per call: keep the table lines
    lines = [line.replace(str(Path.cwd()) + "/", "") for line in out.getvalue().splitlines()]
    drop = ("function calls", "Ordered by")
    return "\n".join(line for line in lines if line.strip() and not any(d in line for d in drop))


def measure(data: list[str | Path], configs=CONFIGS, samples: int = 120, profile_samples: int = 0, top: int = 15,
            model: str | Path | None = None) -> list[dict]:  # fmt: skip
    """Per config: stage, rate (see :func:`rate`), dataset size and (``profile_samples``) the profile."""
    rows = []
    for config in configs:
        stage, ds = stage_dataset(config, data, model)
        row = {"config": str(config), "stage": stage, "items": len(ds), "size": ds.size, **rate(ds, samples)}
        if profile_samples > 0:
            row["profile"] = profile(ds, profile_samples, top)
        rows.append(row)
    return rows


def markdown(rows: list[dict], data: list[str | Path]) -> str:
    import PIL
    import scipy

    from zsw.bench._harness import environment

    env = environment("cpu")
    lines = [
        f"Data loader, one process, one thread: {env.gpu}; torch {env.torch}, numpy {np.__version__}, "
        f"Pillow {PIL.__version__}, scipy {scipy.__version__}; commit {env.git_sha}, {env.timestamp}.",
        f"Data: {', '.join(str(d) for d in data)}.",
        "",
        "| config | stage | items | image size | samples | samples/s | samples per CPU-s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['config']} | {r['stage']} | {r['items']} | {r['size']} | {r['samples']} | "
                     f"{r['samples_per_s']:.1f} | {r['samples_per_cpu_s']:.1f} |")  # fmt: skip
    for r in rows:
        if "profile" in r:
            lines += ["", f"Profile of stage {r['stage']} ({r['config']}):", "", "```", r["profile"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="dataset root (repeatable)")
    parser.add_argument("--config", action="append", default=None, help=f"training YAML (default: {' '.join(CONFIGS)})")
    parser.add_argument("--model", default=None, help="model preset or YAML instead of the configs' (its image size)")
    parser.add_argument("--samples", type=int, default=120, help="timed items per stage")
    parser.add_argument("--profile", type=int, default=60, help="profiled items per stage (0: no profile)")
    parser.add_argument("--top", type=int, default=15, help="profile lines shown per ordering")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a DataLoader worker: 1)")
    parser.add_argument("--out", type=Path, default=None, help="write the report here too (markdown)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args.data, tuple(args.config or CONFIGS), args.samples, args.profile, args.top, args.model)
    text = markdown(rows, args.data)
    print(text, end="")
    if args.out is not None:
        from zsw.io import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
