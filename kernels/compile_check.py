"""Compile every Triton kernel of zsw.kernels for Hopper (sm_90) and Ampere (sm_80) on a CPU.

No GPU is needed: ``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget(...))``
lowers a kernel all the way to PTX and a cubin on any machine, and ptxas (shipped in triton's wheel)
reports registers and spills. The kernels are compiled exactly as the dispatch would launch them:

1. each launcher runs at the model's real shapes on CPU tensors with its autotuned kernel object
   replaced by a :class:`_Capture`, which records the launch (arguments, meta-parameters) and stops
   it before any work is done;
2. the autotuner's own pruning chooses the configs for that launch, with the *target's* shared
   memory limit standing in for the device's (:func:`zsw.kernels._utils.shared_memory_limit`);
3. the JIT's own binder turns the arguments into a signature, constexprs and alignment attributes
   (so the compiled code is the one a GPU would get), and every kept config is compiled.

Each result carries registers per thread, spill bytes (ptxas), dynamic shared memory (Triton's
metadata) and whether the PTX uses ``wgmma``. Run as a script to print or write the table::

    python -m zsw.kernels.compile_check                               # all of them, a table
    python -m zsw.kernels.compile_check --write-table docs/kernels.md
    python -m zsw.kernels.compile_check --json out.json               # what the tests read

Must run **without** ``TRITON_INTERPRET`` (the interpreter replaces JIT functions, which cannot be
compiled); :func:`run_subprocess` starts it in a clean child process for the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TARGETS",
    "Case",
    "Result",
    "cases",
    "compile_case",
    "run_matrix",
    "run_subprocess",
    "format_table",
    "write_table",
]

#: Shared memory a block may opt into, in bytes (cudaDevAttrMaxSharedMemoryPerBlockOptin): 227 KB
#: on sm_90 (H100/H200: 228 KB per SM, 1 KB reserved), 163 KB on sm_80 (A100: 164 KB per SM).
TARGETS: dict[int, int] = {90: 232_448, 80: 166_912}

# The model's shapes (ZeroShape's decoder; see docs/kernels.md and bench/kernels.py)
ATTN = dict(B=1, H=8, N=4096, L=197, D=32)
MLP = dict(M=65_536, C_IN=259, WIDTH=256, HIDDEN=8, C_OUT=1, SKIPS=(2, 4, 6))
CLOUD = 10_000
FFN = dict(M=65_536, C=256, H=1024)  # the decoder blocks' feed-forward (mlp_ratio 4)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp32-tf32": torch.float32}
TABLE_BEGIN = "<!-- compile-table:begin (written by python -m zsw.kernels.compile_check) -->"
TABLE_END = "<!-- compile-table:end -->"


@dataclass(frozen=True)
class Case:
    """One compilation: a kernel launch (name, dtype) with one autotune config for one target."""

    kernel: str  # a key of _LAUNCHERS: attn_fwd, attn_bwd, mlp_fwd, mlp_fwd_save, mlp_bwd, mlp_fwd_onchip, ffn_fwd, nn
    dtype: str  # a key of DTYPES; "fp32" is IEEE, "fp32-tf32" with TF32 allowed
    config: str  # e.g. "BLOCK_N=64 w4 s2"
    arch: int  # 90 or 80


@dataclass
class Result:
    case: Case
    regs: int = -1
    spill_stores: int = -1  # bytes
    spill_loads: int = -1  # bytes
    stack: int = -1  # bytes of stack frame
    shared: int = -1  # bytes of dynamic shared memory
    shared_estimate: int = -1  # the pruning's estimate for this config (-1: the kernel has none)
    wgmma: bool = False
    dot16: bool = False  # the kernel has fp16/bf16 dots (so wgmma is expected on sm_90)
    seconds: float = 0.0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spill_bytes(self) -> int:
        return self.spill_stores + self.spill_loads

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("case"))
        return d


# ----------------------------------------------------------------------------------------------
# Capturing launches
# ----------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by a capture once the launch is recorded: the launcher does no work."""


@dataclass
class Launch:
    tuner: Any  # triton Autotuner
    args: tuple
    kwargs: dict[str, Any]


class _Capture:
    """Stands in for an autotuned kernel: ``capture[grid](*args, **meta)`` records and stops."""

    def __init__(self, tuner: Any) -> None:
        self.tuner = tuner
        self.launch: Launch | None = None

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.launch = Launch(self.tuner, args, kwargs)
            raise _Stop

        return launch


def _capture(module: Any, attr: str, call: Callable[[], Any]) -> Launch:
    """Run ``call`` (a launcher) with ``module.attr`` (its autotuned kernel) replaced by a capture."""
    tuner = getattr(module, attr)
    cap = _Capture(tuner)
    setattr(module, attr, cap)
    try:
        call()
    except _Stop:
        pass
    finally:
        setattr(module, attr, tuner)
    if cap.launch is None:
        raise RuntimeError(f"{module.__name__}.{attr} was not launched")
    return cap.launch


@contextlib.contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _attn_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """q, k, v as slices of one fused qkv projection (the model's layout), latents contiguous."""
    B, H, N, L, D = (ATTN[k] for k in "BHNLD")
    qkv = torch.empty(B, N, 3, H, D, dtype=dtype).permute(2, 0, 3, 1, 4)  # [3, B, H, N, D]
    lat = torch.empty(2, B, H, L, D, dtype=dtype)
    return qkv[0], qkv[1], qkv[2], lat[0], lat[1]


def _launch_attn(kernel: str, dtype: torch.dtype) -> Launch:
    mod = importlib.import_module("zsw.kernels.point_cross_attention")

    q, k, v, kl, vl = _attn_inputs(dtype)
    if kernel == "attn_fwd":
        return _capture(mod, "_fwd_tuned", lambda: mod.point_attn_fwd(q, k, v, kl, vl, 0.17))
    out = mod._empty_out(q)
    lse = torch.empty(q.shape[:3], dtype=torch.float32)
    grad = torch.empty_like(out)
    return _capture(mod, "_bwd_tuned", lambda: mod.point_attn_bwd(grad, q, k, v, kl, vl, out, lse, 0.17))


def _mlp_packed(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    from zsw.kernels.occupancy_mlp import pack_weights

    c_in, w, hidden, c_out, skips = MLP["C_IN"], MLP["WIDTH"], MLP["HIDDEN"], MLP["C_OUT"], MLP["SKIPS"]
    dims = [c_in] + [w] * hidden + [c_out]
    weights = [torch.empty(dims[l + 1], dims[l] + (c_in if l in skips else 0)) for l in range(len(dims) - 1)]
    biases = [torch.empty(dims[l + 1]) for l in range(len(dims) - 1)]
    w_packed, b_packed, W, C_in, C_out, x_layers = pack_weights(weights, biases, skips, dtype)
    x = torch.empty(MLP["M"], C_in, dtype=dtype)
    return x, w_packed, b_packed, W, C_out, x_layers


def _launch_mlp(kernel: str, dtype: torch.dtype) -> Launch:
    mod = importlib.import_module("zsw.kernels.occupancy_mlp")

    x, wp, bp, W, C_out, x_layers = _mlp_packed(dtype)
    if kernel in ("mlp_fwd", "mlp_fwd_save"):
        save = kernel == "mlp_fwd_save"
        return _capture(mod, "_fwd_tuned", lambda: mod.occ_mlp_fwd(x, wp, bp, W, C_out, x_layers, 100.0, save))
    hs = torch.empty(wp.shape[0] - 1, MLP["M"], W, dtype=dtype)
    dy = torch.empty(MLP["M"], C_out, dtype=dtype)
    return _capture(mod, "_bwd_tuned", lambda: mod.occ_mlp_bwd(dy, x, wp, hs, W, C_out, x_layers, 100.0))


def _launch_mlp_onchip(kernel: str, dtype: torch.dtype) -> Launch:
    mod = importlib.import_module("zsw.kernels.occupancy_mlp")

    x, wp, bp, W, C_out, x_layers = _mlp_packed(dtype)
    return _capture(mod, "_onchip_tuned", lambda: mod._fwd_onchip(x, wp, bp, W, C_out, x_layers, 100.0))


def _launch_ffn(kernel: str, dtype: torch.dtype) -> Launch:
    mod = importlib.import_module("zsw.kernels.feed_forward")

    C, H = FFN["C"], FFN["H"]
    x = torch.empty(FFN["M"], C, dtype=dtype)
    w1, b1, w2, b2 = (
        torch.empty(H, C, dtype=dtype),
        torch.empty(H, dtype=dtype),
        torch.empty(C, H, dtype=dtype),
        torch.empty(C, dtype=dtype),
    )
    return _capture(mod, "_tuned", lambda: mod.ffn_fwd(x, w1, b1, w2, b2))


def _launch_nn(kernel: str, dtype: torch.dtype) -> Launch:
    mod = importlib.import_module("zsw.kernels.chamfer")

    a = torch.empty(1, CLOUD, 3, dtype=dtype)
    b = torch.empty(1, CLOUD, 3, dtype=dtype)
    return _capture(mod, "_nn_tuned", lambda: mod.nn_index(a, b, None, None, False))


_LAUNCHERS: dict[str, Callable[[str, torch.dtype], Launch]] = {
    "attn_fwd": _launch_attn,
    "attn_bwd": _launch_attn,
    "mlp_fwd": _launch_mlp,
    "mlp_fwd_save": _launch_mlp,
    "mlp_bwd": _launch_mlp,
    "mlp_fwd_onchip": _launch_mlp_onchip,
    "ffn_fwd": _launch_ffn,
    "nn": _launch_nn,
}
#: dtypes each kernel is launched with (the Chamfer search converts to fp32 and has no dots)
KERNEL_DTYPES: dict[str, tuple[str, ...]] = {
    "attn_fwd": ("bf16", "fp16", "fp32", "fp32-tf32"),
    "attn_bwd": ("bf16", "fp16", "fp32", "fp32-tf32"),
    "mlp_fwd": ("bf16", "fp16", "fp32", "fp32-tf32"),
    "mlp_fwd_save": ("bf16", "fp16", "fp32", "fp32-tf32"),
    "mlp_bwd": ("bf16", "fp16", "fp32", "fp32-tf32"),
    "mlp_fwd_onchip": ("bf16", "fp16"),  # 16-bit only (fp32 runs the layered forward)
    "ffn_fwd": ("bf16", "fp16"),  # 16-bit only (fp32 runs the reference)
    "nn": ("fp32",),
}
#: targets each kernel is compiled for where not all of TARGETS: the on-chip MLP forward loads by
#: TMA, which Hopper introduced (the dispatch never launches it below compute capability 9.0)
KERNEL_ARCHS: dict[str, tuple[int, ...]] = {"mlp_fwd_onchip": (90,), "ffn_fwd": (90,)}


#: kernels without dots (wgmma does not apply)
NO_DOT_KERNELS = ("nn",)
#: kernels with a single config, which the autotuner never prunes (so no shared-memory estimate):
#: the on-chip MLP forward's 48 KB fit every GPU it runs on (compute capability 9.0 and newer); the
#: fused feed-forward's 224 KB are checked against the device before it is chosen (fused_applies)
UNPRUNED_KERNELS = ("mlp_fwd_onchip", "ffn_fwd")


def _config_name(config: Any) -> str:
    meta = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{meta} w{config.num_warps} s{config.num_stages}"


@contextlib.contextmanager
def _as_target(arch: int) -> Iterator[None]:
    """Make the pruning see the target's shared memory and capability instead of asking a GPU."""
    limit = TARGETS[arch]
    from zsw.kernels import _utils

    before = _utils.shared_memory_limit_override, _utils.capability_override
    _utils.shared_memory_limit_override, _utils.capability_override = limit, arch
    try:
        yield
    finally:
        _utils.shared_memory_limit_override, _utils.capability_override = before


def launch_of(kernel: str, dtype: str) -> Launch:
    with _tf32(dtype == "fp32-tf32"):
        return _LAUNCHERS[kernel](kernel, DTYPES[dtype])


def configs_of(launch: Launch, arch: int, estimates: dict[str, int] | None = None) -> list[Any]:
    """The configs the autotuner would try for this launch on a device of architecture ``arch``.

    ``estimates``, if given, receives the pruning's shared-memory estimate of each config (by
    name), read by wrapping the kernel module's ``fits_shared_memory``."""
    tuner = launch.tuner
    module = sys.modules[tuner.fn.module]
    fits = getattr(module, "fits_shared_memory", None)

    def recording(configs: list, device: torch.device, estimate: Callable[[Any], int]) -> list:
        if estimates is not None:
            estimates.update({_config_name(c): estimate(c) for c in configs})
        return fits(configs, device, estimate)

    tuner.nargs = dict(zip(tuner.arg_names, launch.args))
    if fits is not None:
        module.fits_shared_memory = recording
    try:
        with _as_target(arch):
            return list(tuner.prune_configs(launch.kwargs)) if len(tuner.configs) > 1 else list(tuner.configs)
    finally:
        tuner.nargs = None
        if fits is not None:
            module.fits_shared_memory = fits


def cases(kernels: list[str] | None = None, archs: tuple[int, ...] = (90, 80)) -> list[Case]:
    """Every (kernel, dtype, config, target) the dispatch can choose at the model's shapes."""
    out = []
    for kernel in kernels or list(_LAUNCHERS):
        for dtype in KERNEL_DTYPES[kernel]:
            launch = launch_of(kernel, dtype)
            for arch in archs:
                if arch in KERNEL_ARCHS.get(kernel, TARGETS):
                    out += [Case(kernel, dtype, _config_name(c), arch) for c in configs_of(launch, arch)]
    return out


# ----------------------------------------------------------------------------------------------
# Compiling one case
# ----------------------------------------------------------------------------------------------


def _ptxas_report(log: str) -> dict[str, int]:
    """Registers, spill and stack bytes from ``ptxas -v`` output."""

    def grab(pattern: str) -> int:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return {
        "regs": grab(r"Used (\d+) registers"),
        "spill_stores": grab(r"(\d+) bytes spill stores"),
        "spill_loads": grab(r"(\d+) bytes spill loads"),
        "stack": grab(r"(\d+) bytes stack frame"),
    }


def _run_ptxas(ptx: str, arch: int) -> str:
    """``ptxas -v`` on the PTX, as triton runs it (used when the cubin came from triton's cache)."""
    from triton.backends.nvidia.compiler import get_ptxas

    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "k.ptx")
        src.write_text(ptx)
        cmd = [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}{suffix}", str(src)]
        cmd += ["-o", str(Path(tmp, "k.o"))]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr


def loop_instructions(cubin: bytes) -> int:
    """SASS instructions in the longest loop of ``cubin`` (the body between a label and the
    backward branch to it), read with the ``nvdisasm`` of triton's wheel: for a kernel whose work
    is one loop, what each trip costs the issue slots."""
    from triton import knobs

    nvdisasm = knobs.nvidia.nvdisasm.path  # the wheel's, or TRITON_NVDISASM_PATH
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "k.cubin")
        path.write_bytes(cubin)
        sass = subprocess.run([str(nvdisasm), "-c", str(path)], capture_output=True, text=True, check=True).stdout
    lines = sass.splitlines()
    instruction = re.compile(r"/\*[0-9a-f]{4,}\*/")
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"\s*(\.L_x_\d+):", line))}
    longest = 0
    for i, line in enumerate(lines):
        m = re.search(r"\bBRA\b.*?(\.L_x_\d+)", line)
        if m and labels.get(m.group(1), i) < i:
            longest = max(longest, sum(1 for x in lines[labels[m.group(1)] : i + 1] if instruction.search(x)))
    return longest


def _compile(launch: Launch, config: Any, arch: int) -> tuple[Any, str]:
    """Compile ``launch`` with ``config`` for ``arch`` through the JIT's binder; (kernel, ptxas log)."""
    import triton
    from triton import knobs
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    fn = launch.tuner.fn
    target = GPUTarget("cuda", arch, 32)
    backend = backends["nvidia"].compiler(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**launch.kwargs, **config.all_kwargs()}
    if config.pre_hook is not None:  # e.g. a TMA descriptor's block shape follows the config
        config.pre_hook({**dict(zip(fn.arg_names, launch.args)), **launch.kwargs, **config.kwargs})
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    log = io.StringIO()
    with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        kernel = triton.compile(src, target=target, options=options.__dict__)
    return kernel, log.getvalue()


def compile_case(case: Case) -> Result:
    """Compile one case and read its resources; errors are recorded, not raised."""
    t0 = time.perf_counter()
    result = Result(case)
    try:
        launch = launch_of(case.kernel, case.dtype)
        estimates: dict[str, int] = {}
        configs = {_config_name(c): c for c in configs_of(launch, case.arch, estimates)}
        result.shared_estimate = estimates.get(case.config, -1)
        kernel, log = _compile(launch, configs[case.config], case.arch)
        ptx = kernel.asm["ptx"]
        if "Used" not in log:  # a cache hit: triton did not run ptxas
            log = _run_ptxas(ptx, case.arch)
        for key, value in _ptxas_report(log).items():
            setattr(result, key, value)
        result.shared = int(kernel.metadata.shared)
        result.wgmma = "wgmma" in ptx
        result.dot16 = case.dtype in ("bf16", "fp16") and bool(re.search(r"\b(mma|wgmma)\.", ptx))
        if case.kernel == "nn":  # one loop over the searched points: its cost per pair of points
            config = configs[case.config]
            pairs = config.kwargs["BLOCK_N"] * config.kwargs["BLOCK_M"] / (32 * config.num_warps)
            result.extra["instructions_per_pair"] = round(loop_instructions(kernel.asm["cubin"]) / pairs, 2)
    except Exception as e:  # noqa: BLE001 - a failed compile is a result the test reports
        result.error = f"{type(e).__name__}: {str(e)[:2000]}"
    result.seconds = round(time.perf_counter() - t0, 1)
    return result


def _worker_init() -> None:
    torch.set_num_threads(1)


def run_matrix(matrix: list[Case], jobs: int = 2) -> list[Result]:
    """Compile every case, ``jobs`` processes in parallel (ptxas is single-threaded)."""
    if jobs <= 1:
        return [compile_case(c) for c in matrix]
    # the slowest (MLP) first, so that the pool does not end on one long compile
    order = sorted(range(len(matrix)), key=lambda i: not matrix[i].kernel.startswith("mlp"))
    with ProcessPoolExecutor(jobs, initializer=_worker_init) as pool:
        done = dict(zip(order, pool.map(compile_case, [matrix[i] for i in order])))
    return [done[i] for i in range(len(matrix))]


def run_subprocess(args: list[str], timeout: float = 1800) -> list[dict[str, Any]]:
    """Run this module in a child process without ``TRITON_INTERPRET`` and return its JSON rows."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "rows.json")
        cmd = [sys.executable, "-m", "zsw.kernels.compile_check", "--json", str(out), *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"compile check failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return json.loads(out.read_text())


# ----------------------------------------------------------------------------------------------
# Selection and the table
# ----------------------------------------------------------------------------------------------


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n >= 0 else "-"


def _estimate(r: dict[str, Any]) -> str:
    est = r.get("shared_estimate", -1)
    return f" ({_kb(est)})" if est >= 0 else ""


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table, one line per (kernel, dtype, config, target)."""
    lines = [
        "| kernel | dtype | config | target | registers | spill bytes (st/ld) | shared memory (estimate) "
        "| wgmma | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["kernel"], r["dtype"], -r["arch"], r["config"])):
        if r["error"]:
            first = r["error"].splitlines()[0][:80]
            lines.append(f"| {r['kernel']} | {r['dtype']} | {r['config']} | sm_{r['arch']} | error: {first} |||||")
            continue
        wgmma = "yes" if r["wgmma"] else "no"
        if r["arch"] != 90 or r["kernel"] in NO_DOT_KERNELS:
            wgmma = "n/a"  # sm_80 has no wgmma; the Chamfer search has no dots
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {r['config']} | sm_{r['arch']} | {r['regs']} | "
            f"{r['spill_stores']}/{r['spill_loads']} | {_kb(r['shared'])}{_estimate(r)} | {wgmma} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_table(path: Path, table: str, header: str) -> None:
    """Replace the marked section of ``path`` (or append one) with ``table``."""
    text = path.read_text() if path.exists() else ""
    block = f"{TABLE_BEGIN}\n{header}\n\n{table}\n{TABLE_END}"
    if TABLE_BEGIN in text and TABLE_END in text:
        head, rest = text.split(TABLE_BEGIN, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def _summary(rows: list[dict[str, Any]], seconds: float) -> str:
    import triton

    spills = sum(1 for r in rows if not r["error"] and r["spill_stores"] + r["spill_loads"] > 0)
    errors = sum(1 for r in rows if r["error"])
    return (
        f"{len(rows)} compilations (triton {triton.__version__}, ptxas from its wheel), "
        f"{errors} errors, {spills} with spills; {seconds / 60:.1f} min on {os.cpu_count()} CPU cores."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kernels", default="", help="comma-separated subset of " + ",".join(_LAUNCHERS))
    p.add_argument("--dtypes", default="", help="comma-separated subset of " + ",".join(DTYPES))
    p.add_argument("--archs", default="90,80")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--json", type=Path, help="write the rows as JSON")
    p.add_argument("--write-table", type=Path, help="write the table into this markdown file's marked section")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        p.error("run without TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    kernels = [k for k in a.kernels.split(",") if k] or None
    archs = tuple(int(x) for x in a.archs.split(","))
    matrix = cases(kernels, archs)
    if a.dtypes:
        matrix = [c for c in matrix if c.dtype in a.dtypes.split(",")]
    if a.list:
        print("\n".join(str(c) for c in matrix))
        return 0
    t0 = time.perf_counter()
    rows = [r.row() for r in run_matrix(matrix, a.jobs)]
    summary = _summary(rows, time.perf_counter() - t0)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    table = format_table(rows)
    if a.write_table:
        write_table(a.write_table, table, summary)
    print(table)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
