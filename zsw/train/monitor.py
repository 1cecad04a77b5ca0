"""What a training run shows while it runs: TensorBoard scalars and image grids, the progress bar.

Only rank 0 shows anything; on other ranks every method is a no-op.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["Monitor"]

log = logging.getLogger(__name__)


class Monitor:
    """TensorBoard logs in ``out/tb`` and a rich progress bar (``show_progress``), rank 0 only."""

    def __init__(self, out: Path, is_main: bool, show_progress: bool):
        self.out, self.is_main = out, is_main
        self._tb = None
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[sps]:.1f} samples/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
            disable=not (show_progress and is_main),
        )  # fmt: skip
        self.task = None
        self._purge_step: int | None = None

    def resume_at(self, step: int, records: list[dict] = ()) -> None:
        """The run continues after ``step``: TensorBoard events of later steps, which a killed run
        wrote and this one writes again, are purged when the writer opens. With ``records`` (the
        metrics.jsonl records of ``step`` itself, when the killed run also logged that step after
        its checkpoint: the validation at the end of an epoch) the events of ``step`` go too, and
        these records' scalars are written again (its image grid, if any, is not)."""
        self._purge_step = step if records else step + 1
        for record in records:
            if record.get("event") == "sync":
                continue
            values = {k: v for k, v in record.items() if k not in ("step", "epoch", "event")}
            self.scalars(values, step, "train/" if "event" not in record else "")

    def start(self, description: str, total: int, completed: int) -> Progress:
        self.task = self.bar.add_task(description, total=total, completed=completed, loss=math.nan, sps=0)
        return self.bar

    def advance(self, step: int, loss: float | None = None, sps: float | None = None) -> None:
        fields = {k: v for k, v in dict(loss=loss, sps=sps).items() if v is not None}
        self.bar.update(self.task, completed=step, **fields)

    def _writer(self):
        if self._tb is None and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self._tb = False
                log.warning("tensorboard is not installed; no TensorBoard logs")
            else:
                self._tb = SummaryWriter(str(self.out / "tb"), purge_step=self._purge_step)
        return self._tb or None

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        writer = self._writer()
        if writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                writer.add_scalar(k if "/" in k else f"{prefix}{k}", v, step)

    def images(self, batch: dict, result: dict, step: int) -> None:
        """Input, depth (true, predicted), visible and occluder masks (true, predicted): 4 samples."""
        writer = self._writer()
        if writer is None:
            return
        from torchvision.utils import make_grid  # only for this picture

        n = min(4, batch["image"].shape[0])

        def gray(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # [n, 1, S, S] -> [n, 3, S, S]
            x = x[:n].detach().float().cpu()
            m = (x > 0) if mask is None else mask[:n].cpu() > 0.5
            lo = torch.where(m, x, torch.full_like(x, float("inf"))).flatten(1).amin(1).clamp(max=1e9)
            hi = torch.where(m, x, torch.full_like(x, -float("inf"))).flatten(1).amax(1).clamp(min=-1e9)
            y = ((x - lo[:, None, None, None]) / (hi - lo).clamp(min=1e-6)[:, None, None, None]).clamp(0, 1)
            return (y * m).expand(-1, 3, -1, -1)

        def mask(x: torch.Tensor, logits: bool = False) -> torch.Tensor:
            x = x[:n].detach().float().cpu()
            return (torch.sigmoid(x) if logits else x).expand(-1, 3, -1, -1)

        rows = [batch["image"][:n].detach().float().cpu(), gray(batch["depth"])]
        rows += [gray(result["pred_depth"], batch["visible_mask"]), mask(batch["visible_mask"])]
        if "pred_visible" in result:
            rows += [
                mask(result["pred_visible"], True),
                mask(batch["occluder_mask"]),
                mask(result["pred_occluder"], True),
            ]
        grid = make_grid(torch.cat(rows), nrow=n, padding=2)
        writer.add_image("train/input_gtdepth_depth_gtvisible_visible_gtoccluder_occluder", grid, step)

    def close(self) -> None:
        if self._tb:
            self._tb.close()
