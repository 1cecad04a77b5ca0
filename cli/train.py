"""``zsw train``: train a model by stages (pixel, shape, full), on one device or many with torchrun."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from zsw.cli._common import cli_errors
from zsw.config import MODEL_PRESETS

COMMAND = dict(
    help="Train a model by stages: 'pixel' (depth, intrinsics, visible and occluder masks) then 'full' "
    "(everything, occupancy included), as the paper does; 'shape' trains the encoder and decoder alone on "
    "ground-truth surfaces."
    "\n\nDefaults are the paper's recipe (AdamW (0.9, 0.95), weight decay 0.05 not on biases/norms, lr 1e-5, "
    "1e-6 for the pixel model in stage full, batch 80, 10 / 15 epochs); --config YAML and the options override "
    "them. The run folder gets config.yaml, metrics.jsonl, TensorBoard logs (tb/), atomic checkpoints every "
    "--checkpoint-every steps and at the end, best.safetensors (validation) and final.safetensors. "
    "--resume continues at the exact step. Multi-GPU: launch the same command with torchrun."
    "\n\nExample:\n\n  zsw train --preset tiny --data data/proc --stage pixel --out runs/tiny"
    "\n\n  zsw train --preset tiny --data data/proc --stage full --init runs/tiny/final.safetensors --out runs/tiny2"
    "\n\n  zsw train --preset demo --init demo --data data/mine --stage full --out runs/tuned  # the packaged model"
    "\n\n  torchrun --nproc-per-node 8 --no-python zsw train --preset zeroshape-w --data data/train_data "
    "--stage pixel --out runs/zsw-pixel --amp bf16",
)

# help texts too long for a line of the signature
_PRESET = f"Preset ({', '.join(MODEL_PRESETS)}) or a model YAML."
_STAGE = "pixel (stage 1), full (stage 2) or shape (encoder and decoder alone, on true surfaces)."
_DATA = "Dataset folder(s) in ZeroShape's layout (repeatable)."
_PRETRAINED = "Without --init: ImageNet (timm) and CLIP initial weights."
_INIT = "zsw checkpoint to start from (e.g. stage 1's final), or demo: the packaged model (with --preset demo)."
_MINUTES = "Stop after this many minutes of training; the cosine learning rate ends with them."


@cli_errors
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")],
    data: Annotated[list[Path] | None, typer.Option("--data", "-d", help=_DATA)] = None,
    preset: Annotated[str | None, typer.Option(help=_PRESET)] = None,
    stage: Annotated[str | None, typer.Option(help=_STAGE)] = None,
    config: Annotated[Path | None, typer.Option(help="TrainConfig YAML; options given here override it.")] = None,
    init: Annotated[Path | None, typer.Option(help=_INIT)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the --out run from its last checkpoint.")] = False,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many optimiser steps.")] = None,
    max_minutes: Annotated[float | None, typer.Option(min=0.01, help=_MINUTES)] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default 10 pixel, 15 full).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Global batch (all ranks, all accumulation).")] = None,
    grad_accum: Annotated[int | None, typer.Option(min=1, help="Micro-batches accumulated per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (new parts).")] = None,
    lr_pretrained: Annotated[float | None, typer.Option(help="Stage full: learning rate of the pixel model.")] = None,
    amp: Annotated[str | None, typer.Option(help="Mixed precision: bf16, fp16 (CUDA) or off.")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="DataLoader workers per rank.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of data order, augmentation and initialisation.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help=_PRETRAINED)] = False,
    validate: Annotated[bool | None, typer.Option(help="Validate every epoch.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help="Checkpoint every N steps.")] = None,
    log_every: Annotated[int | None, typer.Option(min=1, help="Log every N steps.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    from zsw.train.config import compose
    from zsw.train.trainer import train as run

    cfg = compose(config, out, resume, data=data, model=preset, stage=stage, max_steps=max_steps, epochs=epochs,
                  max_minutes=max_minutes, batch_size=batch_size, grad_accum=grad_accum, amp=amp, seed=seed,
                  device=device, validate=validate, checkpoint_every=checkpoint_every, log_every=log_every,
                  init=init, lr=lr, lr_pretrained=lr_pretrained, workers=workers,
                  pretrained=pretrained or None)  # fmt: skip
    result = run(cfg, out, resume=resume, progress=progress, echo=lambda m: typer.echo(m, err=True))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    typer.echo(result.summary(out, cfg.stage))
