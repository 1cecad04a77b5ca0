"""A training run's folder: what may be resumed, checkpoint I/O and the metrics log.

Layout (``out``)::

    config.yaml                      the TrainConfig of the run
    metrics.jsonl                    one JSON line per log step, validation and replica check
    tb/                              TensorBoard scalars and image grids (rank 0)
    checkpoints/step-XXXXXXXX.safetensors   model weights + config (zsw.checkpoint.save)
    checkpoints/step-XXXXXXXX.state.pt      optimiser, scaler, position, counters, the weight
                                            average (optim.ema)
                                            (plain tensors and numbers: torch.load(weights_only=True))
    checkpoints/latest.json          which pair is the latest (written last, atomically)
    best.safetensors                 lowest validation CD (stage full) or depth error (stage pixel)
    final.safetensors                the weights at the end of the run
                                     (both: the weight average when optim.ema is on)

Everything here runs on one rank (rank 0 writes; every rank enters :meth:`RunFolder.locked`, rank 0
locks); :mod:`zsw.train.trainer` decides when.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from zsw import checkpoint
from zsw.config import dump_yaml, from_dict, load_yaml, to_dict
from zsw.errors import CheckpointError, ConfigError, reason
from zsw.io import atomic_path, atomic_write_json, remove_leftovers
from zsw.locks import lock_folder
from zsw.train.config import TrainConfig
from zsw.train.distributed import on_main

__all__ = ["RunFolder", "RESUME_FREE_KEYS"]

#: config keys that may change when a run is resumed (everything else must match)
RESUME_FREE_KEYS = (
    "max_steps",
    "max_minutes",
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

#: free keys that change what a validation score measures: best.safetensors cannot compare across them
VALIDATION_SCORE_KEYS = ("data.val_roots", "data.val_samples", "val_resolution")


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


class RunFolder:
    """The folder ``out`` of a run; ``echo`` prints one-line notes (rank 0's)."""

    def __init__(self, out: str | os.PathLike, echo: Callable[[str], None]):
        self.out = Path(out)
        self.ckpt_dir = self.out / "checkpoints"
        self.echo = echo

    @contextlib.contextmanager
    def locked(self, is_main: bool) -> Iterator[None]:
        """Rank 0 holds the folder's lock (:mod:`zsw.locks`) for the whole run, resumed or not:
        a second process training into it (the same command restarted in another terminal, with
        or without ``--resume``) stops before it reads or writes anything, with one line naming
        the holder. The other ranks of a torchrun job write nothing and lock nothing, so they
        cannot lock each other out; they learn rank 0's outcome and stop with it."""
        held = []
        on_main(lambda: held.append(lock_folder(self.out, "--out")), is_main)
        try:
            yield
        finally:
            for lock in held:
                lock.release()

    # ---- resume policy -------------------------------------------------------------------------

    def resume_point(self, cfg: TrainConfig, resume: bool) -> dict | None:
        """The checkpoint to resume from (the newest one that loads), None for a fresh run."""
        latest = self.ckpt_dir / "latest.json"
        has_run = latest.exists() or any(self.ckpt_dir.glob("step-*.safetensors"))
        if not resume:
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
            old = load_yaml(saved_cfg, TrainConfig)
            record = None
        else:  # deleted: the settings the checkpoint records (each one stores its run's TrainConfig)
            record = self._newest_valid_checkpoint()
            old = self._recorded_config(record)
        rescored = self._compare(old, cfg) if old is not None else []
        record = record or self._newest_valid_checkpoint()
        return {k: v for k, v in record.items() if k != "train"} | {"validation_changed": rescored}

    def _recorded_config(self, record: dict) -> TrainConfig | None:
        """The TrainConfig checkpoint ``record`` stores (None, said, when it stores none that loads)."""
        name = record["model"]
        try:
            return from_dict(TrainConfig, record["train"])
        except (KeyError, TypeError, ConfigError) as e:
            self.echo(f"{self.out / 'config.yaml'} is missing and {name} records no usable settings ({reason(e)}): "
                      "resuming without checking that the settings are the run's")  # fmt: skip
            return None

    def _compare(self, saved: TrainConfig, cfg: TrainConfig) -> list[str]:
        """Refuse a resume whose settings differ from the run's; returns the validation settings
        that changed (the best weights are chosen anew)."""
        old, new = _comparable(saved), _comparable(cfg)
        diff = [k for k in new if k not in RESUME_FREE_KEYS and old.get(k) != new[k]]
        if diff:
            k = diff[0]
            raise ConfigError(
                f"cannot resume {self.out}: it was trained with {k}={old.get(k)!r}, now {new[k]!r} "
                "(only max_steps, max_minutes, epochs, logging, checkpoint and validation settings may change)"
            )
        return [k for k in VALIDATION_SCORE_KEYS if old.get(k) != new.get(k)]

    def _newest_valid_checkpoint(self) -> dict:
        """``latest.json``'s checkpoint if it loads, else the newest ``step-*`` pair that does."""
        named = None
        latest = self.ckpt_dir / "latest.json"
        try:
            named = json.loads(latest.read_text())
            if not (isinstance(named, dict) and all(isinstance(named.get(k), str) for k in ("model", "state"))):
                raise ValueError("not a record of a checkpoint pair")
            candidates = [named]
        except (OSError, ValueError) as e:
            named, candidates = None, []
            self.echo(f"{latest} is unreadable ({reason(e)}); looking for the newest valid checkpoint")
        for path in sorted(self.ckpt_dir.glob("step-*.safetensors"), reverse=True):
            record = {"model": path.name, "state": path.name.replace(".safetensors", ".state.pt")}
            if not named or record["model"] != named.get("model"):
                candidates.append(record)
        for record in candidates:
            try:
                _, _, extra = checkpoint.read(self.ckpt_dir / record["model"])
                state = torch.load(self.ckpt_dir / record["state"], map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file disqualifies the pair
                self.echo(f"skipping checkpoint {record['model']}: it does not load ({reason(e)})")
                continue
            if record is not named:
                self.echo(f"resuming from {record['model']} (step {state['step']}), the newest checkpoint that loads")
            position = {k: int(state[k]) for k in ("step", "epoch", "consumed")}
            return {**record, **position, "train": extra.get("train")}  # its run's settings, read once
        raise CheckpointError(f"no checkpoint in {self.ckpt_dir} loads; start a new run with another --out")

    # ---- files ---------------------------------------------------------------------------------

    def write_config(self, cfg: TrainConfig) -> None:
        """Write ``config.yaml`` at the start of a run, after removing what a killed run left half-written."""
        self.out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.out, recursive=True)
        dump_yaml(cfg, self.out / "config.yaml")

    def rewind_log(self, record: dict | None) -> list[dict]:
        """Cut ``metrics.jsonl`` back to where the run resumes, checkpoint ``record`` (None: a new
        run, step 0): a killed run logged steps after its last checkpoint, which this one runs
        again; torn lines go too. Two checkpoints can share a step (the last step of an epoch is
        saved before the epoch's validation and again after it), so records of the checkpoint's
        own step are kept up to its ``sync`` record. Returns the kept records of that step when
        later ones of the same step were dropped (they are logged again), else []."""
        step = record["step"] if record is not None else 0
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return []
        position = None if record is None else (step, record.get("epoch"), record.get("consumed"))
        lines = path.read_text().splitlines()
        kept: list[tuple[str, dict]] = []
        synced = dropped_at_step = False
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or int(rec.get("step", 0)) > step:
                continue
            if synced:  # logged after the checkpoint resumed from, at its step
                dropped_at_step = True
                continue
            kept.append((line, rec))
            synced = rec.get("event") == "sync" and (rec["step"], rec.get("epoch"), rec.get("consumed")) == position
        if len(kept) != len(lines):
            with atomic_path(path) as tmp:
                Path(tmp).write_text("".join(f"{line}\n" for line, _ in kept))
        return [rec for _, rec in kept if int(rec.get("step", 0)) == step] if dropped_at_step else []

    def log(self, record: dict) -> None:
        """Append one line to ``metrics.jsonl``."""
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def save(self, model, optimizer, scaler, state: dict, cfg: TrainConfig) -> None:
        """Write the ``step-*`` pair of ``state["step"]``, then ``latest.json``; keep the newest
        ``keep_checkpoints`` pairs."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        name = f"step-{state['step']:08d}"
        extra = {"stage": cfg.stage, "step": state["step"], "epoch": state["epoch"]}
        checkpoint.save(model, self.ckpt_dir / f"{name}.safetensors", extra={**extra, "train": to_dict(cfg)})
        full = dict(state, optimizer=optimizer.state_dict(), scaler=scaler.state_dict())
        with atomic_path(self.ckpt_dir / f"{name}.state.pt") as tmp:
            torch.save(full, tmp)
        atomic_write_json(
            self.ckpt_dir / "latest.json",
            {"step": state["step"], "model": f"{name}.safetensors", "state": f"{name}.state.pt"},
        )
        pairs = sorted(self.ckpt_dir.glob("step-*.safetensors"))
        for old in pairs[: max(0, len(pairs) - cfg.keep_checkpoints)]:
            old.unlink(missing_ok=True)
            old.with_name(old.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)

    def load(self, record: dict, model, optimizer, scaler, device: torch.device) -> dict:
        """Restore the weights, optimiser and scaler of ``record``; returns its saved state."""
        path = self.ckpt_dir / record["model"]
        tensors, saved_cfg, _ = checkpoint.read(path)
        saved, now = _flatten(to_dict(saved_cfg)), _flatten(to_dict(model.config))
        if diff := [k for k in sorted(saved.keys() | now.keys()) if saved.get(k) != now.get(k)]:
            key = diff[0]  # same tensor shapes can hide another model (a Softplus beta, a flag)
            raise CheckpointError(
                f"cannot resume {self.out}: its checkpoints hold a model with {key}={saved.get(key)!r}, "
                f"the model config now says {now.get(key)!r} (was its YAML edited?)"
            )
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit the model: {str(e).splitlines()[0]}") from None
        state_path = self.ckpt_dir / record["state"]
        try:
            state = torch.load(state_path, map_location=device, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read {state_path} with weights_only=True: {e}") from None
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        return state

    def save_weights(self, model, name: str, extra: dict) -> Path:
        """``best.safetensors`` / ``final.safetensors``."""
        return checkpoint.save(model, self.out / name, extra=extra)


def read_init(path: str, what: str, model, model_name: str, part: str | None = None) -> dict:
    """The tensors of checkpoint ``path`` (``--init``, ``init_pixel``), checked to fit ``model``;
    with ``part`` (``"pixel"``) only that sub-model's tensors, and only its config (and the text
    embedding width it conditions on) must match: a decoder change does not void a pixel run."""
    if Path(path).is_dir():
        raise CheckpointError(f"{what} {path} is a folder, not a checkpoint file (e.g. a run's final.safetensors)")
    try:
        tensors, mcfg, _ = checkpoint.read(path)
    except CheckpointError as e:  # which option named the file
        raise CheckpointError(f"{what}: {e}") from None
    sections = (part, "text") if part else None
    theirs, mine = to_dict(mcfg), to_dict(model.config)
    if sections:
        theirs, mine = ({k: d[k] for k in sections} for d in (theirs, mine))
    if theirs != mine:
        which = f"{part} " if part else ""
        raise CheckpointError(
            f"{what} {path} holds a {mcfg.name!r} model whose {which}config differs from the {model_name!r} "
            "being trained; pass its preset or model YAML (the packaged model's: --preset demo)"
        )
    own = model.state_dict()
    if part:
        own = {k: v for k, v in own.items() if k.startswith(part + ".")}
        tensors = {k: v for k, v in tensors.items() if k.startswith(part + ".")}
    bad = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    unknown = [k for k in tensors if k not in own]
    if bad or unknown or any(k not in tensors for k in own):
        first = (bad or unknown or [k for k in own if k not in tensors])[0]
        raise CheckpointError(f"{what} {path} does not fit the model (first mismatch: {first})")
    return tensors
