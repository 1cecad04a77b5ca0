"""Training-step benchmark: samples/s and peak memory of one optimiser step, kernels on and off.

One step = :class:`zsw.train.step.TrainStep` forward (all losses of the stage) + backward + AdamW
update, exactly as the trainer runs it, on a synthetic but well-formed batch
(:func:`zsw.train.step.synthetic_batch`: a disc of depth facing the camera, ZeroShape's default K,
random query points and labels), so no dataset is needed. ``impl="torch"`` routes the decoder
to the PyTorch references, ``impl="triton"`` to the Triton kernels (CUDA, or the interpreter under
``TRITON_INTERPRET=1``, which is for correctness, not speed). The ratio is measured in the same
process, on the same batch, one after the other.

Self-contained (no shared harness was available when this was written): timing is the median of
``steps`` wall-clock steps after ``warmup`` ones, synchronised on CUDA; peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and the process's peak resident set size on the CPU
(monotonic over the process, so only the first configuration's CPU figure is its own).

Example::

    rows = bench_train_step("tiny", batch_size=4, stage="full", impls=("torch",))
    write_csv(rows, "bench/results/train.csv")
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

__all__ = ["bench_train_step", "write_csv", "format_rows"]


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _time_steps(preset: str, impl: str, cfg, dev: torch.device, points: int, steps: int, warmup: int):
    """Median seconds per optimiser step and peak memory (MiB) for one kernel implementation."""
    from zsw.model import build_model
    from zsw.train.step import TrainStep, param_groups, set_trainable, synthetic_batch, unused_parameters

    torch.manual_seed(0)
    model = build_model(preset).to(dev)
    model.set_kernel_impl(impl)
    set_trainable(model, cfg.stage)
    model.train()
    step = TrainStep(model, cfg)
    for name in unused_parameters(step, dev):
        model.get_parameter(name).requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, cfg.stage, cfg.optim), betas=cfg.optim.betas)
    batch = synthetic_batch(cfg.batch_size, model.config.pixel.image_size, points, dev)
    autocast = cfg.amp == "bf16"

    def one_step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss = step(batch)["total"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        one_step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one_step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _peak_rss_mb()
    return statistics.median(times), peak


def bench_train_step(
    preset: str = "tiny",
    batch_size: int = 4,
    *,
    stage: str = "full",
    impls: Sequence[str] = ("torch", "triton"),
    amp: str = "off",
    steps: int = 5,
    warmup: int = 2,
    points: int = 4096,
    device: str | torch.device | None = None,
) -> list[dict]:
    """One row per kernel implementation (see the module docstring)."""
    from zsw import kernels
    from zsw.train.config import TrainConfig

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = TrainConfig(model=preset, stage=stage, batch_size=batch_size, amp=amp)
    rows = []
    base = None
    for impl in impls:
        row = dict(
            preset=preset, stage=stage, batch_size=batch_size, impl=impl, amp=amp, device=str(dev),
            device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            threads=torch.get_num_threads(), torch=torch.__version__,
            timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )  # fmt: skip
        try:
            if impl == "triton":
                kernels.resolve_impl("point_cross_attention", "triton", dev)
                kernels.resolve_impl("occupancy_mlp", "triton", dev)
        except RuntimeError as e:
            rows.append({**row, "status": f"unavailable: {e}"})
            continue
        median, peak = _time_steps(preset, impl, cfg, dev, points, steps, warmup)
        row.update(
            status="ok",
            step_ms=round(median * 1e3, 3),
            samples_per_s=round(batch_size / median, 3),
            peak_memory_mb=round(peak, 1),
            memory_kind="cuda_max_allocated" if dev.type == "cuda" else "process_peak_rss",
        )
        if base is None:
            base = median
        row["speedup_vs_first"] = round(base / median, 3)
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['preset']} {r['stage']} b{r['batch_size']} {r['impl']:6s}: {r['status']}")
            continue
        lines.append(
            f"{r['preset']} {r['stage']} b{r['batch_size']} {r['impl']:6s} {r['amp']}: {r['step_ms']:.1f} ms/step, "
            f"{r['samples_per_s']:.2f} samples/s, peak {r['peak_memory_mb']:.0f} MB ({r['memory_kind']}), "
            f"x{r['speedup_vs_first']:.2f} vs first ({r['device_name']})"
        )
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Append rows to a CSV (header written when the file is new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    new = not path.exists()
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        fields = header + [k for k in fields if k not in header]
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)
    return path
