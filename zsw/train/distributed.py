"""One code path for one process and ``torchrun --nproc-per-node N``.

:func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
without it the run is a world of one and no process group is created. The backend is NCCL on
CUDA and gloo on CPU. The collectives below degrade to no-ops in a world of one.

:class:`ResumableSampler` is a :class:`~torch.utils.data.DistributedSampler` whose epochs are a
seeded permutation cut into *global* batches: global step ``s`` of an epoch uses samples
``perm[s*G:(s+1)*G]`` whatever the number of ranks (rank ``r`` takes every ``W``-th of them), so
``set_epoch(e, start=k)`` resumes mid-epoch after ``k`` samples -- on any number of ranks.

Under torchrun each rank asks the kernel for a termination request (SIGTERM) when its agent dies
(:func:`stop_with_the_agent`): an agent killed by a signal it cannot pass on (SIGKILL, the OOM
killer) no longer leaves its ranks training headless; they stop after the same step and save it,
as they do when the agent passes on a Ctrl-C (:class:`zsw.train.trainer.Trainer`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from zsw.errors import CheckpointError, ConfigError, ZswError

__all__ = [
    "DistInfo",
    "init_distributed",
    "shutdown",
    "ResumableSampler",
    "all_reduce_mean",
    "all_min",
    "broadcast_float",
    "stop_with_the_agent",
    "all_gather_object",
    "barrier",
    "on_main",
    "replica_fingerprints",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group if there is one and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun's agent
        stop_with_the_agent()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def stop_with_the_agent() -> bool:
    """Have the kernel send this process SIGTERM when its parent (torchrun's agent) dies, however
    it dies (``prctl(PR_SET_PDEATHSIG)``; Linux only). Returns whether that is set up."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    if prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
        return False
    if os.getppid() != parent:  # the agent died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each scalar over the ranks (identity in a world of one)."""
    if not _active() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_min(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every rank."""
    if not _active():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (identity in a world of one)."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def all_gather_object(obj) -> list:
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn, is_main: bool):
    """Run ``fn`` on rank 0 and give its result to every rank; a :class:`ZswError` it raises is
    raised on every rank (with its class and message), so no rank waits forever for one that
    stopped."""
    status: tuple = ("ok", None)
    if is_main:
        try:
            status = ("ok", fn())
        except ZswError as e:
            status = (type(e).__name__, str(e))
    kind, value = all_gather_object(status)[0]
    if kind != "ok":
        raise {"ConfigError": ConfigError, "CheckpointError": CheckpointError}.get(kind, ZswError)(value)
    return value


def replica_fingerprints(model: torch.nn.Module) -> list[str]:
    """Every rank's fingerprint of its parameters (equal while the replicas agree)."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    return all_gather_object(hashlib.sha1(sums.cpu().numpy().tobytes()).hexdigest()[:16])


class ResumableSampler(DistributedSampler):
    """Seeded per-epoch permutation in whole global batches, resumable mid-epoch (see module)."""

    def __init__(self, dataset_len: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if global_batch % world_size:
            raise ConfigError(f"the global batch ({global_batch}) must be a multiple of the ranks ({world_size})")
        if dataset_len < global_batch:
            raise ConfigError(
                f"the dataset has {dataset_len} samples, fewer than one global batch of {global_batch} "
                f"(--batch-size {dataset_len} or less trains on it)"
            )
        self.n = dataset_len
        self.global_batch = global_batch
        self.rank = rank
        self.num_replicas = world_size
        self.seed = seed
        self.shuffle = True
        self.drop_last = True
        self.epoch = 0
        self.start = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    @property
    def samples_per_epoch(self) -> int:
        return self.steps_per_epoch * self.global_batch

    def set_epoch(self, epoch: int, start: int = 0) -> None:  # type: ignore[override]
        """Select epoch ``epoch`` and skip its first ``start`` samples (a multiple of the batch)."""
        if start % self.global_batch or not 0 <= start <= self.samples_per_epoch:
            raise ValueError(f"start {start} is not a whole number of global batches within the epoch")
        self.epoch, self.start = epoch, start

    def permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)[: self.samples_per_epoch].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation()[self.start + self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return (self.samples_per_epoch - self.start) // self.num_replicas
