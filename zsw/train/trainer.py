"""The training loop: one code path for a single process and for ``torchrun`` + DDP.

Run folder (``out``)::

    config.yaml                      the TrainConfig of the run
    metrics.jsonl                    one JSON line per log step, validation and replica check
    tb/                              TensorBoard scalars and image grids (rank 0)
    checkpoints/step-XXXXXXXX.safetensors   model weights + config (zsw.checkpoint.save)
    checkpoints/step-XXXXXXXX.state.pt      optimiser, scaler, position, counters
                                            (plain tensors and numbers: torch.load(weights_only=True))
    checkpoints/latest.json          which pair is the latest (written last, atomically)
    best.safetensors                 lowest validation CD (stage full) or depth error (stage pixel)
    final.safetensors                the weights at the end of the run

Resuming (``resume=True``) restores the weights, the optimiser and scaler state, the epoch and the
position inside it (:class:`~zsw.train.distributed.ResumableSampler`), and the counters. Random
state needs no saving: the data of item ``i`` in epoch ``e`` come from ``(seed, e, i)``
(:class:`~zsw.data.dataset.ShapeDataset`) and the model's randomness (stochastic depth) from a
generator reseeded with ``(seed, rank, step)`` before every step, so a resumed run continues
exactly as an uninterrupted one.

Non-finite losses (or gradients) skip the step on every rank and are counted; after
``nan_patience`` in a row training stops with a :class:`TrainingError`. At each checkpoint the
ranks compare a fingerprint of their parameters and stop if the replicas have diverged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from zsw.config import dump_yaml, get_model_config, load_yaml, to_dict
from zsw.errors import CheckpointError, ConfigError, ZswError
from zsw.io import atomic_path, atomic_write_json
from zsw.train.config import TrainConfig
from zsw.train.distributed import (
    DistInfo,
    ResumableSampler,
    all_gather_object,
    all_min,
    all_reduce_mean,
    barrier,
    init_distributed,
)
from zsw.train.step import TrainStep, loss_scalars, param_groups, set_trainable, unused_parameters

__all__ = ["Trainer", "TrainResult", "RunState", "TrainingError", "train", "RESUME_FREE_KEYS"]

log = logging.getLogger(__name__)

#: config keys that may change when a run is resumed (everything else must match)
RESUME_FREE_KEYS = (
    "max_steps",
    "epochs",
    "log_every",
    "image_every",
    "checkpoint_every",
    "keep_checkpoints",
    "validate",
    "val_every",
    "val_resolution",
    "nan_patience",
    "device",
    "data.workers",
    "data.val_samples",
    "data.val_roots",
    "init",
    "init_pixel",
)


class TrainingError(ZswError):
    """Training cannot go on (non-finite losses, diverged replicas)."""


@dataclass
class TrainResult:
    step: int
    epoch: int
    seconds: float
    samples_per_second: float
    final: Path | None
    best: Path | None
    last: dict[str, float] = field(default_factory=dict)  # losses of the last logged step
    validation: dict[str, float] = field(default_factory=dict)  # last validation
    nonfinite_steps: int = 0
    skipped_samples: int = 0


@dataclass
class RunState:
    """Where a run is: saved with every checkpoint."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current epoch (0-based)
    consumed: int = 0  # samples of the current epoch already used
    nan_streak: int = 0
    nan_total: int = 0
    skipped: int = 0  # unreadable samples passed over
    best: float = math.inf  # best validation metric so far

    def as_dict(self, world_size: int, cfg: TrainConfig) -> dict:
        return {**asdict(self), "world_size": world_size, "seed": cfg.seed, "stage": cfg.stage}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _comparable(cfg: TrainConfig) -> dict:
    """Flat config keys with dataset and checkpoint paths resolved, so that the same folder given
    as a relative or an absolute path compares equal."""
    flat = _flatten(to_dict(cfg))
    for key in ("data.roots", "data.val_roots"):
        flat[key] = [str(Path(p).resolve()) for p in flat.get(key) or []]
    for key in ("init", "init_pixel"):
        if flat.get(key):
            flat[key] = str(Path(flat[key]).resolve())
    return flat


def _step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _param_fingerprint(model: torch.nn.Module) -> str:
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    return hashlib.sha1(sums.cpu().numpy().tobytes()).hexdigest()[:16]


class Trainer:
    """Train ``cfg`` into ``out`` (see the module docstring).

    Args:
        cfg: the run's configuration.
        out: the run folder.
        resume: continue the run in ``out`` from its latest checkpoint.
        progress: show a rich progress bar (rank 0).
        echo: where rank 0 prints one-line messages (default: stderr).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out: str | os.PathLike,
        *,
        resume: bool = False,
        progress: bool = True,
        echo: Callable[[str], None] | None = None,
        dist_info: DistInfo | None = None,
    ):
        self.cfg = cfg
        self.out = Path(out)
        self.resume = resume
        self.progress = progress
        self.dist = dist_info or init_distributed(cfg.device)
        self._echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._tb = None
        self.ckpt_dir = self.out / "checkpoints"

    # ---- helpers ------------------------------------------------------------------------------

    def echo(self, msg: str) -> None:
        if self.dist.is_main:
            self._echo(msg)

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def _writer(self):
        if self._tb is None and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self._tb = False
                log.warning("tensorboard is not installed; no TensorBoard logs")
            else:
                self._tb = SummaryWriter(str(self.out / "tb"))
        return self._tb or None

    def _autocast(self):
        if self.cfg.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.dist.device.type, dtype=dtype)

    # ---- setup --------------------------------------------------------------------------------

    def _check_run_folder(self) -> dict | None:
        """The checkpoint to resume from (the newest one that loads), None for a fresh run."""
        latest = self.ckpt_dir / "latest.json"
        has_run = latest.exists() or any(self.ckpt_dir.glob("step-*.safetensors"))
        if not self.resume:
            if has_run:
                raise ConfigError(
                    f"{self.out} already holds a training run; pass --resume to continue it or choose another --out"
                )
            return None
        if not has_run:
            self.echo(f"no checkpoint in {self.out} yet: starting from step 0")
            return None
        saved_cfg = self.out / "config.yaml"
        if saved_cfg.is_file():
            old = _comparable(load_yaml(saved_cfg, TrainConfig))
            new = _comparable(self.cfg)
            diff = [k for k in new if k not in RESUME_FREE_KEYS and old.get(k) != new[k]]
            if diff:
                k = diff[0]
                raise ConfigError(
                    f"cannot resume {self.out}: it was trained with {k}={old.get(k)!r}, now {new[k]!r} "
                    "(only max_steps, epochs, logging, checkpoint and validation settings may change)"
                )
        return self._newest_valid_checkpoint()

    def _newest_valid_checkpoint(self) -> dict:
        """``latest.json``'s checkpoint if it loads, else the newest ``step-*`` pair that does."""
        from zsw import checkpoint

        named = None
        latest = self.ckpt_dir / "latest.json"
        try:
            named = json.loads(latest.read_text())
            candidates = [named]
        except (OSError, ValueError) as e:
            candidates = []
            self.echo(f"{latest} is unreadable ({type(e).__name__}); looking for the newest valid checkpoint")
        for path in sorted(self.ckpt_dir.glob("step-*.safetensors"), reverse=True):
            record = {"model": path.name, "state": path.name.replace(".safetensors", ".state.pt")}
            if not named or record["model"] != named.get("model"):
                candidates.append(record)
        for record in candidates:
            try:
                checkpoint.read(self.ckpt_dir / record["model"])
                state = torch.load(self.ckpt_dir / record["state"], map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file disqualifies the pair
                self.echo(f"skipping checkpoint {record['model']}: it does not load ({str(e).splitlines()[0][:120]})")
                continue
            if record is not named:
                self.echo(f"resuming from {record['model']} (step {state['step']}), the newest checkpoint that loads")
            return {**record, "step": int(state["step"])}
        raise CheckpointError(f"no checkpoint in {self.ckpt_dir} loads; start a new run with another --out")

    def _build_model(self):
        from zsw.model import build_model

        cfg = self.cfg
        model = build_model(cfg.model, pretrained=cfg.pretrained and cfg.init is None)
        if cfg.init is not None:
            model.load_state_dict(self._read_init(cfg.init, "--init", model), strict=True)
        if cfg.init_pixel is not None:  # the pixel model from another run (e.g. stage pixel's)
            tensors = self._read_init(cfg.init_pixel, "init_pixel", model)
            pixel = {k: v for k, v in tensors.items() if k.startswith("pixel.")}
            missing = [k for k in model.state_dict() if k.startswith("pixel.") and k not in pixel]
            if missing:
                raise CheckpointError(f"init_pixel {cfg.init_pixel} lacks pixel-model tensors (e.g. {missing[0]})")
            model.load_state_dict(pixel, strict=False)
        return model

    def _read_init(self, path: str, what: str, model) -> dict:
        from zsw import checkpoint

        tensors, mcfg, _ = checkpoint.read(path)
        if to_dict(mcfg) != to_dict(model.config):
            raise CheckpointError(
                f"{what} {path} holds a {mcfg.name!r} model whose config differs from the {self.cfg.model!r} "
                "being trained; pass its preset or model YAML"
            )
        own = model.state_dict()
        bad = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
        unknown = [k for k in tensors if k not in own]
        if bad or unknown or any(k not in tensors for k in own):
            first = (bad or unknown or [k for k in own if k not in tensors])[0]
            raise CheckpointError(f"{what} {path} does not fit the model (first mismatch: {first})")
        return tensors

    def _datasets(self, image_size: int):
        from zsw.data.dataset import ShapeDataset

        cfg = self.cfg
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
            with_shape=cfg.stage in ("shape", "full"),
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
            except ConfigError:
                self.echo(f"no {cfg.data.val_split} lists in the data: validation is off")
        return train, val

    # ---- checkpoints ---------------------------------------------------------------------------

    def _save(self, state: dict) -> None:
        from zsw import checkpoint

        model, optimizer, scaler = self.model, self.optimizer, self.scaler
        # every rank takes part in the replica check; rank 0 writes
        digests = all_gather_object(_param_fingerprint(model))
        if len(set(digests)) > 1:
            raise TrainingError(f"replicas diverged at step {state['step']}: parameter fingerprints {digests}")
        self._log({"event": "sync", "step": state["step"], "digests": digests})
        if self.dist.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            name = f"step-{state['step']:08d}"
            extra = {"stage": self.cfg.stage, "step": state["step"], "epoch": state["epoch"]}
            checkpoint.save(model, self.ckpt_dir / f"{name}.safetensors", extra={**extra, "train": to_dict(self.cfg)})
            full = dict(state, optimizer=optimizer.state_dict(), scaler=scaler.state_dict())
            with atomic_path(self.ckpt_dir / f"{name}.state.pt") as tmp:
                torch.save(full, tmp)
            atomic_write_json(
                self.ckpt_dir / "latest.json",
                {"step": state["step"], "model": f"{name}.safetensors", "state": f"{name}.state.pt"},
            )
            pairs = sorted(self.ckpt_dir.glob("step-*.safetensors"))
            for old in pairs[: max(0, len(pairs) - self.cfg.keep_checkpoints)]:
                old.unlink(missing_ok=True)
                old.with_name(old.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)
        barrier()

    def _load(self, record: dict) -> dict:
        from zsw import checkpoint

        model, optimizer, scaler = self.model, self.optimizer, self.scaler
        path = self.ckpt_dir / record["model"]
        tensors, _, _ = checkpoint.read(path)
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit the model: {str(e).splitlines()[0]}") from None
        state_path = self.ckpt_dir / record["state"]
        try:
            state = torch.load(state_path, map_location=self.dist.device, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read {state_path} with weights_only=True: {e}") from None
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        return state

    # ---- logging -------------------------------------------------------------------------------

    def _images(self, batch: dict, result: dict, step: int) -> None:
        writer = self._writer()
        if writer is None:
            return
        from torchvision.utils import make_grid

        n = min(4, batch["image"].shape[0])

        def gray(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # [n, 1, S, S] -> [n, 3, S, S]
            x = x[:n].detach().float().cpu()
            m = (x > 0) if mask is None else mask[:n].cpu() > 0.5
            lo = torch.where(m, x, torch.full_like(x, float("inf"))).flatten(1).amin(1).clamp(max=1e9)
            hi = torch.where(m, x, torch.full_like(x, -float("inf"))).flatten(1).amax(1).clamp(min=-1e9)
            y = ((x - lo[:, None, None, None]) / (hi - lo).clamp(min=1e-6)[:, None, None, None]).clamp(0, 1)
            return (y * m).expand(-1, 3, -1, -1)

        rows = [batch["image"][:n].detach().float().cpu(), gray(batch["depth"])]
        rows.append(gray(result["pred_depth"], batch["visible_mask"]))
        rows.append(batch["visible_mask"][:n].cpu().float().expand(-1, 3, -1, -1))
        if "pred_visible" in result:
            rows.append(torch.sigmoid(result["pred_visible"][:n].float().cpu()).expand(-1, 3, -1, -1))
            rows.append(batch["occluder_mask"][:n].cpu().float().expand(-1, 3, -1, -1))
            rows.append(torch.sigmoid(result["pred_occluder"][:n].float().cpu()).expand(-1, 3, -1, -1))
        grid = make_grid(torch.cat(rows), nrow=n, padding=2)
        writer.add_image("train/input_gtdepth_depth_gtvisible_visible_gtoccluder_occluder", grid, step)

    # ---- the loop ------------------------------------------------------------------------------

    def _setup(self) -> None:
        """Run folder, model, optimiser, data and (when resuming) the saved state."""
        from torch.nn.parallel import DistributedDataParallel

        cfg, dist = self.cfg, self.dist
        device = dist.device
        if cfg.amp == "fp16" and device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA device; use bf16 or off on the CPU")
        # rank 0 inspects the run folder; every rank learns the outcome (no rank may hang on an error)
        status: tuple = ("ok", None)
        if dist.is_main:
            try:
                status = ("ok", self._check_run_folder())
            except ZswError as e:
                status = (type(e).__name__, str(e))
        kind, record = all_gather_object(status)[0]
        if kind != "ok":
            raise {"ConfigError": ConfigError, "CheckpointError": CheckpointError}.get(kind, ZswError)(record)
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_yaml(cfg, self.out / "config.yaml")
        barrier()

        micro, rem = divmod(cfg.batch_size, dist.world_size * cfg.grad_accum)
        if rem or micro < 1:
            raise ConfigError(
                f"batch size {cfg.batch_size} must be a multiple of ranks x grad_accum "
                f"({dist.world_size} x {cfg.grad_accum})"
            )
        self.micro = micro
        self.train_ds, self.val_ds = self._datasets(get_model_config(cfg.model).pixel.image_size)
        self.sampler = ResumableSampler(len(self.train_ds), cfg.batch_size, dist.rank, dist.world_size, cfg.seed)
        self.total_steps = cfg.num_epochs * self.sampler.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        torch.manual_seed(cfg.seed)
        self.model = model = self._build_model().to(device)
        set_trainable(model, cfg.stage)
        model.train()
        self.runner = TrainStep(model, cfg)
        unused = unused_parameters(self.runner, device)
        for name in unused:
            model.get_parameter(name).requires_grad_(False)
        if unused:
            self.echo(f"frozen {len(unused)} parameter tensors that stage {cfg.stage} never uses (e.g. {unused[0]})")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.stage, cfg.optim), betas=cfg.optim.betas)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        if dist.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.runner = DistributedDataParallel(self.runner, device_ids=ids)

        self.state = RunState()
        if record is not None:
            saved = self._load(record)
            self.state = RunState(**{k: saved[k] for k in RunState.__dataclass_fields__})
            if int(saved["world_size"]) != dist.world_size:
                self.echo(f"resuming a {saved['world_size']}-rank run on {dist.world_size} ranks")
            s = self.state
            self.echo(f"resumed {self.out} at step {s.step} (epoch {s.epoch + 1}, {s.consumed} samples into it)")
        self.last_saved = self.state.step
        barrier()
        n_params = sum(p.numel() for p in self.params)
        self.echo(
            f"training {model.config.name} stage {cfg.stage}: {len(self.train_ds)} samples, "
            f"{self.sampler.steps_per_epoch} steps/epoch of {cfg.batch_size} ({dist.world_size} rank(s) x {micro} "
            f"x {cfg.grad_accum}), {n_params / 1e6:.2f}M trainable parameters, device {device}"
        )

    def _loader(self):
        from torch.utils.data import DataLoader

        return DataLoader(
            self.train_ds,
            batch_size=self.micro,
            sampler=self.sampler,
            num_workers=_loader_workers(self.cfg.data.workers, self.dist.world_size),
            drop_last=True,
            pin_memory=self.dist.device.type == "cuda",
        )

    def _optimizer_step(self, batches) -> tuple[dict[str, float], dict, dict]:
        """One optimiser step over ``grad_accum`` micro-batches; returns the mean loss terms and
        the last micro-batch with its result (for image logging)."""
        cfg, dist, st = self.cfg, self.dist, self.state
        torch.manual_seed(_step_seed(cfg.seed, dist.rank, st.step))
        step_module = self.runner.module if dist.distributed else self.runner
        step_module.set_progress(st.step / max(self.total_steps - 1, 1))
        factor = cfg.optim.lr_factor(st.step, self.total_steps)
        for group in self.optimizer.param_groups:
            # the group's own lr is its base until the first step records it (saved with the optimiser)
            group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
        finite = True
        terms: dict[str, float] = {}
        for a in range(cfg.grad_accum):
            batch = _to_device(next(batches), dist.device)
            st.skipped += int(batch.pop("skipped").sum())
            accumulate = dist.distributed and a < cfg.grad_accum - 1
            with self.runner.no_sync() if accumulate else contextlib.nullcontext():
                with self._autocast():
                    result = self.runner(batch)
                ok = all_min(bool(torch.isfinite(result["total"].detach())), dist.device)
                if ok:
                    self.scaler.scale(result["total"] / cfg.grad_accum).backward()
                else:
                    # every rank still runs backward (DDP's reducer expects it); the gradients are dropped
                    (result["total"] * 0).backward()
                    bad = [k for k, v in loss_scalars(result).items() if not math.isfinite(v)]
                    log.warning("non-finite loss at step %d (%s)", st.step, ", ".join(bad) or "total")
            finite &= ok
            for k, v in loss_scalars(result).items():
                terms[k] = terms.get(k, 0.0) + v / cfg.grad_accum
        if finite:
            self.scaler.unscale_(self.optimizer)
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
            terms["grad_norm"] = float(norm)
            # fp16: the scaler skips overflowing steps itself and lowers its scale
            finite = bool(torch.isfinite(norm)) or self.scaler.is_enabled()
            if finite:
                self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            st.nan_streak = 0
        else:
            st.nan_streak += 1
            st.nan_total += 1
            if st.nan_streak >= cfg.nan_patience:
                raise TrainingError(
                    f"stopped at step {st.step}: {st.nan_streak} consecutive non-finite losses or gradients "
                    f"({st.nan_total} in all); lower the learning rate, try --amp off, or check the data"
                )
        st.step += 1
        st.consumed += cfg.batch_size
        return terms, batch, result

    def _log_step(self, terms: dict[str, float], samples_per_s: float) -> dict[str, float]:
        st = self.state
        terms = all_reduce_mean(terms, self.dist.device)
        rec = {
            "step": st.step,
            "epoch": st.epoch,
            "samples_per_s": samples_per_s,
            "skipped_samples": st.skipped,
            "nonfinite_steps": st.nan_total,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"loss/{k}": v for k, v in terms.items()},
        }
        self._log(rec)
        writer = self._writer()
        if writer is not None:
            for k, v in rec.items():
                if k not in ("step", "epoch") and math.isfinite(v):
                    writer.add_scalar(k if "/" in k else f"train/{k}", v, st.step)
        return terms

    def _validate_and_keep_best(self) -> dict[str, float]:
        """Validate (rank 0) and save ``best.safetensors`` when the metric improved."""
        st = self.state
        validation: dict[str, float] = {}
        if self.val_ds is not None:
            if self.dist.is_main:
                validation = self._validate(self.model, self.val_ds, st.step, st.epoch)
            barrier()
        if self.dist.is_main and validation:
            metric = validation.get("val/cd", validation.get("val/depth_ssi_mae", math.inf))
            if metric < st.best:
                from zsw import checkpoint

                st.best = metric
                checkpoint.save(self.model, self.out / "best.safetensors", extra={"step": st.step, **validation})
        st.best = all_gather_object(st.best)[0]
        return validation

    def _end_epoch(self) -> dict[str, float]:
        """Validate, keep the best weights, move to the next epoch, checkpoint."""
        st = self.state
        validation = {} if self.cfg.val_every else self._validate_and_keep_best()
        st.epoch += 1
        st.consumed = 0
        self._save(st.as_dict(self.dist.world_size, self.cfg))
        self.last_saved = st.step
        return validation

    def fit(self) -> TrainResult:
        """Train until ``epochs`` or ``max_steps``; returns a summary."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._setup()
        cfg, st = self.cfg, self.state
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[sps]:.1f} samples/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not (self.progress and self.dist.is_main),
        )
        task = progress.add_task(f"stage {cfg.stage}", total=self.total_steps, completed=st.step, loss=math.nan, sps=0)
        start_time, start_step = time.perf_counter(), st.step
        window_t, window_samples = time.perf_counter(), 0
        last: dict[str, float] = {}
        validation: dict[str, float] = {}
        try:
            with progress:
                while st.step < self.total_steps and st.epoch < cfg.num_epochs:
                    self.sampler.set_epoch(st.epoch, start=st.consumed)
                    self.train_ds.set_epoch(st.epoch)
                    batches = iter(self._loader())
                    while st.consumed < self.sampler.samples_per_epoch and st.step < self.total_steps:
                        terms, batch, result = self._optimizer_step(batches)
                        window_samples += cfg.batch_size
                        done = st.step >= self.total_steps
                        if st.step % cfg.log_every == 0 or done:
                            now = time.perf_counter()
                            sps = window_samples / max(now - window_t, 1e-9)
                            window_t, window_samples = now, 0
                            last = {k: v for k, v in self._log_step(terms, sps).items() if math.isfinite(v)}
                            progress.update(task, loss=last.get("total", math.nan), sps=sps)
                        progress.update(task, completed=st.step)
                        if self.dist.is_main and (st.step % cfg.image_every == 0 or st.step == 1):
                            self._images(batch, result, st.step)
                        if cfg.val_every and (st.step % cfg.val_every == 0 or done):
                            validation = self._validate_and_keep_best() or validation
                        if st.step % cfg.checkpoint_every == 0 or done:
                            self._save(st.as_dict(self.dist.world_size, cfg))
                            self.last_saved = st.step
                    if st.consumed >= self.sampler.samples_per_epoch:
                        validation = self._end_epoch() or validation
        except KeyboardInterrupt:
            if not self.dist.distributed and st.step > self.last_saved:
                self._save(st.as_dict(self.dist.world_size, cfg))
                self.echo(f"interrupted: saved step {st.step}; continue with --resume")
            raise

        final = None
        if self.dist.is_main and st.step >= self.total_steps:
            from zsw import checkpoint

            extra = {"stage": cfg.stage, "step": st.step}
            final = checkpoint.save(self.model, self.out / "final.safetensors", extra=extra)
        barrier()
        if self._tb:
            self._tb.close()
        seconds = time.perf_counter() - start_time
        best_path = self.out / "best.safetensors"
        return TrainResult(
            step=st.step,
            epoch=st.epoch,
            seconds=seconds,
            samples_per_second=(st.step - start_step) * cfg.batch_size / max(seconds, 1e-9),
            final=final,
            best=best_path if best_path.exists() else None,
            last=last,
            validation=validation,
            nonfinite_steps=st.nan_total,
            skipped_samples=st.skipped,
        )

    def _validate(self, model, val_ds, step: int, epoch: int) -> dict[str, float]:
        from zsw.train.validate import validate

        t0 = time.perf_counter()
        metrics = validate(
            model,
            val_ds,
            self.cfg.stage,
            self.dist.device,
            max_samples=self.cfg.data.val_samples,
            resolution=self.cfg.val_resolution,
            surface_points=self.cfg.val_points,
        )
        self._log({"event": "validation", "step": step, "epoch": epoch, **metrics})
        writer = self._writer()
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(k, v, step)
        shown = ", ".join(f"{k[4:]} {v:.4f}" for k, v in metrics.items() if k != "val/samples")
        self.echo(f"epoch {epoch + 1} validation ({time.perf_counter() - t0:.1f}s): {shown}")
        return metrics


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run :class:`Trainer` (joining torchrun's process group when launched by torchrun)."""
    from zsw.train.distributed import shutdown

    try:
        return Trainer(cfg, out, resume=resume, progress=progress, echo=echo).fit()
    finally:
        shutdown()


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
