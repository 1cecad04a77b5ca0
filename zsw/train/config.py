"""Training configuration: one frozen dataclass tree, YAML in and out (``zsw.config``).

Defaults are the paper's recipe: AdamW betas (0.9, 0.95), weight decay 0.05 (not on biases and
norms), lr 1e-5, stage ``full`` with 1e-6 for the pretrained pixel model, global batch 80,
10 epochs for stage ``pixel`` and 15 for ``full``; loss weights as in :mod:`zsw.train.losses` and
docs/training.md ("The recipe").

Example::

    from zsw.config import dump_yaml, load_yaml, replace
    cfg = replace(TrainConfig(stage="full"), batch_size=8)
    dump_yaml(cfg, "run.yaml"); assert load_yaml("run.yaml", TrainConfig) == cfg
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zsw.data.dataset import AugmentConfig
from zsw.data.layout import SPLITS
from zsw.errors import ConfigError

__all__ = ["LossConfig", "OptimConfig", "DataConfig", "TrainConfig", "STAGES", "STAGE_EPOCHS"]

#: ``pixel`` (paper's stage 1), ``shape`` (encoder + decoder on ground-truth visible surfaces,
#: no pixel model in the loop), ``full`` (paper's stage 2: everything)
STAGES = ("pixel", "shape", "full")
#: paper: 10 epochs of stage 1, 15 of stage 2
STAGE_EPOCHS = {"pixel": 10, "shape": 15, "full": 15}


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (see :mod:`zsw.train.losses`). Stage ``pixel`` ignores ``occupancy``."""

    intrinsics: float = 10.0
    depth: float = 1.0
    aux_depth: float = 0.1
    visible_mask: float = 1.0
    occluder_mask: float = 1.0
    occupancy: float = 1.0
    # L1 between the decoder's predicted object centre and the true one (mirror-query decoders)
    center: float = 1.0
    # 1 - cos between the predicted and the true up axis of the object (axial-query decoders)
    up: float = 1.0
    # multi-scale gradient matching inside the depth term (ZeroShape's MiDaS loss: 0.1)
    depth_gradient: float = 0.0
    # squared log ratio of the predicted to the true focal length (not in the paper, whose
    # intrinsics term pins only the ratio of focal length to the depth's offset: docs/training.md
    # item 25); 0: off
    focal: float = 0.0
    # predicted inverse depth for the auxiliary term is 1 / (depth + aux_depth_eps)
    aux_depth_eps: float = 0.1


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5
    # stage full: learning rate of the pretrained pixel model (model.pixel); 0 freezes it (no
    # gradient flows into it, so the occupancy loss cannot pull its depth and masks away from what
    # stage pixel left)
    lr_pretrained: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    # clip the global gradient norm (None = no clipping, as the paper)
    grad_clip: float | None = None
    # learning-rate schedule over the run: "constant" (the paper) or "cosine" (to 1 % at the last
    # step), either after a linear warm-up of ``warmup_steps``
    schedule: str = "constant"
    warmup_steps: int = 0
    # decay of an exponential moving average of the weights (zsw.train.ema; 0: off, e.g. 0.99 for a
    # few hundred steps, 0.999 for thousands). With it, validation, best.safetensors and
    # final.safetensors use the average; the checkpoints keep both, so a resumed run is exact
    ema: float = 0.0

    def __post_init__(self) -> None:

        for name in ("lr", "lr_pretrained", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"optim.{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr!r}")
        if not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ConfigError(f"optim.grad_clip must be a finite number > 0 or null, got {self.grad_clip!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule must be constant or cosine, got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (isinstance(self.ema, (int, float)) and math.isfinite(self.ema) and 0 <= self.ema < 1):
            raise ConfigError(f"optim.ema must be a decay in [0, 1) (0: off), got {self.ema!r}")

    def lr_factor(self, step: int, total: int, time_fraction: float = 0.0) -> float:
        """Multiplier of the base learning rates at optimiser step ``step`` of ``total``; a run with
        a time limit (``max_minutes``) decays by whichever of its steps and its time is further on
        (``time_fraction``: the share of the limit spent)."""

        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(total - self.warmup_steps - 1, 1)
        t = min(max(max(step - self.warmup_steps, 0) / span, time_fraction), 1.0)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


@dataclass(frozen=True)
class DataConfig:
    # dataset roots in ZeroShape's layout (folders with lists/, or folders of them)
    roots: tuple[str, ...] = ()
    # query points per sample and the occupancy offset (label: sdf - offset < 0)
    points: int = 4096
    sdf_offset: float = 0.003
    # 0: hard labels (ZeroShape); w > 0: soft labels sigmoid(-(sdf - sdf_offset) / w), in the SDF's
    # units: the same 0.5 level set, but a field that falls off smoothly within a few w of the surface
    label_softness: float = 0.0
    # None: query points drawn uniformly from the SDF samples (ZeroShape); a number: this fraction
    # from samples farther than near_band x the object's extent from the surface (see ShapeDataset)
    far_fraction: float | None = None
    near_band: float = 0.02
    # DataLoader worker processes per rank; None: one less than the CPUs each rank gets, at most 4
    # (more workers than cores only adds start-up time and PyTorch's "suggested max" warning)
    workers: int | None = None
    # "object": the category-agnostic default prompt; "category": the sample's category name
    # (needs CLIP weights for names other than the default)
    prompts: str = "object"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # validation: split name and number of views evaluated at the end of each epoch (spread evenly
    # over the split's views, which are listed root by root and category by category), and the
    # datasets they come from (empty: the training roots; e.g. a set with baked backgrounds and
    # occluders, made with `zsw synthesize procedural --bake val`, to choose the best weights on
    # in-the-wild images)
    val_roots: tuple[str, ...] = ()
    val_split: str = "val"
    val_samples: int = 16


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``batch_size`` is global: ranks x per-rank batch x ``grad_accum``."""

    # model preset name or model YAML
    model: str = "zeroshape-w"
    stage: str = "pixel"
    batch_size: int = 80
    grad_accum: int = 1
    # None: the stage's default (10 pixel, 15 full)
    epochs: int | None = None
    # stop after this many optimiser steps (None: run all epochs)
    max_steps: int | None = None
    # stop once the run has trained this many minutes (wall clock from its first step, validation
    # included, resumed runs adding up; None: no limit); the cosine learning rate and
    # teacher_surface then span whichever of the steps and the minutes ends first
    max_minutes: float | None = None
    # mixed precision: "off", "bf16" (autocast) or "fp16" (autocast + GradScaler, CUDA only)
    amp: str = "off"
    seed: int = 0
    # lift the predicted depth with the GT visible and occluder masks for the encoder (as ZeroShape
    # lifts with the GT mask); False feeds the predicted masks
    teacher_masks: bool = True
    # stage full: probability that a sample's encoder input is lifted from the *ground-truth* depth
    # and K instead of the predicted ones, going linearly from the first value (step 0) to the
    # second (last step). (1, 0) starts the decoder on true shapes and hands it over to the pixel
    # model's; (0, 0) is the paper's recipe. Stage shape always lifts the ground truth.
    teacher_surface: tuple[float, float] = (0.0, 0.0)
    # stage full: move the query points (and the centre and up targets) by the per-axis map that
    # gives the ground-truth visible surface the mean and spread of the lifted one
    # (losses.surface_alignment), so that the decoder learns to complete the surface it is given;
    # False: the ground truth's frame (the paper)
    align_labels: bool = False
    # a zsw checkpoint to start from (e.g. the last stage's, or a converted ZeroShape one)
    init: str | None = None
    # take the pixel model's weights from this checkpoint instead (e.g. a stage pixel run), so that
    # a stage pixel run and a stage shape run trained side by side start stage full together
    init_pixel: str | None = None
    # without init: ImageNet weights (timm) for the ViT and ResNet and CLIP for the default prompt
    # (needs network access or a filled Hugging Face cache)
    pretrained: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # logging and checkpoints, in optimiser steps
    log_every: int = 10
    image_every: int = 500
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    # validation at the end of every epoch; grid resolution of the validation meshes
    validate: bool = True
    # validate every this many optimiser steps instead of at the end of every epoch (None)
    val_every: int | None = None
    val_resolution: int = 32
    # points sampled on each validation mesh and GT cloud (ZeroShape's protocol: 10000)
    val_points: int = 10000
    # stop after this many consecutive non-finite losses (each one is skipped)
    nan_patience: int = 10
    # "auto" (cuda:<local rank> when available, else cpu), "cpu" or "cuda"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.amp not in ("off", "bf16", "fp16"):
            raise ConfigError(f"amp must be off, bf16 or fp16, got {self.amp!r}")
        for name in ("batch_size", "grad_accum", "log_every", "image_every", "checkpoint_every", "nan_patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.val_every is not None and self.val_every < 1:
            raise ConfigError(f"val_every must be >= 1, got {self.val_every}")
        # checked here, not at the first validation or the first clean-up of checkpoints
        if self.keep_checkpoints < 1:
            raise ConfigError(
                f"keep_checkpoints must be >= 1 (the latest is what --resume reads), got {self.keep_checkpoints}"
            )
        if self.val_points < 1:
            raise ConfigError(f"val_points must be >= 1, got {self.val_points}")
        if not 2 <= self.val_resolution <= 1024:
            raise ConfigError(f"val_resolution must be a grid resolution in [2, 1024], got {self.val_resolution}")
        if self.data.val_samples < 0:
            raise ConfigError(f"data.val_samples must be >= 0, got {self.data.val_samples}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_minutes is not None and not (
            isinstance(self.max_minutes, (int, float)) and math.isfinite(self.max_minutes) and self.max_minutes > 0
        ):
            raise ConfigError(f"max_minutes must be a positive number of minutes, got {self.max_minutes!r}")
        if len(self.teacher_surface) != 2 or not all(0.0 <= p <= 1.0 for p in self.teacher_surface):
            raise ConfigError(f"teacher_surface must be two probabilities in [0, 1], got {list(self.teacher_surface)}")
        if self.data.prompts not in ("object", "category"):
            raise ConfigError(f"data.prompts must be object or category, got {self.data.prompts!r}")
        if self.data.val_split not in SPLITS:
            raise ConfigError(f"data.val_split must be one of {', '.join(SPLITS)}, got {self.data.val_split!r}")
        # the data order, augmentation and step seeds take it as an unsigned 32-bit number
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            raise ConfigError(f"seed must be an integer in [0, 2^32), got {self.seed!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        d = self.data
        if d.workers is not None and d.workers < 0:
            raise ConfigError(f"data.workers must be >= 0 or null (automatic), got {d.workers}")
        if d.points < 1:
            raise ConfigError(f"data.points must be >= 1, got {d.points}")
        if d.far_fraction is not None and not (math.isfinite(d.far_fraction) and 0.0 <= d.far_fraction <= 1.0):
            raise ConfigError(f"data.far_fraction must be in [0, 1] or null, got {d.far_fraction!r}")
        if not (math.isfinite(d.near_band) and d.near_band > 0):
            raise ConfigError(f"data.near_band must be a finite number > 0, got {d.near_band!r}")
        if not (math.isfinite(d.label_softness) and d.label_softness >= 0):
            raise ConfigError(f"data.label_softness must be a finite number >= 0, got {d.label_softness!r}")
        if not math.isfinite(d.sdf_offset):
            raise ConfigError(f"data.sdf_offset must be a finite number, got {d.sdf_offset!r}")
        for f in dataclasses.fields(self.loss):  # a negative weight would maximise its term
            w = getattr(self.loss, f.name)
            if not (math.isfinite(w) and w >= 0) or (f.name == "aux_depth_eps" and w == 0):
                bound = "> 0" if f.name == "aux_depth_eps" else ">= 0"
                raise ConfigError(f"loss.{f.name} must be a finite number {bound}, got {w!r}")

    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else STAGE_EPOCHS[self.stage]


def compose(
    config: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    *,
    data: Sequence[str | os.PathLike] | None = None,
    **overrides,
) -> TrainConfig:
    """The configuration of a run: a YAML (or, to resume ``out`` without one, the run's own
    ``config.yaml``, or the defaults), then every override that is not None.

    Overrides are :class:`TrainConfig` fields (``stage``, ``max_steps``, ``init``, ...), plus
    ``model`` (a preset or YAML), ``lr``/``lr_pretrained`` (into ``optim``), ``workers`` (into
    ``data``) and ``data`` (the dataset roots). ``zsw train`` passes its options here unchanged.
    """
    from zsw.config import load_yaml, replace

    saved = Path(out) / "config.yaml" if out is not None else None
    if config is not None:
        cfg = load_yaml(config, TrainConfig)
    elif resume and saved is not None and saved.is_file():  # `zsw train --out RUN --resume`
        cfg = load_yaml(saved, TrainConfig)
    else:
        cfg = TrainConfig()
    optim = {k: overrides.pop(k) for k in ("lr", "lr_pretrained") if k in overrides}
    data_kw = {"workers": overrides.pop("workers")} if overrides.get("workers") is not None else {}
    overrides.pop("workers", None)
    if data:
        data_kw["roots"] = tuple(str(p) for p in data)
    if overrides.get("init") is not None:
        overrides["init"] = str(overrides["init"])
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    cfg = replace(cfg, optim=replace(cfg.optim, **{k: v for k, v in optim.items() if v is not None}))
    for key in ("init", "init_pixel"):  # `demo`: the packaged default model's weights (fine-tuning it)
        if getattr(cfg, key) == "demo":
            from zsw.infer.weights import resolve_weights

            cfg = replace(cfg, **{key: str(resolve_weights("demo")[0])})
    return replace(cfg, data=replace(cfg.data, **data_kw))
