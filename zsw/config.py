"""Configuration: frozen dataclasses, named presets, strict YAML.

Every configurable part of zsw is a frozen dataclass. Nested dataclasses compose (``ModelConfig``
holds a ``PixelConfig``, an ``EncoderConfig``, ...). :func:`to_dict` / :func:`from_dict` convert
to and from plain dictionaries, and :func:`load_yaml` / :func:`dump_yaml` to and from YAML. Loading
is strict: an unknown key, a missing required key or a value of the wrong type is a
:class:`~zsw.errors.ConfigError` naming the key path (``decoder.heads``) and the file.

Model presets:

* ``zeroshape-w`` -- the paper's model (~193.7M parameters without the frozen CLIP text tower);
* ``zeroshape``   -- the original ZeroShape architecture, so official checkpoints load exactly;
* ``small``       -- between the two (~10M parameters): the same structure at a quarter to a
  half of the widths, for CPU training runs of a few hours and small GPUs;
* ``tiny``        -- the same structure with small widths, fast on a CPU (tests, demo model).

Example::

    from zsw.config import get_model_config, dump_yaml, load_yaml
    cfg = get_model_config("tiny")
    dump_yaml(cfg, "tiny.yaml")
    assert load_yaml("tiny.yaml", type(cfg)) == cfg
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, Union

from zsw.errors import ConfigError

__all__ = [
    "PixelConfig",
    "EncoderConfig",
    "DecoderConfig",
    "TextConfig",
    "ModelConfig",
    "MODEL_PRESETS",
    "get_model_config",
    "to_dict",
    "from_dict",
    "checked_fields",
    "load_yaml",
    "dump_yaml",
    "replace",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Model configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelConfig:
    """DPT-Hybrid pixel-level regression: depth, intrinsics, visible and occluder masks."""

    # input resolution (square); ZeroShape and ZeroShape-W use 224
    image_size: int = 224
    # timm model whose ImageNet weights initialise the hybrid ViT when pretrained=True
    timm_name: str = "vit_base_r50_s16_384"
    # ResNetV2 stem width, blocks per stage and output channels per stage (stride 4, 8, 16)
    stem_channels: int = 64
    resnet_layers: tuple[int, ...] = (3, 4, 9)
    resnet_channels: tuple[int, ...] = (256, 512, 1024)
    # GroupNorm groups inside the ResNetV2 stages
    norm_groups: int = 32
    # ViT width, depth and heads
    vit_dim: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    # side of the stored position-embedding grid (24 = 384 px pretraining); resized on the fly
    vit_pos_grid: int = 24
    # ViT blocks (0-based) tapped for the DPT reassemble layers 3 and 4
    vit_taps: tuple[int, int] = (8, 11)
    # DPT fusion width (256 in DPT-Hybrid)
    features: int = 256
    # hidden width of the depth head's last 3x3 conv (32 in DPT)
    depth_hidden: int = 32
    # ZeroShape-W: FiLM-conditioned visible-mask head and occluder-mask head (False = ZeroShape)
    mask_heads: bool = True
    # hidden width of the mask heads
    mask_hidden: int = 128
    # default normalised focal length (focal in pixels / image width) of the intrinsics head
    default_focal: float = 1.3875


@dataclass(frozen=True)
class EncoderConfig:
    """ResNet encoder of the visible 3D shape (plus occluder mask) into 1 + (S/16)^2 tokens."""

    # timm model whose ImageNet weights initialise the ResNet when pretrained=True
    # (resnet50.tv_in1k holds the torchvision weights ZeroShape starts from)
    timm_name: str = "resnet50.tv_in1k"
    # input channels: 3 = visible xyz (ZeroShape), 4 = xyz + occluder mask (ZeroShape-W)
    in_channels: int = 4
    stem_width: int = 64
    layers: tuple[int, ...] = (3, 4, 6, 3)
    # bottleneck widths per stage (outputs are 4x these)
    channels: tuple[int, ...] = (64, 128, 256, 512)
    # width of the output tokens
    token_dim: int = 256


@dataclass(frozen=True)
class DecoderConfig:
    """Point decoder: cross-attention blocks over the tokens, then the Softplus skip MLP."""

    width: int = 256
    heads: int = 8
    blocks: int = 2
    mlp_ratio: float = 4.0
    # "linear": one Linear(3 -> width) (ZeroShape); "mlp": Linear -> GELU -> Linear on xyz,
    # concatenated with a Linear projection of the text embedding (ZeroShape-W)
    point_embed: str = "mlp"
    # width of the xyz part of the query when point_embed == "mlp"; the text part is the rest
    point_embed_dim: int = 128
    # 0: the query embedding sees raw xyz (ZeroShape, ZeroShape-W). F > 0: it sees xyz and
    # sin/cos(2^k * pi * xyz) for k < F (NeRF-style frequencies), which lets a small decoder
    # learn corners, holes and thin parts in far fewer steps than raw coordinates allow
    point_frequencies: int = 0
    # False: a query knows the image only through cross-attention to the tokens (ZeroShape,
    # ZeroShape-W). True: each query point is also projected into the image with the predicted K
    # and the visible surface map (normalised xyz, visible and occluder masks) is sampled at its
    # pixel, so the query sees where the visible surface lies on its ray (in front of it = empty,
    # behind it = maybe inside): pixel-aligned conditioning as in PIFu, which a small decoder learns
    # from in a few thousand steps where the token-only decoder learns a mean blob
    pixel_aligned: bool = False
    # False: as above. True (pixel-aligned decoders only): each query q is also reflected through
    # the object's centre c, predicted from the global token by a small head (trained against the
    # true centre), and the surface map is sampled at q' = 2c - q too. For a centrally symmetric
    # object (box, cylinder, sphere, torus, capsule) q lies on the hidden back exactly where q'
    # lies on the visible front, so the decoder can copy the back from the front instead of
    # guessing it (the symmetry prior of Front2Back, Yao et al. 2020)
    mirror_queries: bool = False
    # False: as above. True (with mirror_queries): the surface map is also sampled at q turned by
    # 180 degrees about the object's up axis through c (the axis predicted by the same head,
    # trained against the true one): q lies on the hidden back where that point lies on the front
    # for objects with that symmetry (cones, bottles, lamps, vases, tables, upright boxes)
    axial_queries: bool = False
    # False: as above. True (pixel-aligned decoders only): each sample also holds how far its pixel
    # lies inside the visible mask, in units of the silhouette's size (zsw.model.silhouette_distance):
    # a round object is about as deep as its silhouette is wide, a thin leg is thin in depth too
    silhouette_distance: bool = False
    # 0: as above. C > 0 (pixel-aligned decoders only): the encoder's local tokens, projected to C
    # channels and laid out on their 2-D grid, are also sampled at each query's pixel (and at its
    # mirrored and turned copies), so a query reads the encoder's view of the surface around its
    # pixel (edges, thickness, the neighbours' depth) directly instead of having to find those
    # tokens through cross-attention: PIFu's pixel-aligned image features
    token_features: int = 0
    # True: the token features' projection starts at zero, so a fresh decoder starts as the plain
    # pixel-aligned one and takes the token features in as their gradients make them useful
    token_features_zero_init: bool = False
    # occupancy MLP: hidden layers, their width, skip connections and Softplus sharpness
    occ_layers: int = 8
    occ_width: int = 256
    skip_in: tuple[int, ...] = (2, 4, 6)
    softplus_beta: float = 100.0
    # stochastic depth in the attention blocks during training (ZeroShape: 0.1)
    drop_path: float = 0.1


@dataclass(frozen=True)
class TextConfig:
    """CLIP text conditioning (ZeroShape-W). The text tower is frozen and never part of the model:
    it is loaded lazily with open_clip only for prompts whose embedding is not cached."""

    enabled: bool = True
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    # embedding width of ``clip_model`` (512 for ViT-B-32, 768 for ViT-L-14)
    dim: int = 512
    # the category-agnostic prompt; its embedding is stored in every checkpoint
    default_prompt: str = "object"


@dataclass(frozen=True)
class ModelConfig:
    """The whole model. ``name`` is informational (the preset it came from)."""

    name: str = "zeroshape-w"
    pixel: PixelConfig = field(default_factory=PixelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        self._check_ranges()
        s = self.pixel.image_size
        if s % 32:
            raise ConfigError(f"pixel.image_size must be a multiple of 32, got {s}")
        if self.decoder.width % self.decoder.heads:
            raise ConfigError(f"decoder.width ({self.decoder.width}) must be divisible by decoder.heads")
        if (self.decoder.width // self.decoder.heads) % 2:
            raise ConfigError("decoder head dimension must be even")
        if self.decoder.point_embed not in ("linear", "mlp"):
            raise ConfigError(f"decoder.point_embed must be 'linear' or 'mlp', got {self.decoder.point_embed!r}")
        if self.decoder.point_embed == "mlp" and not 0 < self.decoder.point_embed_dim < self.decoder.width:
            raise ConfigError("decoder.point_embed_dim must be between 0 and decoder.width")
        if not 0 <= self.decoder.point_frequencies <= 12:
            raise ConfigError(f"decoder.point_frequencies must be in 0..12, got {self.decoder.point_frequencies}")
        if self.decoder.mirror_queries and not self.decoder.pixel_aligned:
            raise ConfigError("decoder.mirror_queries samples the surface map: it needs decoder.pixel_aligned")
        if self.decoder.silhouette_distance and not self.decoder.pixel_aligned:
            raise ConfigError(
                "decoder.silhouette_distance is sampled at each query's pixel: it needs decoder.pixel_aligned"
            )
        if self.decoder.token_features and not self.decoder.pixel_aligned:
            raise ConfigError(
                "decoder.token_features samples the token grid at each query's pixel: it needs decoder.pixel_aligned"
            )
        if self.decoder.axial_queries and not self.decoder.mirror_queries:
            raise ConfigError(
                "decoder.axial_queries turns queries about the mirror centre: it needs decoder.mirror_queries"
            )
        if self.decoder.point_embed == "mlp" and not self.text.enabled:
            raise ConfigError("decoder.point_embed='mlp' concatenates a text embedding: enable text or use 'linear'")
        if self.pixel.mask_heads != (self.encoder.in_channels == 4):
            raise ConfigError("encoder.in_channels must be 4 with pixel.mask_heads and 3 without")
        if self.pixel.mask_heads and not self.text.enabled:
            raise ConfigError("pixel.mask_heads needs text.enabled (the visible mask is FiLM-conditioned)")
        if len(self.pixel.resnet_layers) != 3 or len(self.pixel.resnet_channels) != 3:
            raise ConfigError("pixel.resnet_layers and pixel.resnet_channels need 3 stages (strides 4, 8, 16)")
        if not all(0 <= t < self.pixel.vit_depth for t in self.pixel.vit_taps) or len(self.pixel.vit_taps) != 2:
            raise ConfigError(f"pixel.vit_taps must be 2 block indices below vit_depth={self.pixel.vit_depth}")
        if len(self.encoder.layers) != 4 or len(self.encoder.channels) != 4:
            raise ConfigError("encoder.layers and encoder.channels need 4 stages")
        if any(not 0 < i < self.decoder.occ_layers + 1 for i in self.decoder.skip_in):
            raise ConfigError(f"decoder.skip_in entries must be in 1..{self.decoder.occ_layers}")

    # numbers that may be 0; every other width, depth, count or factor must be > 0
    _MAY_BE_ZERO = ("decoder.point_frequencies", "decoder.token_features", "decoder.drop_path", "pixel.vit_taps")

    def _check_ranges(self) -> None:
        """Sizes, counts and factors positive and finite, so that a YAML typo is one line naming the
        key, not an error from inside timm or a NaN at the first forward pass."""
        for part in ("pixel", "encoder", "decoder", "text"):
            section = getattr(self, part)
            for f in fields(section):
                key, value = f"{part}.{f.name}", getattr(section, f.name)
                for x in value if isinstance(value, tuple) else (value,):
                    if isinstance(x, bool) or not isinstance(x, (int, float)):
                        continue
                    zero_ok = key in self._MAY_BE_ZERO
                    if not math.isfinite(x) or x < 0 or (x == 0 and not zero_ok):
                        shown = list(value) if isinstance(value, tuple) else value  # as YAML writes it
                        raise ConfigError(f"{key} must be a number {'>= 0' if zero_ok else '> 0'}, got {shown}")
        if not self.decoder.drop_path < 1:
            raise ConfigError(f"decoder.drop_path must be below 1, got {self.decoder.drop_path}")
        p = self.pixel
        if p.vit_dim % p.vit_heads:
            raise ConfigError(f"pixel.vit_dim ({p.vit_dim}) must be divisible by pixel.vit_heads ({p.vit_heads})")
        grouped = (p.stem_channels, *p.resnet_channels, *(c // 4 for c in p.resnet_channels))
        if any(c % p.norm_groups for c in grouped):
            raise ConfigError(
                f"pixel.norm_groups ({p.norm_groups}) must divide pixel.stem_channels and each of "
                "pixel.resnet_channels and their quarters (the bottlenecks' widths)"
            )

    @property
    def token_grid(self) -> int:
        """Side of the local-token grid (the encoder's stride-16 map): 14 at 224 px."""
        return self.pixel.image_size // 16

    @property
    def num_tokens(self) -> int:
        """Tokens per image: 1 global + token_grid^2 local (197 at 224 px)."""
        return 1 + self.token_grid**2


def _zeroshape_w() -> ModelConfig:
    return ModelConfig(name="zeroshape-w")


def _zeroshape() -> ModelConfig:
    return ModelConfig(
        name="zeroshape",
        pixel=PixelConfig(mask_heads=False),
        encoder=EncoderConfig(in_channels=3),
        decoder=DecoderConfig(point_embed="linear"),
        text=TextConfig(enabled=False),
    )


def _tiny() -> ModelConfig:
    return ModelConfig(
        name="tiny",
        pixel=PixelConfig(
            timm_name="",
            stem_channels=16,
            resnet_layers=(1, 1, 1),
            resnet_channels=(32, 64, 128),
            norm_groups=4,
            vit_dim=64,
            vit_depth=4,
            vit_heads=2,
            vit_pos_grid=14,
            vit_taps=(1, 3),
            features=32,
            depth_hidden=16,
            mask_hidden=16,
        ),
        encoder=EncoderConfig(timm_name="", stem_width=16, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), token_dim=64),
        decoder=DecoderConfig(width=64, heads=2, point_embed_dim=32, occ_width=64, drop_path=0.0),
    )


def _small() -> ModelConfig:
    return ModelConfig(
        name="small",
        pixel=PixelConfig(
            timm_name="",
            stem_channels=32,
            resnet_layers=(1, 2, 2),
            resnet_channels=(64, 128, 256),
            norm_groups=8,
            vit_dim=192,
            vit_depth=6,
            vit_heads=3,
            vit_pos_grid=14,
            vit_taps=(2, 5),
            features=64,
            depth_hidden=32,
            mask_hidden=32,
        ),
        encoder=EncoderConfig(
            timm_name="", stem_width=32, layers=(2, 2, 2, 2), channels=(16, 32, 64, 128), token_dim=128
        ),
        decoder=DecoderConfig(width=128, heads=4, point_embed_dim=64, occ_width=128, drop_path=0.0),
    )


#: name -> factory of a fresh ModelConfig
def _demo() -> ModelConfig:
    """The packaged default model's architecture (its weights: ``--init demo``), as shipped beside
    them (``zsw/assets/demo/model.yaml``, the config its checkpoint embeds; a test keeps them equal)."""
    return load_yaml(Path(__file__).resolve().parent / "assets" / "demo" / "model.yaml", ModelConfig)


MODEL_PRESETS: dict[str, typing.Callable[[], ModelConfig]] = {
    "zeroshape-w": _zeroshape_w,
    "zeroshape": _zeroshape,
    "tiny": _tiny,
    "small": _small,
    "demo": _demo,
}


def get_model_config(spec: str | os.PathLike | ModelConfig) -> ModelConfig:
    """Resolve a preset name, a YAML file or a config object into a :class:`ModelConfig`."""
    if isinstance(spec, ModelConfig):
        return spec
    text = str(spec)
    if text in MODEL_PRESETS:
        return MODEL_PRESETS[text]()
    if text.endswith((".yaml", ".yml")) or os.path.sep in text:
        return load_yaml(text, ModelConfig)
    raise ConfigError(f"unknown model preset {text!r}; choose one of {', '.join(MODEL_PRESETS)} or give a .yaml file")


# --------------------------------------------------------------------------------------------
# Generic strict dataclass <-> dict <-> YAML
# --------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> dict[str, Any]:
    """A frozen dataclass as nested plain Python (tuples become lists, ready for YAML/JSON)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    if not dataclasses.is_dataclass(obj):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(obj).__name__}")
    return plain(obj)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples, dicts to dataclasses."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # built in Python rather than read from YAML
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} entries, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; YAML 1.2 and people read a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        path = f"{where}." if where else ""
        raise ConfigError(f"unknown key {path}{unknown[0]} in {cls.__name__} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a default is missing
        raise ConfigError(f"{cls.__name__}{' at ' + where if where else ''}: {e}") from None


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError.

    Missing keys take the dataclass defaults, so a YAML file only needs what it changes.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    return _from_dict(cls, data, "")


def checked_fields(obj: Any) -> dict[str, Any]:
    """The fields of dataclass instance ``obj`` checked against their annotations as YAML values
    are (an int is no bool, a float any number, a path a str or Path; tuples from lists), and
    converted the same way; a value of the wrong type is a ConfigError naming ``Class.field``."""
    hints = typing.get_type_hints(type(obj))
    name = type(obj).__name__
    return {f.name: _coerce(getattr(obj, f.name), hints[f.name], f"{name}.{f.name}") for f in fields(obj)}


def load_yaml(path: str | os.PathLike, cls: type[T], missing: dict[str, Any] | None = None) -> T:
    """Read a YAML file into dataclass ``cls`` (strict: see :func:`from_dict`). ``missing``: values
    for top-level keys the file lacks, where the field's default is not what the file meant (a
    setting added after the file was written, whose old behaviour differs from its new default)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}") from None
    if data is None:
        data = {}
    if missing and isinstance(data, dict):
        data = {**missing, **data}
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def dump_yaml(obj: Any, path: str | os.PathLike | None = None) -> str:
    """Write a dataclass as YAML (atomically when ``path`` is given); returns the text."""
    import yaml

    text = yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)
    if path is not None:
        from zsw.io import atomic_write_text

        atomic_write_text(path, text)
    return text
