"""The training loop: one code path for a single process and for ``torchrun`` + DDP.

The run folder (config, metrics, checkpoints, best and final weights) and what may be resumed are
:mod:`zsw.train.run_folder`'s; TensorBoard and the progress bar :mod:`zsw.train.monitor`'s; the
rank helpers :mod:`zsw.train.distributed`'s; one step's forward and losses
:class:`~zsw.train.step.TrainStep`'s. This module is the loop: set up, then per optimiser step
accumulate, clip, step, log, validate, checkpoint.

Resuming (``resume=True``) restores the weights (and their average, ``optim.ema``), the optimiser
and scaler state, the epoch and the position inside it
(:class:`~zsw.train.distributed.ResumableSampler`), and the counters. Random
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

from zsw.config import get_model_config
from zsw.errors import ConfigError, ZswError
from zsw.train.config import TrainConfig
from zsw.train.distributed import (
    DistInfo,
    ResumableSampler,
    all_gather_object,
    all_min,
    all_reduce_mean,
    barrier,
    broadcast_float,
    init_distributed,
    on_main,
    replica_fingerprints,
    shutdown,
)
from zsw.train.ema import WeightAverage
from zsw.train.monitor import Monitor
from zsw.train.run_folder import RESUME_FREE_KEYS, RunFolder
from zsw.train.setup import datasets, loader, training_parts
from zsw.train.step import TrainStep, loss_scalars
from zsw.train.validate import validate

__all__ = ["Trainer", "TrainResult", "TrainingError", "train", "RESUME_FREE_KEYS"]

log = logging.getLogger(__name__)


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

    def summary(self, out: str | os.PathLike, stage: str) -> str:
        """One line for the terminal: where the run stands, its last losses, its final weights."""
        done = f"{out}: stage {stage} at step {self.step}"
        if self.last:
            losses = ", ".join(f"{k} {v:.4f}" for k, v in self.last.items())
            done += f" ({self.samples_per_second:.2f} samples/s); {losses}"
        else:
            done += " already: no step left to train"
        return done + (f"; final weights {self.final}" if self.final else "")


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
    seconds: float = 0.0  # wall-clock seconds trained, over every resume (what max_minutes limits)

    def as_dict(self, world_size: int, cfg: TrainConfig, total_steps: int) -> dict:
        # total_steps: the length the learning-rate and teacher_surface schedules were stretched over
        return {
            **asdict(self),
            "world_size": world_size,
            "seed": cfg.seed,
            "stage": cfg.stage,
            "total_steps": total_steps,
        }


def _step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class _StopBetweenSteps:
    """Ctrl-C or a termination request (SIGTERM: ``kill``, a scheduler's preemption or time limit,
    torchrun passing on its own stop) while training: the run stops once the step under way is
    done and saves it whole (a step interrupted half-way has updated some of the weights, or
    BatchNorm's running statistics, and not others). A second Ctrl-C stops at once; SIGKILL, which
    no process can catch, is what stops a run at once from outside. Under torchrun the ranks agree
    at every check (one all-reduce of a flag), so they stop after the same step and save it
    together, whichever of them got the signal. Handlers are installed from the main thread only;
    elsewhere Ctrl-C raises as usual."""

    def __init__(self, echo: Callable[[str], None], device: torch.device):
        self.echo, self.device, self.requested, self._previous = echo, device, False, {}

    def __enter__(self) -> _StopBetweenSteps:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        import signal

        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            how = "Ctrl-C again to stop at once" if signum == signal.SIGINT else "SIGKILL stops at once"
            what = "interrupted" if signum == signal.SIGINT else "asked to terminate"
            self.echo(f"{what}: stopping after this step ({how})")
        self.requested = True

    def check(self) -> None:
        """Raise KeyboardInterrupt, on every rank at once, when any rank was asked to stop."""
        if not all_min(not self.requested, self.device):  # a world of one: no collective
            raise _AgreedStop


class _AgreedStop(KeyboardInterrupt):
    """The stop every rank reached after the same step (:meth:`_StopBetweenSteps.check`)."""


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
        self.folder = RunFolder(self.out, self.echo)
        self.monitor = Monitor(self.out, self.dist.is_main, progress)

    # ---- helpers ------------------------------------------------------------------------------

    def echo(self, msg: str) -> None:
        if self.dist.is_main:
            self._echo(msg)

    def _log(self, record: dict) -> None:
        if self.dist.is_main:
            self.folder.log(record)

    def _autocast(self):
        if self.cfg.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.dist.device.type, dtype=dtype)

    # ---- setup --------------------------------------------------------------------------------

    def _save(self, state: dict) -> None:
        """Check that the replicas agree, then rank 0 writes the checkpoint pair."""
        digests = replica_fingerprints(self.model)
        if len(set(digests)) > 1:
            raise TrainingError(f"replicas diverged at step {state['step']}: parameter fingerprints {digests}")
        position = {k: state[k] for k in ("step", "epoch", "consumed")}  # rewind_log finds a checkpoint by it
        self._log({"event": "sync", **position, "digests": digests})
        if self.dist.is_main:
            if self.ema is not None:
                state = {**state, "ema": self.ema.state_dict()}
            self.folder.save(self.model, self.optimizer, self.scaler, state, self.cfg)
        barrier()
        self.last_saved = state["step"]

    # ---- the loop ------------------------------------------------------------------------------

    def _setup(self) -> None:
        """Run folder, model, optimiser, data and (when resuming) the saved state."""
        cfg, dist = self.cfg, self.dist
        device = dist.device
        if cfg.amp == "fp16" and device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA device; use bf16 or off on the CPU")
        # rank 0 inspects the run folder; every rank learns the outcome (no rank may hang on an error)
        record = on_main(lambda: self.folder.resume_point(cfg, self.resume), dist.is_main)

        micro, rem = divmod(cfg.batch_size, dist.world_size * cfg.grad_accum)
        if rem or micro < 1:
            raise ConfigError(
                f"batch size {cfg.batch_size} must be a multiple of ranks x grad_accum "
                f"({dist.world_size} x {cfg.grad_accum})"
            )
        self.micro = micro
        self.train_ds, self.val_ds = datasets(cfg, get_model_config(cfg.model).pixel.image_size, self.echo)
        self.sampler = ResumableSampler(len(self.train_ds), cfg.batch_size, dist.rank, dist.world_size, cfg.seed)
        self.total_steps = cfg.num_epochs * self.sampler.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        parts = training_parts(cfg, dist, self.echo, TrainStep)
        self.model, self.runner, self.params = parts.model, parts.runner, parts.params
        model = self.model
        self.optimizer, self.scaler = parts.optimizer, parts.scaler
        # the average starts at the initial weights (a resumed run's is loaded below)
        self.ema = WeightAverage(model, cfg.optim.ema) if cfg.optim.ema > 0 else None

        # the run folder is written once the data and the model are known to load, so a start that
        # fails on them leaves nothing behind
        if dist.is_main:
            self.folder.write_config(cfg)
            # what a killed run logged after the checkpoint it resumes from is logged again by this one
            again = self.folder.rewind_log(record)
            self.monitor.resume_at(record["step"] if record is not None else 0, again)
        barrier()
        self.state = RunState()
        if record is not None:
            saved = self.folder.load(record, model, self.optimizer, self.scaler, device)
            if self.ema is not None:
                self.ema.load_state_dict(saved["ema"])
            # checkpoints from before a field existed start it at its default
            self.state = RunState(**{k: saved[k] for k in RunState.__dataclass_fields__ if k in saved})
            if int(saved["world_size"]) != dist.world_size:
                self.echo(f"resuming a {saved['world_size']}-rank run on {dist.world_size} ranks")
            s = self.state
            self.echo(f"resumed {self.out} at step {s.step} (epoch {s.epoch + 1}, {s.consumed} samples into it)")
            self._say_if_schedules_stretch(int(saved.get("total_steps", self.total_steps)))
            if record.get("validation_changed") and math.isfinite(s.best):
                s.best = math.inf  # a score on other views or another grid is no yardstick
                self.echo(
                    f"validation settings changed ({', '.join(record['validation_changed'])}): best.safetensors "
                    "is chosen anew from this run's validations"
                )
        self.last_saved = self.state.step
        barrier()
        n_params = sum(p.numel() for p in self.params)
        self.echo(
            f"training {model.config.name} stage {cfg.stage}: {len(self.train_ds)} samples, "
            f"{self.sampler.steps_per_epoch} steps/epoch of {cfg.batch_size} ({dist.world_size} rank(s) x {micro} "
            f"x {cfg.grad_accum}), {n_params / 1e6:.2f}M trainable parameters, device {device}"
        )

    def _say_if_schedules_stretch(self, was: int) -> None:
        """A resumed run whose ``max_steps`` or ``epochs`` changed its length moves the schedules
        that span the run (cosine learning rate, ``teacher_surface``): say so, with the jump."""
        cfg, step = self.cfg, self.state.step
        spans = [name for name, on in (("the cosine learning rate", cfg.optim.schedule == "cosine"),
                 ("teacher_surface", cfg.teacher_surface[0] != cfg.teacher_surface[1])) if on]  # fmt: skip
        if was == self.total_steps or not spans:
            return
        before, after = cfg.optim.lr_factor(step, was), cfg.optim.lr_factor(step, self.total_steps)
        self.echo(
            f"the run now ends at step {self.total_steps}, not {was}: {' and '.join(spans)} now span(s) "
            f"{self.total_steps} steps (learning-rate factor at step {step}: {before:.3g} -> {after:.3g})"
        )

    def _loader(self):
        return loader(self.train_ds, self.micro, self.sampler, self.cfg, self.dist)

    def _optimizer_step(self, batches) -> tuple[dict[str, float], dict, dict]:
        """One optimiser step over ``grad_accum`` micro-batches; returns the mean loss terms and
        the last micro-batch with its result (for image logging)."""
        cfg, dist, st = self.cfg, self.dist, self.state
        torch.manual_seed(_step_seed(cfg.seed, dist.rank, st.step))
        step_module = self.runner.module if dist.distributed else self.runner
        time_fraction = st.seconds / (cfg.max_minutes * 60) if cfg.max_minutes else 0.0
        step_module.set_progress(min(max(st.step / max(self.total_steps - 1, 1), time_fraction), 1.0))
        factor = cfg.optim.lr_factor(st.step, self.total_steps, time_fraction)
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
                if self.ema is not None:
                    self.ema.update(self.model)
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
        self.monitor.scalars({k: v for k, v in rec.items() if k not in ("step", "epoch")}, st.step, "train/")
        return terms

    @property
    def weights(self) -> torch.nn.Module:
        """The model that is validated and saved as best and final: the weight average, if any."""
        return self.ema.module if self.ema is not None else self.model

    def _validate_and_keep_best(self) -> dict[str, float]:
        """Validate (rank 0) and save ``best.safetensors`` when the metric improved."""
        st = self.state
        validation: dict[str, float] = {}
        if self.val_ds is not None:
            if self.dist.is_main:
                validation = self._validate(self.weights, self.val_ds, st.step, st.epoch)
            barrier()
        if self.dist.is_main and validation:
            # one metric per stage, so that every "best" is compared on the same one
            key = "val/depth_ssi_mae" if self.cfg.stage == "pixel" else "val/cd"
            metric = validation.get(key)
            if metric is None:
                self.echo(f"validation at step {st.step} has no {key} (no view could be scored): best kept")
            elif metric < st.best:
                st.best = metric
                self.folder.save_weights(self.weights, "best.safetensors", {"step": st.step, **validation})
        st.best = all_gather_object(st.best)[0]
        return validation

    def _end_epoch(self) -> dict[str, float]:
        """Validate, keep the best weights, move to the next epoch, checkpoint."""
        st = self.state
        validation = {} if self.cfg.val_every else self._validate_and_keep_best()
        st.epoch += 1
        st.consumed = 0
        self._save(st.as_dict(self.dist.world_size, self.cfg, self.total_steps))
        return validation

    def fit(self) -> TrainResult:
        """Train until ``epochs`` or ``max_steps``; returns a summary. Rank 0 holds the run
        folder's lock meanwhile: a second run into it stops at once (:meth:`RunFolder.locked`)."""
        with self.folder.locked(self.dist.is_main):
            return self._fit()

    def _finished(self) -> bool:
        """The run's last step is done: its ``max_steps``/epochs, or its ``max_minutes``."""
        return self.state.step >= self.total_steps or self._out_of_time

    def _clock(self) -> None:
        """Add the time since the last call to ``state.seconds`` and see whether ``max_minutes`` is
        spent. With a time limit, under torchrun, rank 0's seconds are every rank's: the learning
        rate follows them, so the ranks take the same steps with the same rates and end together."""
        now = time.perf_counter()
        self.state.seconds += now - self._ticked
        self._ticked = now
        if self.cfg.max_minutes is not None:
            self.state.seconds = broadcast_float(self.state.seconds, self.dist.device)
            self._out_of_time = self.state.seconds >= self.cfg.max_minutes * 60

    def _fit(self) -> TrainResult:
        self._setup()
        cfg, st = self.cfg, self.state
        start_time, start_step = time.perf_counter(), st.step
        self._ticked, self._out_of_time = start_time, False
        self._clock()  # a resumed run whose minutes are spent ends at once
        self._window = (time.perf_counter(), 0)  # (since, samples) of the logged throughput
        self.last: dict[str, float] = {}
        self.validation: dict[str, float] = {}
        stop = _StopBetweenSteps(self.echo, self.dist.device)
        between = True  # False while an optimiser step is half done: that state is never saved
        try:
            with stop, self.monitor.start(f"stage {cfg.stage}", self.total_steps, st.step):
                # an epoch whose steps are all done but whose end (validation, checkpoint) is not --
                # a run killed during that validation resumes there -- is ended first
                while st.epoch < cfg.num_epochs and (
                    not self._finished() or st.consumed >= self.sampler.samples_per_epoch
                ):
                    self.sampler.set_epoch(st.epoch, start=st.consumed)
                    self.train_ds.set_epoch(st.epoch)
                    batches = iter(self._loader()) if st.consumed < self.sampler.samples_per_epoch else None
                    while st.consumed < self.sampler.samples_per_epoch and not self._finished():
                        between = False
                        result = self._optimizer_step(batches)
                        between = True
                        self._after_step(*result)
                        stop.check()
                    if st.consumed >= self.sampler.samples_per_epoch:
                        self.validation = self._end_epoch() or self.validation
                        stop.check()
        except KeyboardInterrupt as e:
            # ranks save together only after a stop they agreed on; a second Ctrl-C leaves one alone
            if between and (isinstance(e, _AgreedStop) or not self.dist.distributed):
                if st.step > self.last_saved:
                    self._save(st.as_dict(self.dist.world_size, cfg, self.total_steps))
                    self.echo(f"interrupted: saved step {st.step}; continue with --resume")
                elif st.step:  # the step was checkpointed as it ended
                    self.echo(f"interrupted after step {st.step}, which is saved; continue with --resume")
            elif not between:
                self.echo(f"stopped within step {st.step + 1}: --resume continues from step {self.last_saved}")
            raise
        final = None
        if self.dist.is_main and self._finished():
            final = self.folder.save_weights(self.weights, "final.safetensors", {"stage": cfg.stage, "step": st.step})
        barrier()
        self.monitor.close()
        seconds = time.perf_counter() - start_time
        best_path = self.out / "best.safetensors"
        return TrainResult(
            step=st.step, epoch=st.epoch, seconds=seconds,
            samples_per_second=(st.step - start_step) * cfg.batch_size / max(seconds, 1e-9), final=final,
            best=best_path if best_path.exists() else None, last=self.last, validation=self.validation,
            nonfinite_steps=st.nan_total, skipped_samples=st.skipped,
        )  # fmt: skip

    def _after_step(self, terms: dict[str, float], batch: dict, result: dict) -> None:
        """Log, show, validate and checkpoint as the step count asks."""
        cfg, st = self.cfg, self.state
        since, samples = self._window
        samples += cfg.batch_size
        self._clock()
        done = self._finished()
        sps = None
        if st.step % cfg.log_every == 0 or done:
            now = time.perf_counter()
            sps, self._window = samples / max(now - since, 1e-9), (now, 0)
            self.last = {k: v for k, v in self._log_step(terms, sps).items() if math.isfinite(v)}
        else:
            self._window = (since, samples)
        self.monitor.advance(st.step, self.last.get("total", math.nan) if sps is not None else None, sps)
        if self.dist.is_main and (st.step % cfg.image_every == 0 or st.step == 1):
            self.monitor.images(batch, result, st.step)
        # the last weights are validated too: with val_every, and without it when the run stops
        # mid-epoch (the epoch's end, which validates, never comes)
        epoch_ends = st.consumed >= self.sampler.samples_per_epoch
        if (cfg.val_every and st.step % cfg.val_every == 0) or (done and (cfg.val_every or not epoch_ends)):
            self.validation = self._validate_and_keep_best() or self.validation
        if st.step % cfg.checkpoint_every == 0 or done:
            self._save(st.as_dict(self.dist.world_size, cfg, self.total_steps))

    def _validate(self, model, val_ds, step: int, epoch: int) -> dict[str, float]:
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
        self.monitor.scalars(metrics, step)
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
    from zsw.io import check_out_folder

    check_out_folder(out)  # before the data and the model load
    try:
        return Trainer(cfg, out, resume=resume, progress=progress, echo=echo).fit()
    finally:
        shutdown()
