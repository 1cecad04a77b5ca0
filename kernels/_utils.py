"""Helpers shared by the Triton kernels: launch settings, dtype policy, custom-op registration.

Nothing here launches a kernel. The rules every kernel module follows:

* **dtypes** -- inputs are fp32, fp16 or bf16; math accumulates in fp32; outputs come back in the
  compute dtype (the autocast dtype when autocast is on, else the input's).
* **fp32 matmuls** follow PyTorch: ``tl.dot`` runs in IEEE fp32 unless
  ``torch.backends.cuda.matmul.allow_tf32`` is set (or the float32 matmul precision is not
  "highest"), so an fp32 kernel is compared with an fp32 reference that did the same arithmetic.
* **launch configs** are few per operand family (16-bit, TF32, IEEE fp32), each compiled without
  spills for sm_90 and sm_80 (:mod:`zsw.kernels.compile_check`), and pruned before autotuning by
  the device's own shared memory (:func:`shared_memory_limit`) and capability.
* **interpreter** -- under ``TRITON_INTERPRET=1`` (CPU, triton 3.8) two bf16 operations are wrong:
  ``tl.dot`` of bf16 operands returns garbage, and fp32 -> bf16 casts truncate instead of rounding
  to nearest even. Kernels take an ``INTERP_BF16`` constexpr, set for bf16 on the interpreter only,
  under which :func:`dot` multiplies in fp32 and :func:`cast` rounds by hand. On a GPU the flag is
  off and both compile to the plain operations. Block sizes are chosen large on the interpreter,
  where the cost is per operation, not per element.
* **custom ops** -- every launcher is a ``torch.library.custom_op`` named ``zsw::...`` with a fake
  (meta) implementation, so ``torch.compile`` traces through the kernels as opaque nodes instead
  of breaking the graph. :func:`custom_op` refuses to register a name twice, which only happens
  when this directory is imported both as ``zsw.kernels`` and as a top-level ``kernels``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "dot",
    "cast",
    "interpreting",
    "next_pow2",
    "cdiv",
    "num_sms",
    "shared_memory_limit",
    "device_capability",
    "fits_shared_memory",
    "persistent_programs",
    "size_class",
    "dot_precision",
    "interp_bf16",
    "maybe_contiguous",
    "check_dtype",
    "compute_dtype",
    "custom_op",
    "FLOAT_DTYPES",
]

#: dtypes every kernel accepts
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Programs standing in for streaming multiprocessors when interpreting on a CPU: a small number,
# so that the persistent loops of the kernels run several iterations in the tests.
_INTERPRETER_SMS = 3


@triton.jit
def dot(a, b, INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr):
    """``tl.dot(a, b)`` accumulated in fp32. ``INTERP_BF16`` (bf16 on the CPU interpreter only) casts
    both operands to fp32 first: the interpreter's bf16 x bf16 dot returns garbage."""
    if INTERP_BF16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def dot_acc(a, b, acc, INTERP_BF16: tl.constexpr):
    """``acc + a @ b`` into the fp32 accumulator ``acc`` (one MMA chain on a GPU); ``INTERP_BF16``
    as in :func:`dot`."""
    if INTERP_BF16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def cast(x, dtype: tl.constexpr, INTERP_BF16: tl.constexpr):
    """``x.to(dtype)`` rounding to nearest even, as the GPU does. The CPU interpreter *truncates*
    fp32 -> bf16, which doubles the rounding error; with ``INTERP_BF16`` the rounding is done here
    on the bits (the truncation that follows is then exact)."""
    if INTERP_BF16:
        if dtype == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # round the low 16 bits away
            x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``). Every
    launcher asks this before it launches, so it is also where an interpreter too old for the
    kernels is refused (:func:`check_interpreter`)."""
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return False
    check_interpreter()
    return True


#: The first triton whose interpreter runs loops bounded by program ids (the persistent MLP tiles,
#: the attention's and the Chamfer search's split ranges). 3.6's fails deep inside the interpreter
#: with "only 0-dimensional arrays can be converted to Python scalars"; 3.7.1 and 3.8 run them.
MIN_INTERPRETER_TRITON = (3, 7)


@functools.cache
def check_interpreter() -> None:
    """A one-line error naming the triton version, instead of the interpreter's own message deep
    inside a kernel. Compiled kernels (a GPU) work with triton 3.6 too."""
    version = tuple(int(x) for x in re.findall(r"\d+", triton.__version__)[:2])
    if version < MIN_INTERPRETER_TRITON:
        need = ".".join(map(str, MIN_INTERPRETER_TRITON))
        raise RuntimeError(
            f"TRITON_INTERPRET=1: the interpreter of triton {triton.__version__} cannot run zsw's kernels; "
            f"it needs triton >= {need} (a newer torch brings one), or a GPU without TRITON_INTERPRET"
        )


def autotune(configs: list, key: list[str], **kwargs) -> Callable:
    """``triton.autotune`` with its choices cached on disk (``cache_results``): the first process on
    a machine measures the configs, later ones (each ``zsw reconstruct``) read the winner from
    Triton's cache instead of compiling and timing every config again. The cache key holds the
    kernel's source, the target (backend and architecture), the tuning key, the configs the pruning
    kept and Triton's cache-invalidating environment, so a new kernel, GPU architecture or config
    list measures again. Off under the interpreter (Triton's own rule)."""
    return triton.autotune(configs, key=key, cache_results=True, **kwargs)


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _device_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a small stand-in on the CPU interpreter)."""
    if device.type == "cuda":
        return _device_sms(device.index if device.index is not None else torch.cuda.current_device())
    return _INTERPRETER_SMS


#: Set by :mod:`zsw.kernels.compile_check` to the shared memory and the compute capability (90 for
#: sm_90) of the architecture it compiles for (there is no device to ask on a CPU); None elsewhere.
shared_memory_limit_override: int | None = None
capability_override: int | None = None


def device_capability(device: torch.device) -> int:
    """Compute capability of ``device`` as one number (90 for sm_90; 90 on the interpreter)."""
    if capability_override is not None:
        return capability_override
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    return 90


@functools.cache
def _device_shared_memory(index: int) -> int:
    from triton.runtime import driver

    return int(driver.active.utils.get_device_properties(index)["max_shared_mem"])


def shared_memory_limit(device: torch.device) -> int:
    """Shared memory one program (block) may use on ``device``, in bytes: the device's opt-in
    limit (227 KB on H100/H200, 163 KB on A100, 99 KB on consumer Ampere/Ada), asked of the driver,
    since configs tuned on one GPU must not fail to launch on another."""
    if shared_memory_limit_override is not None:
        return shared_memory_limit_override
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _device_shared_memory(index)
    return 1 << 30  # the interpreter has no limit


def fits_shared_memory(configs: list, device: torch.device, estimate: Callable[[object], int]) -> list:
    """The configs whose estimated shared memory fits ``device``; the smallest one if none does
    (the autotuner needs at least one, and its launch error then names the problem)."""
    limit = shared_memory_limit(device)
    kept = [c for c in configs if estimate(c) <= limit]
    return kept or [min(configs, key=estimate)]


def persistent_programs(tiles: int, groups: int, device: torch.device, per_sm: int = 4) -> int:
    """Programs per group for a persistent grid ``(programs, groups)``.

    Enough programs to fill every SM ``per_sm`` times over all groups, never more than there are
    tiles in a group. Each program then loops over the tiles ``pid, pid + programs, ...`` of its
    group and loads the group's shared operands (latent K/V, weights) once.
    """
    if tiles <= 0:
        return 1
    return max(1, min(tiles, cdiv(num_sms(device) * per_sm, max(1, groups))))


def size_class(n: int) -> int:
    """Coarse size bucket (a factor of 4 per step above 1024) for autotuning keys: one tuning per
    bucket, so a small first call (a correctness check) does not pick the config of a huge one."""
    return max(0, int(n).bit_length() - 10) // 2


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot``: IEEE fp32 unless PyTorch itself allows TF32 (the
    ``allow_tf32`` flag, or a float32 matmul precision other than "highest")."""
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    if dtype == torch.float32 and not tf32:
        return "ieee"
    return "tf32"  # ignored by triton for fp16/bf16 operands


def interp_bf16(dtype: torch.dtype) -> bool:
    """The ``INTERP_BF16`` flag of the kernels: bf16 data on the CPU interpreter (see :func:`dot`, :func:`cast`)."""
    return dtype == torch.bfloat16 and interpreting()


def maybe_contiguous(x: Tensor) -> Tensor:
    """``x`` itself when its last dimension is contiguous (kernels take the other strides), else a copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def check_dtype(name: str, *tensors: Tensor) -> None:
    for t in tensors:
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"zsw.kernels.{name}: expected float32, float16 or bfloat16 tensors, got {t.dtype}")


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a kernel computes in: the autocast dtype inside autocast, else ``x.dtype``."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and x.is_floating_point():
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def custom_op(name: str, **kwargs) -> Callable[[Callable], torch.library.CustomOpDef]:
    """``torch.library.custom_op(name, mutates_args=(), **kwargs)``, refusing double registration.

    A second registration of the same name means this directory was imported twice under two
    module names (``zsw.kernels`` and a top-level ``kernels``); torch would raise a cryptic
    error. The ImportError raised here is caught by the dispatch, which then reports the kernel
    as unavailable with this message.
    """
    namespace, op = name.split("::")
    if hasattr(getattr(torch.ops, namespace), op):
        raise ImportError(
            f"custom op {name} is already registered: zsw.kernels was imported twice (as `zsw.kernels` and "
            "as a top-level `kernels`). Run `pytest`, not `python -m pytest`, and never put the repository "
            "root on sys.path."
        )
    return torch.library.custom_op(name, mutates_args=(), **kwargs)


#: what :func:`measured_choice` found, per key (this process; Triton's cache holds the others')
measured_choices: dict[tuple, str] = {}


@functools.cache
def _source_digest(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _cache_key(key: tuple, source: str) -> str:
    """``key`` on this GPU, with these torch and triton versions and this kernel source, hashed."""
    import hashlib

    parts = [
        torch.cuda.get_device_name(part) if isinstance(part, torch.device) and part.type == "cuda" else str(part)
        for part in key
    ]
    text = "|".join([*parts, torch.__version__, triton.__version__, _source_digest(source)])
    return hashlib.sha256(text.encode()).hexdigest()


def measured_choice(key: tuple, candidates: dict[str, Callable[[], object]], source: str) -> str:
    """The name of the fastest of ``candidates`` (functions of no argument, each computing the
    same result a different way), timed with ``triton.testing.do_bench`` (a few tens of
    milliseconds) the first time ``key`` comes up on this GPU with these torch and triton versions
    and this version of the kernel file ``source``; later calls, and later processes through
    Triton's cache (``~/.triton/cache`` or ``TRITON_CACHE_DIR``, beside the autotuner's choices),
    read it back. This is how ``auto`` chooses between kernels that no GPU of the project has timed
    yet (docs/kernels.md)."""
    if key in measured_choices:
        return measured_choices[key]
    import json

    from triton.runtime.cache import get_cache_manager

    cache = get_cache_manager(_cache_key(key, source))
    stored, choice = cache.get_file("measured-choice.json"), None
    if stored:
        try:
            with open(stored) as f:
                choice = json.load(f).get("choice")
        except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
            pass
    if not (isinstance(choice, str) and choice in candidates):
        from triton.testing import do_bench

        times = {name: do_bench(fn, warmup=10, rep=40) for name, fn in candidates.items()}
        choice = min(times, key=times.get)
        try:  # Triton's cache writes atomically
            record = {"key": [str(k) for k in key], "ms": times, "choice": choice}
            cache.put(json.dumps(record), "measured-choice.json", binary=False)
        except OSError:
            pass  # a read-only cache: the choice still holds for this process
    measured_choices[key] = choice
    return choice
