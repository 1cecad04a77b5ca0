"""Loading pretrained diffusers / transformers models by hub id or local folder, with one-line
errors that say what to download and where to put it; device and dtype choice.

Loading is the real ``from_pretrained`` path (hub ids resolve through the Hugging Face cache,
``HF_HOME``/``HF_HUB_CACHE``). ``HF_HUB_OFFLINE=1`` is honoured at call time: no network is tried
and a model missing from the cache fails at once, before any work starts.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from zsw.errors import ConfigError, OptionError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "resolve_device",
    "device_type",
    "resolve_dtype",
    "diffusers_dtype",
    "looks_local",
    "offline",
    "hub_unreachable",
    "load_pretrained",
    "ready_pipeline",
]

T = TypeVar("T")

DTYPES = ("fp16", "bf16", "fp32")


def resolve_device(device=None) -> str:
    """``device`` as given, or ``cuda`` when available, else ``cpu``; one that is not a device, or
    a CUDA device torch cannot see, is a one-line error naming ``--device``. ``cpu``, and ``auto``
    on a Linux machine with no GPU driver, resolve without importing PyTorch (a rerun with nothing
    left to do never needs it)."""
    if device is None or device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if isinstance(device, str) and device == "cpu":
        return "cpu"
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(f"--device: {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available to PyTorch here")
    return str(dev)


def device_type(device) -> str:
    """The type of a device (``"cpu"``, ``"cuda"``) named by a string or a ``torch.device``, without
    importing PyTorch for a string."""
    kind = getattr(device, "type", None)
    return kind if isinstance(kind, str) else str(device).split(":", 1)[0]


#: device files of the GPU drivers PyTorch's ``torch.cuda`` can use on Linux (NVIDIA's, ROCm's, and
#: WSL 2's GPU paravirtualisation): without any of them ``torch.cuda.is_available()`` is False
GPU_DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def _cuda_available() -> bool:
    """``torch.cuda.is_available()``, answered without importing PyTorch where it cannot be True
    (Linux without a GPU driver's device files; PyTorch not imported yet)."""
    if "torch" not in sys.modules and sys.platform.startswith("linux"):
        if not any(os.path.exists(p) for p in GPU_DRIVER_FILES):
            return False
    import torch

    return torch.cuda.is_available()


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """``fp16``/``bf16``/``fp32``; by default fp16 on a GPU and fp32 on the CPU."""
    import torch

    if dtype is None or dtype == "auto":
        dtype = "fp32" if device.startswith("cpu") else "fp16"
    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if dtype not in table:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return table[dtype]


def diffusers_dtype(dtype: Any) -> dict[str, Any]:
    """``from_pretrained`` keyword for a dtype: ``dtype=`` where diffusers has it (it deprecated
    ``torch_dtype=``, which older releases need)."""
    from diffusers.utils import deprecation_utils

    key = "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    return {key: dtype}


def ready_pipeline(pipe: Any, scheduler_cls: Any, device: str) -> Any:
    """A loaded diffusers pipeline with ``scheduler_cls`` (built from its own scheduler config), on
    ``device``, with its per-call progress bar off (zsw shows one bar for the whole run)."""
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def looks_local(source: str | os.PathLike) -> bool:
    """True for an existing path or something that can only be a path (hub ids are ``org/name``)."""
    s = str(source)
    return Path(s).expanduser().exists() or s.startswith((".", "/", "~")) or s.count("/") > 1 or "\\" in s


def offline() -> bool:
    """``HF_HUB_OFFLINE`` read now (huggingface_hub reads it once at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, no route, ...), or None."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    try:
        port = url.port or (80 if url.scheme == "http" else 443)  # HF_ENDPOINT may be a plain-http mirror
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname}: {e.strerror or type(e).__name__}"
    return None


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def load_pretrained(
    loader: Callable[..., T],
    source: str | os.PathLike,
    *,
    what: str,
    option: str,
    default_id: str | None = None,
    **kwargs: Any,
) -> T:
    """``loader(source, **kwargs)`` (a ``from_pretrained``), or a :class:`ConfigError` in one line.

    Args:
        loader: e.g. ``ControlNetModel.from_pretrained``.
        source: a hub id (``org/name``) or a local folder.
        what: the model's role, for the message ("depth ControlNet").
        option: the CLI option that sets it ("--controlnet").
        default_id: the hub id to suggest downloading when ``source`` is a local folder.
    """
    from huggingface_hub.errors import HfHubHTTPError

    local = looks_local(source)
    path = Path(str(source)).expanduser()
    given = _typed(option, source)
    if local and not path.exists():
        hint = f"download it with `hf download {default_id} --local-dir {source}`" if default_id else "check the path"
        raise ConfigError(f"{given}: no such folder for the {what}; {hint}")
    if offline() and not local:
        kwargs.setdefault("local_files_only", True)
    elif not local and not kwargs.get("local_files_only"):
        # offline first: the cache, then the hub only if it answers (no minutes of retries without a network)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
                return loader(str(source), **kwargs, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, ImportError, HfHubHTTPError) as e:
            reason = hub_unreachable()
            if reason is not None:
                raise ConfigError(
                    f"cannot load the {what} {source!r}: it is not in the Hugging Face cache ({_reason(e)}) "
                    f"and the hub is unreachable ({reason}); {_download_hint(source, option)}"
                ) from None
    try:
        with warnings.catch_warnings():  # diffusers passes huggingface_hub an argument it deprecated
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
            return loader(str(path) if local else str(source), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, HfHubHTTPError) as e:
        if local:  # an existing folder that holds something else: never suggest downloading into it
            hint = f" ({_download_hint(default_id, option)})" if default_id else ""
            raise ConfigError(
                f"cannot load the {what} from {given}: {_reason(e)}; "
                f"it must be a complete Hugging Face model folder{hint}"
            ) from None
        hint = _download_hint(source, option)
        raise ConfigError(f"cannot load the {what} {source!r} ({_reason(e)}); {hint}") from None


def _typed(option: str, value) -> str:
    """``option`` with ``value`` as a user types it: in place of ``{}`` (``--prompt vlm:{}``), else after it."""
    return option.format(value) if "{}" in option else f"{option} {value}"


def _download_hint(source, option: str) -> str:
    """How to get a hub model onto a machine (``option`` as :func:`_typed` takes it)."""
    folder = "models/" + str(source).rstrip("/").rsplit("/", 1)[-1]
    cache = "put it in the Hugging Face cache (HF_HOME)" + ("" if offline() else " and set HF_HUB_OFFLINE=1")
    get = f"download it with `hf download {source} --local-dir {folder}` and pass `{_typed(option, folder)}`"
    return f"{get}, or {cache}"
