"""Model checkpoints (safetensors + config) and conversion of official ZeroShape weights.

A zsw checkpoint is one ``.safetensors`` file: the model's state dict plus, in the safetensors
metadata, the :class:`~zsw.config.ModelConfig` as JSON, the zsw version and free-form extras. It
never contains pickled objects. :func:`save` writes atomically; :func:`load` rebuilds the model from
the stored config and loads it strictly.

:func:`convert_zeroshape` maps an official ZeroShape state dict -- ``shape.ckpt`` (key ``graph``),
``depth.ckpt`` (``graph`` with only the depth and intrinsics parts) or an Omnidata DPT
``model_state_dict`` -- onto the ``zeroshape`` preset (every tensor, strictly) or onto
``zeroshape-w`` (the shared parts; the encoder's 4th input channel starts at zero).
:func:`convert_official` is the whole ``zsw convert zeroshape`` job: official ``.ckpt`` in, zsw
checkpoint out.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zsw.config import ModelConfig, from_dict, get_model_config, to_dict
from zsw.errors import CheckpointError, ConfigError

__all__ = [
    "save",
    "load",
    "load_with_extra",
    "read",
    "convert_zeroshape",
    "convert_official",
    "load_official",
    "ConversionReport",
    "FORMAT",
]

#: value of the ``format`` metadata entry of every zsw checkpoint
FORMAT = "zsw-checkpoint-1"


def save(model: torch.nn.Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (a :class:`~zsw.model.ZeroShapeW`) to ``path`` as safetensors, atomically.

    Args:
        model: the model; its ``config`` is stored with the weights.
        path: destination ``.safetensors`` file.
        extra: JSON-serialisable facts to keep alongside (training recipe, metrics, ...).
    """
    from safetensors.torch import save_file

    from zsw import __version__
    from zsw.io import atomic_path

    cfg = getattr(model, "config", None)
    if not isinstance(cfg, ModelConfig):
        raise TypeError("save expects a zsw model with a ModelConfig in .config")
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a file name such as {path / 'model.safetensors'}")
    try:
        extra_json = json.dumps(dict(extra or {}))
    except TypeError as e:  # numpy scalars and the like: float(x) them first
        raise CheckpointError(f"extra facts to save with {path} must be JSON values: {e}") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(to_dict(cfg)),
        "zsw_version": __version__,
        "extra": extra_json,
    }
    # straight to the file, then the header sorted in place: serialising to bytes first took 2x the
    # time and held two copies of the weights (zeroshape-w: 5 s and 1.5 GB more, then 2.3 s to write)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "r+b") as f:
            n = int.from_bytes(f.read(8), "little")
            header = _sorted_header(f.read(n))
            rest = f.read() if len(header) != 8 + n else None  # a header of another length: move the data
            f.seek(0)
            f.write(header)  # the tensor bytes stay as they are: their offsets count from the header's end
            if rest is not None:
                f.write(rest)
                f.truncate()
            f.flush()
            os.fsync(f.fileno())
    return path


def _sorted_header(header: bytes | memoryview) -> bytes:
    """A safetensors header (length prefix included) with its JSON keys sorted: safetensors writes
    them in hash-map order, which changes from call to call, so equal weights would give other
    bytes (and other content hashes, which key reruns)."""
    text = json.dumps(json.loads(bytes(header)), sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to a multiple of 8 bytes
    return len(text).to_bytes(8, "little") + text


def read(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, Tensor], ModelConfig, dict[str, Any]]:
    """The state dict, model config and extras stored in a zsw checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        hint = " (official ZeroShape .ckpt files need `zsw convert zeroshape` first)" if path.suffix == ".ckpt" else ""
        raise CheckpointError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}{hint}") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a zsw checkpoint (no zsw config in its metadata)")
    try:
        cfg = from_dict(ModelConfig, json.loads(meta["config"]))
    except (ConfigError, ValueError, TypeError, AttributeError) as e:  # JSON errors are ValueErrors
        raise CheckpointError(f"{path} holds an invalid model config: {e}") from None
    try:
        extra = json.loads(meta.get("extra", "{}"))
    except ValueError:
        extra = None
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path} holds invalid metadata: 'extra' is not a JSON object")
    extra["zsw_version"] = meta.get("zsw_version")
    return tensors, cfg, extra


def load(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the model stored in ``path`` and load its weights strictly; returns it in eval mode."""
    return load_with_extra(path, device)[0]


def load_with_extra(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """:func:`load`'s model and the extras stored with it (:func:`read`), from one read of the file."""
    from zsw.model import build_model

    tensors, cfg, extra = read(path)
    # build without initialising (meta device), then adopt the loaded tensors as parameters
    model = build_model(cfg, device="meta")
    _load_strict(model, tensors, str(path))
    return model.to(device).eval(), extra


def load_decoder(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """The point decoder of the model stored in ``path`` alone (weights loaded strictly, eval mode).

    Decoding the packaged model on a CPU needs only this: the pixel model and the encoder run as
    ONNX graphs, so their timm classes (and timm's import) are never needed.
    """
    from zsw.model import build_decoder

    tensors, cfg, _ = read(path)
    prefix = "decoder."
    own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    with torch.device("meta"):
        decoder = build_decoder(cfg)
    _load_strict(decoder, own, f"{path} (decoder)", f"{cfg.name} model's decoder")
    return decoder.to(device).eval()


def _load_strict(model: torch.nn.Module, tensors: Mapping[str, Tensor], what: str, target: str | None = None) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [
        f"{k} {tuple(tensors[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in tensors and tensors[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
        target = target or f"{model.config.name} model"
        raise CheckpointError(f"{what} does not fit the {target}: " + "; ".join(parts))
    # weights saved in 16 bits (model.half() before saving) are widened to the model's float32:
    # inference picks its precision by autocast, never by the stored dtype
    tensors = {k: v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v
               for k, v in tensors.items()}  # fmt: skip
    model.load_state_dict(tensors, strict=True, assign=True)


# --------------------------------------------------------------------------------------------
# Official ZeroShape checkpoints
# --------------------------------------------------------------------------------------------

_DROP = "drop"

# (pattern on the official key, replacement or _DROP, reason when dropped). First match wins.
_RULES: list[tuple[str, str, str]] = [
    # DPT never reads the ViT's classifier head or its final norm (it taps blocks 8 and 11)
    (r"dpt_depth\.pretrained\.model\.(head|norm)\.(weight|bias)", _DROP, "unused by DPT's forward pass"),
    (r"dpt_depth\.pretrained\.model\.(.+)", r"pixel.vit.\1", ""),
    (
        r"dpt_depth\.pretrained\.act_postprocess([34])\.0\.project\.0\.(weight|bias)",
        r"pixel.reassemble\1.readout.proj.\2",
        "",
    ),
    (r"dpt_depth\.pretrained\.act_postprocess([34])\.3\.(weight|bias)", r"pixel.reassemble\1.proj.\2", ""),
    (r"dpt_depth\.pretrained\.act_postprocess4\.4\.(weight|bias)", r"pixel.reassemble4.down.\1", ""),
    (r"dpt_depth\.scratch\.layer([1-4])_rn\.weight", r"pixel.fusion.proj\1.weight", ""),
    (
        r"dpt_depth\.scratch\.refinenet([1-4])\.resConfUnit([12])\.(conv[12]\.(?:weight|bias))",
        r"pixel.fusion.refine\1.res\2.\3",
        "",
    ),
    (r"dpt_depth\.scratch\.refinenet([1-4])\.out_conv\.(weight|bias)", r"pixel.fusion.refine\1.out_conv.\2", ""),
    (r"dpt_depth\.scratch\.output_conv\.0\.(weight|bias)", r"pixel.depth_head.conv1.\1", ""),
    (r"dpt_depth\.scratch\.output_conv\.2\.(weight|bias)", r"pixel.depth_head.conv2.\1", ""),
    (r"dpt_depth\.scratch\.output_conv\.4\.(weight|bias)", r"pixel.depth_head.conv3.\1", ""),
    (r"intr_head\.([01])\.linear([12])\.weight", r"pixel.intrinsics_head.blocks.\1.conv\2.weight", ""),
    (r"intr_head\.([01])\.(bn[12]\..+)", r"pixel.intrinsics_head.blocks.\1.\2", ""),
    (r"intr_proj\.(weight|bias)", r"pixel.intrinsics_head.proj.\1", ""),
    (r"coord_encoder\.encoder\.fc\.([01])\.linear([12])\.weight", r"encoder.global_head.\1.conv\2.weight", ""),
    (r"coord_encoder\.encoder\.fc\.([01])\.(bn[12]\..+)", r"encoder.global_head.\1.\2", ""),
    (r"coord_encoder\.encoder\.fc\.2\.(weight|bias)", r"encoder.global_proj.\1", ""),
    (r"coord_encoder\.encoder\.(.+)", r"encoder.resnet.\1", ""),
    (r"coord_encoder\.depth_feat_proj\.([01])\.linear([12])\.weight", r"encoder.local_head.\1.conv\2.weight", ""),
    (r"coord_encoder\.depth_feat_proj\.([01])\.(bn[12]\..+)", r"encoder.local_head.\1.\2", ""),
    (r"coord_encoder\.depth_feat_proj\.2\.(weight|bias)", r"encoder.local_proj.\1", ""),
    (r"impl_network\.pos_embed", r"decoder.pos_embed", ""),
    (r"impl_network\.point_proj\.proj\.(weight|bias)", r"decoder.point_embed.\1", ""),
    (r"impl_network\.latent_proj\.(weight|bias)", r"decoder.latent_proj.\1", ""),
    (r"impl_network\.blocks_attn\.(\d+)\.(.+)", r"decoder.blocks.\1.\2", ""),
    (r"impl_network\.norm\.(weight|bias)", r"decoder.norm.\1", ""),
    (r"impl_network\.impl_mlp\.layers\.(\d+)\.(weight|bias)", r"decoder.occupancy.layers.\1.\2", ""),
]
_COMPILED = [(re.compile(p + "$"), r, why) for p, r, why in _RULES]


@dataclass
class ConversionReport:
    """What :func:`convert_zeroshape` did with every tensor."""

    source: str  # "shape.ckpt", "depth.ckpt" or "omnidata" (what the keys look like)
    preset: str
    mapped: dict[str, str] = field(default_factory=dict)  # official key -> zsw key
    dropped: dict[str, str] = field(default_factory=dict)  # official key -> reason
    adapted: dict[str, str] = field(default_factory=dict)  # zsw key -> what was changed
    fresh: list[str] = field(default_factory=list)  # zsw keys the source does not provide

    def summary(self) -> str:
        lines = [
            f"source: {self.source}; target preset: {self.preset}",
            f"mapped {len(self.mapped)} tensors, dropped {len(self.dropped)}, adapted {len(self.adapted)}, "
            f"{len(self.fresh)} target tensors not in the source",
        ]
        lines += [f"  dropped {k}: {why}" for k, why in self.dropped.items()]
        lines += [f"  adapted {k}: {what}" for k, what in self.adapted.items()]
        if self.fresh:
            groups = sorted({".".join(k.split(".")[:2]) for k in self.fresh})
            lines.append("  initialised fresh: " + ", ".join(groups))
        return "\n".join(lines)


def _unwrap(obj: Any) -> tuple[dict[str, Tensor], str]:
    """The tensor dict inside an official checkpoint object, with DDP prefixes removed."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a checkpoint dict, got {type(obj).__name__}")
    for key in ("graph", "model_state_dict", "state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    tensors = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            continue
        tensors[k[len("module.") :] if k.startswith("module.") else k] = v
    if not tensors:
        raise CheckpointError("the checkpoint holds no tensors")
    if all(k.startswith(("pretrained.", "scratch.")) for k in tensors):
        return {f"dpt_depth.{k}": v for k, v in tensors.items()}, "omnidata"
    known = ("dpt_depth.", "intr_head.", "intr_proj.", "coord_encoder.", "impl_network.")
    if not any(k.startswith(known) for k in tensors):
        raise CheckpointError(
            "not a ZeroShape checkpoint: no dpt_depth/coord_encoder/impl_network tensors "
            f"(first key: {next(iter(tensors))})"
        )
    kind = "shape.ckpt" if any(k.startswith("impl_network.") for k in tensors) else "depth.ckpt"
    return tensors, kind


def convert_zeroshape(
    state_dict: Mapping[str, Any],
    preset: str | ModelConfig = "zeroshape",
    *,
    report: bool = False,
) -> dict[str, Tensor] | tuple[dict[str, Tensor], ConversionReport]:
    """Map an official ZeroShape checkpoint onto a zsw model's state dict.

    Args:
        state_dict: the loaded checkpoint: a ``shape.ckpt``/``depth.ckpt`` dict (with ``graph``),
            an Omnidata dict (with ``model_state_dict``) or any of these state dicts directly.
        preset: ``zeroshape`` (every tensor must map and the result loads strictly) or
            ``zeroshape-w`` (shared parts; the encoder's first conv gets a zero 4th channel; the
            one-Linear point embedding has no counterpart and is dropped).
        report: also return a :class:`ConversionReport`.

    Returns:
        The converted tensors (only those the source provides), and the report if asked.
    """
    from zsw.model import build_model

    tensors, kind = _unwrap(state_dict)
    cfg = get_model_config(preset)
    target = build_model(cfg, device="meta").state_dict()
    rep = ConversionReport(source=kind, preset=cfg.name)
    out: dict[str, Tensor] = {}
    unmatched = []
    for key, value in tensors.items():
        for pattern, repl, why in _COMPILED:
            m = pattern.match(key)
            if m is None:
                continue
            if repl == _DROP:
                rep.dropped[key] = why
                break
            new = m.expand(repl)
            if new not in target:
                why = f"no counterpart {new} in the {cfg.name} model"
                if new.startswith("decoder.point_embed."):
                    why = f"{cfg.name} embeds points with two Linears plus a text part"
                rep.dropped[key] = why
                break
            want = tuple(target[new].shape)
            if tuple(value.shape) == want:
                out[new] = value
            elif new == "encoder.resnet.conv1.weight" and value.shape[1] < want[1] and value.shape[0] == want[0]:
                pad = value.new_zeros(value.shape[0], want[1] - value.shape[1], *value.shape[2:])
                out[new] = torch.cat([value, pad], dim=1)
                rep.adapted[new] = f"input channels {value.shape[1]} -> {want[1]} (new channels zero)"
            else:
                raise CheckpointError(f"{key} has shape {tuple(value.shape)} but {new} needs {want}")
            rep.mapped[key] = new
            break
        else:
            unmatched.append(key)
    if unmatched:
        raise CheckpointError(f"{len(unmatched)} tensors of the checkpoint have no mapping, e.g. {unmatched[0]}")
    if "decoder.pos_embed" in out:
        from zsw.model.geometry import sincos_pos_embed_2d

        expected = sincos_pos_embed_2d(cfg.decoder.width, cfg.token_grid)[None]
        if not torch.allclose(out["decoder.pos_embed"].float(), expected, atol=1e-5):
            raise CheckpointError("the checkpoint's decoder pos_embed is not the fixed 2-D sin-cos embedding")
    rep.fresh = [k for k in target if k not in out]
    # a part (pixel.vit, encoder.resnet, ...) comes whole from the source or not at all: a torn or
    # hand-made file that maps a few tensors must not become a "converted" model of random weights
    part = lambda key: ".".join(key.split(".")[:2])  # noqa: E731
    touched = {part(k) for k in out}
    if torn := [k for k in rep.fresh if part(k) in touched]:
        name = part(torn[0])
        have, total = sum(part(k) == name for k in out), sum(part(k) == name for k in target)
        raise CheckpointError(
            f"the checkpoint holds only {have} of the {total} tensors of {name} (it lacks e.g. {torn[0]}): "
            "truncated or not a ZeroShape checkpoint"
        )
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"the checkpoint's {key} holds non-finite values (NaN or inf)")
    if cfg.name == "zeroshape" and kind == "shape.ckpt" and rep.fresh:
        raise CheckpointError(
            f"the checkpoint lacks {len(rep.fresh)} tensors of the zeroshape model, e.g. {rep.fresh[0]}"
        )
    return (out, rep) if report else out


def _load_failure(e: Exception) -> str:
    """The reason of a failed ``torch.load``, without torch's advice to retry with
    ``weights_only=False`` (which would execute whatever the file holds)."""
    text = str(e).strip().replace("WeightsUnpickler error:", "")
    advice = ("weights_only", "Weights only load failed", "Check the documentation", "trusted source")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not any(a in line for a in advice)]
    return lines[0].rstrip(".") if lines else f"{type(e).__name__}: not a PyTorch checkpoint of plain tensors"


def load_official(path: str | os.PathLike) -> dict[str, Any]:
    """Load an official ``.ckpt`` with ``torch.load(weights_only=True)`` (never arbitrary pickles)."""
    import numpy as np

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the .ckpt file inside it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    # numpy scalars (e.g. a best validation score) are plain data; allow exactly those
    safe = [np.dtype, type(np.dtype("float64")), type(np.dtype("float32")), type(np.dtype("int64"))]
    core = getattr(np, "_core", None) or np.core
    safe.append(core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's two-line notes on old pickle protocols: the error says it
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = textwrap.shorten(_load_failure(e), 300, placeholder=" ...")
        raise CheckpointError(
            f"cannot load {path} with torch.load(weights_only=True): {msg}. zsw refuses to unpickle "
            "arbitrary objects; re-save the state dict from a trusted environment"
        ) from None


def convert_official(
    source: str | os.PathLike,
    out: str | os.PathLike,
    preset: str = "zeroshape",
    *,
    clip: bool = False,
    overwrite: bool = False,
) -> ConversionReport:
    """``zsw convert zeroshape``: load the official checkpoint ``source`` (:func:`load_official`),
    map it onto ``preset`` (``zeroshape`` or ``zeroshape-w``, :func:`convert_zeroshape`), fill the
    text prompt's default embedding (with CLIP if ``clip``, else a fixed random unit vector) and
    :func:`save` the model to ``out``, which must not exist unless ``overwrite``. Returns the report."""
    from zsw.model import build_model

    out = Path(out)
    if preset not in ("zeroshape", "zeroshape-w"):
        raise ConfigError(f"--preset must be zeroshape or zeroshape-w, got {preset!r}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    state = load_official(source)
    try:
        tensors, report = convert_zeroshape(state, preset, report=True)
    except CheckpointError as e:  # what is wrong with the dict, said of the file it came from
        raise CheckpointError(f"{source}: {e}") from None
    if report.fresh:
        model = build_model(preset)
        if model.text is not None:
            model.text.init_default_embedding(use_clip=clip)
        model.load_state_dict(tensors, strict=False)
    else:  # every tensor comes from the source: no random initialisation, no second copy of the weights
        model = build_model(preset, device="meta")
        _load_strict(model, tensors, str(source))
    save(model, out, extra={"converted_from": str(source), "source_kind": report.source})
    return report
