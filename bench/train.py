"""Training-step benchmark: samples/s and peak memory of one optimiser step, kernels on and off.

One step = :class:`zsw.train.step.TrainStep` forward (every loss of the stage) + backward + AdamW
update, exactly as the trainer runs it (parameters the stage never reaches frozen), on a synthetic
but well-formed batch (:func:`zsw.train.step.synthetic_batch`), so no dataset is needed.
Providers: ``triton`` routes the decoder's point cross-attention and occupancy MLP to the Triton
kernels (CUDA, or the interpreter under ``TRITON_INTERPRET=1``, which is for correctness, not
speed), ``torch`` to the PyTorch references. Both run in the same process on the same batch, and
the ``speedup_vs_torch`` column is the ratio of their median step times.

Timing, memory and CSV rows come from the shared harness (:mod:`zsw.bench._harness`): CUDA events
via ``triton.testing.do_bench`` and ``torch.cuda.max_memory_allocated`` on a GPU; wall clock on a
CPU, where the harness does not measure memory and the row's note carries the process's peak RSS.

Example::

    rows = bench_train_step("tiny", batch_size=4, stage="full", impls=("torch",))
    rows, csv = run(preset="tiny", batch_size=4, impls=["torch"], out=Path("train.csv"))  # checked, appended
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["run", "bench_train_step", "profile_step"]


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _raiser(error: Exception):
    def fn() -> None:
        raise error

    return fn


def _step_fn(preset: str, impl: str, cfg, dev: torch.device, points: int):
    """A closure running one optimiser step of a fresh model with decoder kernels ``impl``."""
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
        # named ranges for the profile (--profile); without a profiler they cost a microsecond
        with torch.profiler.record_function("step: forward"):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                loss = step(batch)["total"]
        with torch.profiler.record_function("step: backward"):
            loss.backward()
        with torch.profiler.record_function("step: optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    one_step.model = model
    return one_step


#: the model's parts whose forward passes the profile times on their own (modules called as such)
PROFILED_PARTS = ("text", "pixel", "encoder")
#: and the decoder's methods the training step calls (its latent path, its point path)
PROFILED_METHODS = ("encode", "decode")


def profile_step(fn, dev: torch.device, provider: str, top: int = 12) -> str:
    """Where one step of ``fn`` (from :func:`_step_fn`) spends its time, as markdown: the forward
    pass (and in it each of the model's parts), the backward pass and the optimiser, then the
    ``top`` kernels (GPU) or operators (CPU) by their own time. From ``torch.profiler``: summed
    GPU kernel time on a GPU (against the step's wall time: far apart, the host sets the pace),
    CPU time otherwise."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from zsw.bench._harness import profiled_ranges, ranked_kernels

    cuda = dev.type == "cuda"
    hooks, open_ranges = [], {}
    for name in PROFILED_PARTS:
        module = getattr(fn.model, name, None)
        if module is None:
            continue

        def enter(_m, _args, name=name):
            open_ranges[name] = record_function(f"forward: {name}")
            open_ranges[name].__enter__()

        def leave(_m, _args, _out, name=name):
            open_ranges.pop(name).__exit__(None, None, None)

        hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    decoder = fn.model.decoder
    for method in PROFILED_METHODS:

        def ranged(*args, _call=getattr(decoder, method), _name=f"forward: decoder.{method}", **kwargs):
            with record_function(_name):
                return _call(*args, **kwargs)

        setattr(decoder, method, ranged)  # an instance attribute over the method, removed below
    try:
        fn()  # warm, with the hooks in place
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) * 1e3
    finally:
        for h in hooks:
            h.remove()
        for method in PROFILED_METHODS:
            delattr(decoder, method)
    events = prof.key_averages()
    steps, forward = profiled_ranges(events, cuda, "step: "), profiled_ranges(events, cuda, "forward: ")
    clock = "GPU kernel time" if cuda else "CPU time"
    lines = [f"Where a training step of `{provider}` spends its time (torch.profiler, one step; {clock}; "
             f"the step took {wall:.1f} ms of wall time):", "", "| part | ms |", "|---|---:|"]  # fmt: skip
    parts = [*PROFILED_PARTS, *(f"decoder.{m}" for m in PROFILED_METHODS)]
    for part in ("forward", "backward", "optimizer"):
        total = steps.get(part, float("nan"))
        lines.append(f"| {part} | {total:.2f} |")
        if part == "forward":
            inside = {n: forward[n] for n in parts if n in forward}
            lines += [f"| - {n} | {t:.2f} |" for n, t in inside.items()]
            lines.append(f"| - the rest (lifting, losses) | {total - sum(inside.values()):.2f} |")
    own = ranked_kernels(events, cuda)
    ranked = own[:top]
    if cuda:
        launches, busy = sum(n for _, _, n in own), sum(t for _, t, _ in own)
        lines += ["", f"{launches} kernel launches, {busy:.1f} ms of GPU time. Top {len(ranked)}:"]
    else:
        lines += ["", f"Top {len(ranked)} operators by their own CPU time:"]
    lines += ["", "| kernel | ms | calls |", "|---|---:|---:|"]
    lines += [f"| `{name[:90]}` | {t:.2f} | {n} |" for name, t, n in ranked]
    return "\n".join(lines)


def bench_train_step(
    preset: str = "tiny",
    batch_size: int = 4,
    *,
    stage: str = "full",
    impls: Sequence[str] = ("torch", "triton"),
    amp: str = "off",
    points: int = 4096,
    device: str | torch.device | None = None,
    rep_ms: float = 1000,
    profiles: list[str] | None = None,
) -> list:
    """One :class:`~zsw.bench._harness.BenchRow` per kernel implementation (see the module); given
    a list as ``profiles``, :func:`profile_step`'s breakdown of each implementation is appended to it."""
    from zsw import kernels
    from zsw.bench._harness import add_speedups, environment, mark_interpreter_rows, measure
    from zsw.config import get_model_config
    from zsw.train.config import TrainConfig

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(dev.type)
    cfg = TrainConfig(model=preset, stage=stage, batch_size=batch_size, amp=amp)
    size = get_model_config(preset).pixel.image_size
    rows = []
    for impl in impls:
        common = dict(
            op="train_step",
            case=f"{get_model_config(preset).name}-{stage}",
            provider=impl,
            mode="step",
            dtype="bf16" if amp == "bf16" else "fp32",
            shape=f"B={batch_size} S={size} P={points}",
            work=float(batch_size),
            work_unit="samples/s",
            work_scale=1.0,
        )
        try:
            if impl == "triton":
                for name in ("point_cross_attention", "occupancy_mlp"):
                    kernels.resolve_impl(name, "triton", dev)
            fn = _step_fn(preset, impl, cfg, dev, points)
        except RuntimeError as e:  # no CUDA / no Triton: a NaN row that says why
            rows.append(measure(_raiser(e), env, **common))
            continue
        row = measure(fn, env, warmup_ms=rep_ms / 4, rep_ms=rep_ms, **common)
        if profiles is not None:
            profiles.append(profile_step(fn, dev, impl))
        if dev.type != "cuda":
            extra = f"{torch.get_num_threads()} threads, process peak RSS {_peak_rss_mb():.0f} MB"
            row.note = (row.note + "; " if row.note else "") + extra
        rows.append(row)
        del fn
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    add_speedups(rows, "torch")
    mark_interpreter_rows(rows, lambda r: r.provider == "triton")
    return rows


def run(
    *,
    preset: str = "tiny",
    batch_size: int = 4,
    stage: str = "full",
    impls: Sequence[str] | None = None,
    amp: str = "off",
    points: int = 4096,
    rep_ms: float = 1000,
    device: str | None = None,
    out: Path | None = None,
    profiles: list[str] | None = None,
) -> tuple[list, Path]:
    """``zsw bench train``: check the options and ``out``, run :func:`bench_train_step` (``impls``
    default: torch and triton; ``profiles``: see there), append the rows to ``out`` (default
    ``bench/results/<device>-train.csv``); returns ``(rows, csv path)``."""
    from zsw.bench._harness import append_csv, check_model, check_out_csv, environment, gpu_slug
    from zsw.errors import OptionError
    from zsw.hub import resolve_device
    from zsw.train.config import STAGES

    device = resolve_device(device)  # an unusable --device is a one-line error here, not in the timing
    if stage not in STAGES:
        raise OptionError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if amp not in ("off", "bf16"):
        raise OptionError(f"--amp must be off or bf16, got {amp!r}")
    impls = list(impls or ["torch", "triton"])
    if bad := [i for i in impls if i not in ("torch", "triton", "auto")]:
        raise OptionError(f"--impl must be torch, triton or auto, got {bad[0]!r}")
    check_model(preset, "--preset")
    if out is None:
        out = Path("bench/results") / f"{gpu_slug(environment(torch.device(device).type))}-train.csv"
    check_out_csv(out, "--out")  # before measuring, not after it (the rows would be lost)
    rows = bench_train_step(preset, batch_size, stage=stage, impls=impls, amp=amp, points=points, device=device,
                            rep_ms=rep_ms, profiles=profiles)  # fmt: skip
    append_csv(out, rows)
    return rows, out
