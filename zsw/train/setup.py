"""What a training run is made of before its first step: the model (with ``init`` checkpoints),
the stage's trainable parameters, the optimiser and scaler, the datasets and their loader."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from zsw.data.dataset import ShapeDataset
from zsw.errors import ConfigError
from zsw.model import build_model
from zsw.train.config import TrainConfig
from zsw.train.distributed import DistInfo
from zsw.train.run_folder import read_init
from zsw.train.step import TrainStep, param_groups, set_trainable, unused_parameters

__all__ = ["Parts", "build_model_for", "datasets", "training_parts", "loader"]


@dataclass
class Parts:
    model: torch.nn.Module
    runner: torch.nn.Module  # TrainStep, wrapped in DDP when distributed
    params: list  # the trainable parameters
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def build_model_for(cfg: TrainConfig):
    """The model of ``cfg``: a preset or YAML, then ``init`` and ``init_pixel`` checkpoints."""
    model = build_model(cfg.model, pretrained=cfg.pretrained and cfg.init is None)
    if cfg.init is not None:
        model.load_state_dict(read_init(cfg.init, "--init", model, cfg.model), strict=True)
    if cfg.init_pixel is not None:  # the pixel model from another run (e.g. stage pixel's)
        pixel = read_init(cfg.init_pixel, "init_pixel", model, cfg.model, part="pixel")
        model.load_state_dict(pixel, strict=False)
    return model


def datasets(cfg: TrainConfig, image_size: int, echo: Callable[[str], None]):
    """The training set and (``validate``) the validation set, or None without val lists."""
    if not cfg.data.roots:
        raise ConfigError("no training data: pass --data DIR (a dataset in ZeroShape's layout)")
    train = ShapeDataset(
        list(cfg.data.roots),
        "train",
        points=cfg.data.points,
        augment=cfg.data.augment,
        seed=cfg.seed,
        size=image_size,
        sdf_offset=cfg.data.sdf_offset,
        label_softness=cfg.data.label_softness,
        with_shape=cfg.stage in ("shape", "full"),
        with_appearance=cfg.stage != "shape",  # stage shape reads ground-truth surfaces, not the image
        far_fraction=cfg.data.far_fraction,
        near_band=cfg.data.near_band,
    )
    val = None
    if cfg.validate:
        try:
            val = ShapeDataset(
                list(cfg.data.val_roots or cfg.data.roots),
                cfg.data.val_split,
                size=image_size,
                seed=cfg.seed,
                with_shape=False,
            )
        except ConfigError as e:
            if cfg.data.val_roots:  # asked for by name: a wrong folder is an error, not "no validation"
                raise
            if cfg.data.val_split != "val":  # a split asked for by name (a typo would turn validation off)
                raise ConfigError(f"data.val_split {cfg.data.val_split!r}: {e}") from None
            echo(f"no {cfg.data.val_split} lists in the data: validation is off")
    return train, val


def training_parts(
    cfg: TrainConfig, dist: DistInfo, echo: Callable[[str], None], step_class: type = TrainStep
) -> Parts:
    """The model on the device with the stage's trainable parameters (and those the stage never
    reaches frozen, which DDP requires), AdamW over the paper's parameter groups, the scaler.
    ``step_class`` computes a step's losses (a :class:`TrainStep`; tests substitute their own)."""
    device = dist.device
    torch.manual_seed(cfg.seed)
    model = build_model_for(cfg).to(device)
    set_trainable(model, cfg.stage, train_pixel=cfg.optim.lr_pretrained > 0)
    model.train()
    runner = step_class(model, cfg)
    unused = unused_parameters(runner, device)
    for name in unused:
        model.get_parameter(name).requires_grad_(False)
    if unused:
        echo(f"frozen {len(unused)} parameter tensors that stage {cfg.stage} never uses (e.g. {unused[0]})")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg.stage, cfg.optim), betas=cfg.optim.betas)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    if dist.distributed:
        runner = DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda" else None)
    return Parts(model, runner, params, optimizer, scaler)


def loader(dataset, micro_batch: int, sampler, cfg: TrainConfig, dist: DistInfo) -> DataLoader:
    return DataLoader(dataset, batch_size=micro_batch, sampler=sampler, drop_last=True,
                      num_workers=_loader_workers(cfg.data.workers, dist.world_size),
                      pin_memory=dist.device.type == "cuda", worker_init_fn=_ignore_ctrl_c)  # fmt: skip


def _ignore_ctrl_c(worker_id: int) -> None:
    """A terminal's Ctrl-C reaches the workers too, and so does a SIGTERM sent to the whole process
    group (torchrun stopping a rank, a scheduler stopping a job): they keep loading, and the
    trainer decides when to stop (after the step under way) and shuts them down. A worker whose
    trainer died exits by itself (PyTorch's workers watch their parent)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader_workers(asked: int | None, world_size: int) -> int:
    """DataLoader workers per rank: as asked, or (None) one less than the CPUs each rank gets (the
    rank itself needs one), at most 4."""
    if asked is not None:
        return asked
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus // max(1, world_size) - 1))
