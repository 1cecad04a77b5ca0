"""What a serialised TensorRT engine is bound to, and the refusal of an engine built elsewhere.

A TensorRT plan only runs with the TensorRT version that built it and on GPUs of the compute
capability it was built for (unless built version- or hardware-compatible, which zsw does not do:
those modes cost speed). Its tactics are also tuned to the exact GPU model. Every engine zsw builds
is recorded in ``export.json`` with an :class:`EngineFingerprint`; before deserialising, the runtime
compares it with the machine's and refuses a mismatch in one sentence that says how to rebuild,
instead of TensorRT's deserialisation error (or a silently slow engine).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

from zsw.errors import CheckpointError

__all__ = ["EngineFingerprint", "current_fingerprint", "check_fingerprint"]


@dataclass(frozen=True)
class EngineFingerprint:
    """The build environment of an engine."""

    gpu: str  # torch.cuda.get_device_name(), e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "9.0"
    tensorrt: str  # tensorrt.__version__ (or torch_tensorrt's TensorRT for torch-tensorrt programs)
    precision: str  # fp32 | fp16 | bf16: the compute precision of the graph

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EngineFingerprint:
        try:
            return cls(str(d["gpu"]), str(d["compute_capability"]), str(d["tensorrt"]), str(d["precision"]))
        except (KeyError, TypeError):
            raise CheckpointError(f"invalid engine fingerprint {d!r}") from None

    def __str__(self) -> str:
        return f"{self.gpu} (sm {self.compute_capability}), TensorRT {self.tensorrt}, {self.precision}"


def current_fingerprint(precision: str, tensorrt_version: str | None = None, device: int | None = None):
    """The fingerprint an engine built now, on CUDA device ``device``, would get."""
    import torch

    from zsw.export.deps import require, require_cuda

    require_cuda("TensorRT")
    if tensorrt_version is None:
        tensorrt_version = require("tensorrt", "TensorRT").__version__
    index = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(index)
    return EngineFingerprint(torch.cuda.get_device_name(index), f"{major}.{minor}", tensorrt_version, precision)


def check_fingerprint(
    stored: EngineFingerprint,
    current: EngineFingerprint,
    what: str,
    rebuild: str = "zsw export --format tensorrt --out DIR",
) -> None:
    """Refuse an engine (``what``: its path) whose TensorRT version or compute capability differ
    from this machine's; warn when only the GPU model differs (it runs, maybe with slower tactics).
    ``rebuild`` is the command the message recommends.
    """
    problems = []
    if stored.tensorrt != current.tensorrt:
        problems.append(f"TensorRT {stored.tensorrt} (this machine has {current.tensorrt})")
    if stored.compute_capability != current.compute_capability:
        problems.append(
            f"compute capability {stored.compute_capability} ({stored.gpu}; "
            f"this GPU is {current.compute_capability}, {current.gpu})"
        )
    if problems:
        raise CheckpointError(
            f"engine {what} was built with {' and '.join(problems)}; rebuild it on this machine with `{rebuild}`"
        )
    if stored.gpu != current.gpu:
        warnings.warn(
            f"engine {what} was tuned on {stored.gpu} and runs on {current.gpu}; rebuild it here for best speed",
            stacklevel=2,
        )
