"""Which weights and which backend a reconstruction runs: ``--weights``, ``--backend``, ``--engine``.

The packaged demo model (``zsw/assets/demo``) and its ONNX export, random presets for tests and
speed measurements, checkpoints; what identifies them for reruns (:func:`weights_identity`), and
a small cache of opened backends that the job, ``zsw.reconstruct`` and the app share.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from zsw.errors import CheckpointError, ConfigError, OptionError, ZswError
from zsw.hub import device_type, resolve_device
from zsw.infer.precision import resolve_precision
from zsw.infer.settings import PRECISIONS
from zsw.io import checkpoint_sha256

if TYPE_CHECKING:  # what only opening a backend needs: a rerun with nothing to do plans without PyTorch
    import torch

    from zsw.infer.backend import Backend

__all__ = [
    "DEMO_DIR",
    "RANDOM_WEIGHTS_WARNING",
    "demo_weights",
    "demo_engine",
    "resolve_backend",
    "resolve_weights",
    "check_inputs",
    "open_backend",
    "weights_identity",
    "cached_backend",
]


#: folder of the packaged demo model
DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
RANDOM_WEIGHTS_WARNING = (
    "no trained weights: running the '{preset}' preset with RANDOM weights -- the meshes are noise. "
    "Pass --weights (a .safetensors checkpoint, e.g. from `zsw convert` or `zsw train`)."
)


def demo_weights() -> Path | None:
    """The packaged demo checkpoint (``zsw/assets/demo/*.safetensors``), or None if absent."""
    found = sorted(DEMO_DIR.glob("*.safetensors")) if DEMO_DIR.is_dir() else []
    return found[0] if found else None


def demo_engine() -> Path | None:
    """The packaged model's ONNX export (``zsw/assets/demo/onnx``), or None when it is absent, was
    exported from other weights than the packaged checkpoint, or a file that ``onnxruntime+torch``
    reads (the pixel and encoder graphs, the default prompt's embedding) is missing or not the one
    recorded: a stale or damaged export is never used, so ``auto`` runs PyTorch instead. (The
    hashes are computed once per process; the backend's own check of the same files reuses them.)"""
    folder = DEMO_DIR / "onnx"
    weights = demo_weights()
    try:
        data = json.loads((folder / "export.json").read_text())
        if weights is None or data["source"]["sha256"] != checkpoint_sha256(weights):
            return None
        entries = [data["graphs"]["pixel"], data["graphs"]["encoder"], data["default_text_embedding"]]
        if any(checkpoint_sha256(folder / e["file"]) != e["sha256"] for e in entries):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return folder


def resolve_backend(
    kind: str = "auto",
    weights=None,
    engine: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> str:
    """What backend ``kind`` means here. ``auto`` is ``onnxruntime+torch`` for the packaged model
    at fp32 on a CPU when onnxruntime is installed and the packaged ONNX graphs belong to the
    packaged weights (:func:`demo_engine`): the pixel and encoder graphs on ONNX Runtime, the
    decoder in PyTorch (see :class:`zsw.export.runtime.OnnxRuntimeBackend`), which spares the
    process timm's import and decodes with zsw's CPU kernels. Everywhere else ``auto`` is
    ``torch``. Other kinds are returned unchanged."""
    if kind != "auto":
        return kind
    if engine is not None:
        raise OptionError("--engine is for the onnxruntime and tensorrt backends; pick one with --backend")
    if weights not in (None, "demo"):
        return "torch"
    try:
        dev = device_type(resolve_device(device))
    except ZswError:
        return "torch"  # open_backend names the bad device
    if dev != "cpu" or precision not in PRECISIONS or resolve_precision(precision, dev) != "fp32":
        return "torch"
    if not _onnxruntime_imports() or demo_engine() is None:
        return "torch"
    return "onnxruntime+torch"


def _onnxruntime_imports() -> bool:
    """Whether onnxruntime imports (installed is not enough: a wheel for another CPU or a broken
    install fails on import, and ``auto`` then runs PyTorch). The backend imports it next anyway."""
    try:
        import onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001 -- ImportError, OSError of a missing library, ...
        return False
    return True


def resolve_weights(weights=None):
    """What ``--weights`` means: ``(checkpoint path or model, label, warning or None)``.

    ``None`` is the packaged demo model (or, while there is none, the ``tiny`` preset with random
    weights and a warning); ``"demo"`` insists on the demo model; ``"random:<preset>"`` builds a
    randomly initialised preset on purpose (pipeline tests, speed measurements); anything else is a
    checkpoint path or a :class:`~zsw.model.ZeroShapeW`.
    """
    from zsw.model import ZeroShapeW, build_model

    if isinstance(weights, ZeroShapeW):
        return weights, f"in-memory {weights.config.name} model", None
    if weights is None or str(weights) == "demo":
        path = demo_weights()
        if path is not None:
            return path, f"demo:{path.name}", None
        if weights is not None:
            raise ConfigError(f"the demo model is not installed (no .safetensors in {DEMO_DIR})")
        weights = "random:tiny"
    text = str(weights)
    if text.startswith("random:"):
        preset = text.split(":", 1)[1] or "tiny"
        import torch

        with torch.random.fork_rng():  # the same random model every time, global RNG untouched
            torch.manual_seed(0)
            model = build_model(preset).eval()
        return model, text, RANDOM_WEIGHTS_WARNING.format(preset=preset)
    return Path(text), str(text), None


def check_inputs(device: str | torch.device | None = None, weights=None) -> None:
    """The cheap checks of ``--device`` and ``--weights``, made before any work (a folder run makes
    them before it plans which photos to redo): a one-line error naming the option."""
    if device is not None:
        if device_type(resolve_device(device)) not in ("cpu", "cuda"):
            raise OptionError(f"--device {device}: zsw runs on cpu or cuda devices")
    if isinstance(weights, (str, os.PathLike)) and str(weights) != "demo" and not str(weights).startswith("random:"):
        if Path(weights).is_dir():
            raise CheckpointError(f"--weights {weights} is a folder; give a .safetensors checkpoint")
        if not Path(weights).is_file():
            raise CheckpointError(f"checkpoint {weights} does not exist")


def open_backend(
    kind: str = "auto",
    weights=None,
    engine: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> tuple[Backend, str, str | None]:
    """A backend plus a label of its weights and an optional warning (see :func:`resolve_weights`);
    ``kind`` ``auto`` is resolved by :func:`resolve_backend` (at the default precision)."""
    from zsw.infer.backend import load_backend

    check_inputs(device, weights)
    kind = resolve_backend(kind, weights, engine, device)
    if kind == "torch":
        model, label, warning = resolve_weights(weights)
        return load_backend("torch", weights=model, device=device), label, warning
    if weights is not None and not (kind == "onnxruntime+torch" and weights == "demo"):
        raise ConfigError(f"--weights is for the torch backend; the {kind} backend reads its --engine folder")
    if kind == "onnxruntime+torch" or (kind == "onnxruntime" and engine is None):
        packaged = demo_engine()
        if packaged is None:
            raise OptionError(f"the {kind} backend needs --engine DIR (a folder written by `zsw export`)")
        checkpoint = demo_weights()  # not None: demo_engine found the export of it
        label = f"demo:{checkpoint.name}"
        if kind == "onnxruntime":
            return load_backend(kind, engine=packaged, device=device), f"{label} (ONNX)", None
        return load_backend(kind, weights=checkpoint, engine=packaged, device=device), label, None
    return load_backend(kind, engine=engine, device=device), f"engine:{engine}", None


def weights_identity(weights=None, engine: str | os.PathLike | None = None) -> str:
    """What identifies the weights a run uses: the SHA-256 of the checkpoint file (the packaged
    model's included), of an engine folder's manifest, or the label of a random preset or model."""
    from zsw.io import sha256_file

    if engine is not None:
        manifest = Path(engine) / "export.json"
        return f"engine:{sha256_file(manifest)}" if manifest.is_file() else f"engine:{engine}"
    if _is_model(weights):
        return f"model:{id(weights)}"
    if weights is None or weights == "demo":
        path = demo_weights()
        return f"sha256:{checkpoint_sha256(path)}" if path is not None else "random:tiny"
    if isinstance(weights, str) and weights.startswith("random:"):
        return weights
    return f"sha256:{checkpoint_sha256(weights)}" if Path(weights).is_file() else str(weights)


def _is_model(weights) -> bool:
    """Whether ``weights`` is a :class:`~zsw.model.ZeroShapeW` (none can exist before ``zsw.model``
    is imported, so the check does not import it)."""
    model = sys.modules.get("zsw.model")
    return model is not None and isinstance(weights, model.ZeroShapeW)


def cached_backend(
    kind: str = "auto",
    weights: str | os.PathLike | None = None,
    engine: str | os.PathLike | None = None,
    device: str | None = None,
    identity: str | None = None,
) -> tuple[Backend, str, str | None]:
    """:func:`open_backend`, cached for the last two (kind, weights, engine, device) that also
    have the same content (:func:`weights_identity`, computed unless given): a checkpoint
    rewritten in place is loaded again. The job, ``zsw.reconstruct`` and the app share it."""
    weights = None if weights is None else str(weights)
    engine = None if engine is None else str(engine)
    identity = identity or weights_identity(weights, engine)
    return _cached_backend(kind, weights, engine, None if device is None else str(device), identity)


@functools.lru_cache(maxsize=2)
def _cached_backend(kind: str, weights: str | None, engine: str | None, device: str | None, identity: str):
    return open_backend(kind, weights, engine, device)
