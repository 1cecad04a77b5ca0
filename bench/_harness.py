"""Benchmark harness shared by the zsw benchmarks: timing, peak memory, result rows, CSV.

One measurement is one :class:`BenchRow`: what ran (op, case, provider, mode, dtype, shape), how
long (median and 20th/80th percentiles in ms), its throughput, its peak memory, and the machine it
ran on (GPU, torch and triton versions, git commit, time). Speed-ups are ratios between rows of
the same run (:func:`add_speedups`), never numbers compared across machines or runs.

Typical use::

    env = environment()
    rows = []
    for provider, fn in {"torch": ref_step, "triton": fused_step}.items():
        rows.append(measure(fn, env, op="mlp", case="grid", provider=provider, mode="fwd",
                            dtype="bf16", shape="M=2146689", flops=flops))
    add_speedups(rows, "torch")
    append_csv("bench/results/h100-kernels.csv", rows)

On a GPU, times come from ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs) and
memory from ``torch.cuda.max_memory_allocated``; on a CPU from ``time.perf_counter`` and memory is
not measured (NaN). A provider that raises (out of memory, unsupported shape) becomes a row of NaNs
with the error in ``note``, so one failure never loses the rest of a sweep.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

__all__ = [
    "INTERPRETER_NOTE",
    "mark_interpreter_rows",
    "Environment",
    "Timing",
    "BenchRow",
    "environment",
    "gpu_slug",
    "time_fn",
    "peak_memory_mb",
    "measure",
    "add_speedups",
    "append_csv",
    "read_csv",
    "check_out_file",
    "check_out_csv",
    "check_model",
    "rows_table",
]


@dataclass(frozen=True)
class Environment:
    """Where a benchmark ran."""

    gpu: str  # device name ("NVIDIA H100 80GB HBM3"), or "cpu: <processor>"
    torch: str
    triton: str
    git_sha: str  # commit of the checkout, "+dirty" when it has local changes
    timestamp: str  # UTC, ISO 8601
    device: str  # "cuda" or "cpu"


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p20_ms: float
    p80_ms: float


_NAN_TIMING = Timing(math.nan, math.nan, math.nan)


@dataclass
class BenchRow:
    """One measurement. CSV columns follow the field order; ``speedups`` become ``speedup_vs_<name>``."""

    gpu: str
    torch: str
    triton: str
    git_sha: str
    timestamp: str
    op: str  # what is measured ("point_cross_attention", "train_step", ...)
    case: str  # named shape preset ("grid", "train", ...)
    provider: str  # implementation ("torch", "compile", "triton", ...)
    mode: str  # "fwd", "fwd+bwd", "step", ...
    dtype: str
    shape: str  # human-readable sizes, "B=1 H=8 N=2146689 L=197 D=32"
    p50_ms: float
    p20_ms: float
    p80_ms: float
    throughput: float  # per second, in throughput_unit
    throughput_unit: str  # "TFLOP/s", "Gpairs/s", "Mpoints/s", ...
    peak_mem_mb: float  # allocated during one call, beyond what existed before it (NaN on CPU)
    note: str = ""
    speedups: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "speedups"}
        d.update({f"speedup_vs_{k}": v for k, v in sorted(self.speedups.items())})
        return d


def _git_sha() -> str:
    # an installed wheel has no checkout to ask: bench/gpu_env.sh passes on the commit that
    # bench/gpu_prepare.sh built the wheel from
    if os.environ.get("ZSW_GIT_SHA"):
        return os.environ["ZSW_GIT_SHA"]
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


@functools.cache
def _static_environment(device: str) -> tuple[str, str, str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    if device == "cuda":
        gpu = torch.cuda.get_device_name()
    else:
        gpu = f"cpu: {_cpu_name()}"
    return gpu, torch.__version__, triton_version, _git_sha()


def _cpu_name() -> str:
    """The CPU's model name where Linux tells it ("AMD EPYC ..."), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | None = None) -> Environment:
    """The machine and software versions, stamped with the current time."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu, torch_version, triton_version, sha = _static_environment(device)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Environment(gpu, torch_version, triton_version, sha, now, device)


def gpu_slug(env: Environment) -> str:
    """A file-name friendly device name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    text = env.gpu.split(":")[0] if env.device == "cpu" else env.gpu
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split()) or "unknown"


def time_fn(
    fn: Callable[[], object],
    device: str,
    *,
    warmup_ms: float = 25,
    rep_ms: float = 100,
    grad_to_none: Sequence[torch.Tensor] | None = None,
) -> Timing:
    """Median, 20th and 80th percentile of ``fn()`` in milliseconds."""
    if device == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(
            fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8]
        )
        return Timing(p50, p20, p80)
    fn()  # warm-up (compilation, caches)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 2 or (time.perf_counter() - start) * 1e3 < rep_ms and len(times) < 100:
        for t in grad_to_none or ():
            t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive")
    return Timing(statistics.median(times), q[1], q[7])


def peak_memory_mb(fn: Callable[[], object], device: str) -> float:
    """Peak memory allocated by one call of ``fn`` beyond what was allocated before (NaN on CPU)."""
    if device != "cuda":
        return math.nan
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(
    fn: Callable[[], object],
    env: Environment,
    *,
    op: str,
    case: str,
    provider: str,
    mode: str,
    dtype: str,
    shape: str,
    work: float = math.nan,
    work_unit: str = "TFLOP/s",
    work_scale: float = 1e12,
    grad_to_none: Sequence[torch.Tensor] | None = None,
    warmup_ms: float = 25,
    rep_ms: float = 100,
    note: str = "",
) -> BenchRow:
    """Time ``fn`` and measure its peak memory; any exception becomes a NaN row with the error.

    Args:
        work: amount of work per call (FLOPs, pairs, points); throughput = work / time / work_scale.
        work_unit, work_scale: how to report it, e.g. ``("Gpairs/s", 1e9)``.
    """
    try:
        timing = time_fn(fn, env.device, warmup_ms=warmup_ms, rep_ms=rep_ms, grad_to_none=grad_to_none)
        memory = peak_memory_mb(fn, env.device)
    except Exception as e:  # noqa: BLE001 -- a failing provider is a result, not a crash
        if env.device == "cuda":
            torch.cuda.empty_cache()
        timing, memory = _NAN_TIMING, math.nan
        note = (note + "; " if note else "") + f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    throughput = work / (timing.p50_ms * 1e-3) / work_scale if timing.p50_ms > 0 else math.nan
    return BenchRow(
        gpu=env.gpu,
        torch=env.torch,
        triton=env.triton,
        git_sha=env.git_sha,
        timestamp=env.timestamp,
        op=op,
        case=case,
        provider=provider,
        mode=mode,
        dtype=dtype,
        shape=shape,
        p50_ms=timing.p50_ms,
        p20_ms=timing.p20_ms,
        p80_ms=timing.p80_ms,
        throughput=throughput,
        throughput_unit=work_unit,
        peak_mem_mb=memory,
        note=note,
    )


INTERPRETER_NOTE = "Triton interpreter (TRITON_INTERPRET=1): not kernel speed"


def profiled_ranges(events, cuda: bool, prefix: str) -> dict[str, float]:
    """Milliseconds of each ``torch.profiler.record_function`` range of ``events`` (a profile's
    ``key_averages()``) named ``prefix`` + name, by name: GPU kernel time on a GPU, CPU time
    otherwise. A GPU reports a range twice (its CPU side, its GPU annotation): the larger counts."""
    out: dict[str, float] = {}
    for e in events:
        if e.key.startswith(prefix):
            name, ms = e.key.removeprefix(prefix), (e.device_time_total if cuda else e.cpu_time_total) / 1e3
            out[name] = max(out.get(name, 0.0), ms)
    return out


def ranked_kernels(events, cuda: bool) -> list[tuple[str, float, int]]:
    """``(name, ms, calls)`` of the GPU kernels (CPU: the operators, custom ones included, not the
    ``record_function`` ranges) in ``events``, by their own time, the largest first."""
    from torch.autograd import DeviceType

    if cuda:
        own = [(e.key, e.self_device_time_total / 1e3, e.count) for e in events if e.device_type == DeviceType.CUDA]
    else:
        ops = [e for e in events if not getattr(e, "is_user_annotation", False)]
        own = [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in ops]
    return sorted(own, key=lambda k: k[1], reverse=True)


def mark_interpreter_rows(rows: Sequence[BenchRow], ran_triton: Callable[[BenchRow], bool]) -> bool:
    """Under ``TRITON_INTERPRET=1``, note on every row for which ``ran_triton`` holds that its time
    is the interpreter's (the CSV says so, not only the terminal); returns whether any row was."""
    from zsw.kernels import interpreting

    if not interpreting():
        return False
    marked = [r for r in rows if ran_triton(r)]
    for r in marked:
        r.note = (r.note + "; " if r.note else "") + INTERPRETER_NOTE
    return bool(marked)


def add_speedups(
    rows: Iterable[BenchRow],
    baseline: str,
    *,
    label: str | None = None,
    baseline_dtype: str | None = None,
    match: Sequence[str] = ("op", "case", "mode", "shape", "dtype"),
    where: Callable[[BenchRow], bool] | None = None,
) -> None:
    """Set ``row.speedups[label] = baseline.p50 / row.p50`` for every row that has a baseline.

    The baseline of a row is the row of provider ``baseline`` that agrees with it on ``match``
    (and, with ``baseline_dtype``, has that dtype: e.g. bf16 kernels against the fp32 reference,
    ``add_speedups(rows, "torch", label="torch_fp32", baseline_dtype="fp32", match=("op", "case",
    "mode", "shape"))``). Rows of the baseline provider itself are left alone, and so are rows
    for which ``where(row)`` is false.
    """
    rows = list(rows)
    label = label or baseline
    index = {}
    for r in rows:
        if r.provider == baseline and (baseline_dtype is None or r.dtype == baseline_dtype):
            index.setdefault(tuple(getattr(r, k) for k in match), r)
    for r in rows:
        base = index.get(tuple(getattr(r, k) for k in match))
        if base is None or base is r or (r.provider == baseline and r.dtype == base.dtype):
            continue
        if where is not None and not where(r):
            continue
        r.speedups[label] = base.p50_ms / r.p50_ms if r.p50_ms > 0 else math.nan


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a results CSV as dicts of strings ([] if the file does not exist); an
    :class:`~zsw.errors.InputError` if the file is not a CSV of bench rows (:func:`check_out_csv`)."""
    from zsw.errors import InputError

    path = Path(path)
    if not path.exists():
        return []
    rows, problem = _read_rows(path)
    if problem:
        raise InputError(f"{path} {problem}")
    return rows


def _read_rows(path: Path) -> tuple[list[dict[str, str]], str]:
    """The rows of an existing CSV, and why it is not a CSV of bench rows ("" if it is one)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames, list(reader)
    except (UnicodeDecodeError, csv.Error):
        header, rows = [], []
    if header is None:
        return [], ""  # an empty file: nothing to keep
    columns = [f.name for f in dataclasses.fields(BenchRow) if f.name != "speedups"]
    # csv.DictReader files the fields beyond the header under the key None
    if not set(columns) <= set(header) or any(None in r for r in rows):
        return [], f"is not a CSV of bench rows (expected the columns {', '.join(columns)})"
    return rows, ""


def check_out_file(path: str | Path, option: str, example: str = "bench.csv") -> None:
    """Before any work: ``path`` can be written as a file (it is no folder and its folder can be
    made), else a one-line :class:`~zsw.errors.OptionError` naming ``option``."""
    from zsw.errors import OptionError
    from zsw.io import check_out_folder

    path = Path(path)
    if path.is_dir():
        raise OptionError(f"{option} {path} is a folder; give a file name (e.g. {path / example})")
    check_out_folder(path.parent, f"{option}'s folder")


def check_out_csv(path: str | Path, option: str = "--out") -> None:
    """Before measuring: rows can be appended to ``path`` (:func:`check_out_file`), and a file
    already there is a CSV of bench rows, which :func:`append_csv` keeps (never any other file)."""
    from zsw.errors import OptionError

    check_out_file(path, option)
    path = Path(path)
    if path.exists() and (problem := _read_rows(path)[1]):
        raise OptionError(f"{option} {path} {problem}; give a new file or one written by zsw bench")


def check_model(spec: str, option: str):
    """The model config of a preset name or model YAML; an unknown preset name is a usage error
    (:class:`~zsw.errors.OptionError` naming ``option``), a YAML that does not load keeps its error."""
    from zsw.config import get_model_config
    from zsw.errors import ConfigError, OptionError

    try:
        return get_model_config(spec)
    except ConfigError as e:
        if str(spec).endswith((".yaml", ".yml")) or os.path.sep in str(spec):
            raise
        raise OptionError(f"{option}: {e}") from None


def append_csv(path: str | Path, rows: Sequence[BenchRow]) -> Path:
    """Append ``rows`` to the CSV at ``path`` atomically (the union of old and new columns).

    The file is rewritten to a temporary name and renamed over the old one, so an interrupted run
    never leaves a truncated CSV; rows already there are kept as they were.
    """
    from zsw.io import atomic_write

    path = Path(path)
    old = read_csv(path)
    new = [r.as_dict() for r in rows]
    base_columns = [f.name for f in dataclasses.fields(BenchRow) if f.name != "speedups"]
    extra = sorted({k for d in (*old, *new) for k in d if k not in base_columns})
    columns = base_columns + extra
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(old)
        writer.writerows({k: _fmt(v) for k, v in d.items()} for d in new)
    return path


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return v


def rows_table(rows: Sequence[BenchRow], title: str | None = None):
    """A ``rich.table.Table`` of the rows, one column per speed-up found among them."""
    from rich.table import Table

    speedups = sorted({k for r in rows for k in r.speedups})
    table = Table(title=title)
    for col in ("op", "case", "mode", "dtype", "provider", "p50 ms", "throughput", "peak MB"):
        table.add_column(col, justify="right" if col in ("p50 ms", "throughput", "peak MB") else "left")
    for k in speedups:
        table.add_column(f"x vs {k}", justify="right")
    for r in rows:
        cells = [r.op, r.case, r.mode, r.dtype, r.provider, f"{r.p50_ms:.3f}"]
        cells.append(f"{r.throughput:.3g} {r.throughput_unit}" if not math.isnan(r.throughput) else r.note[:40])
        cells.append("" if math.isnan(r.peak_mem_mb) else f"{r.peak_mem_mb:.0f}")
        cells += [f"{r.speedups[k]:.2f}" if k in r.speedups else "" for k in speedups]
        table.add_row(*cells)
    return table


def output_path(out: str | Path, suffix: str) -> Path:
    """The file ``suffix`` (``.md``, ``.json``, ...) of a bench's ``--out`` path, given without one:
    the suffix appended, so ``runs/small-0.12`` gives ``runs/small-0.12.md`` (``Path.with_suffix``
    would replace ``.12``, and two such runs would write one file); an output suffix given with
    the path is replaced."""
    out = Path(out)
    if out.suffix in (".md", ".json", ".jsonl", ".csv"):
        out = out.with_suffix("")
    return out.with_name(out.name + suffix)


def write_rows_and_summary(out: Path, rows: Iterable[dict], lines: Sequence[str]) -> None:
    """``<out>.jsonl`` (one row per line) and ``<out>.md`` (the summary ``lines``), both atomically,
    the folder made; the summary is printed too."""
    import json

    from zsw.io import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_path(out, ".jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(output_path(out, ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
