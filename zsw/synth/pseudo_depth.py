"""Pseudo-depth for the auxiliary depth loss: Depth Anything V2 relative inverse depth.

Depth Anything V2 (the ``-hf`` checkpoints, ``DepthAnythingForDepthEstimation``) predicts relative
*disparity*: large = near, known only up to scale and shift, never a metric depth (``1/x`` is
wrong without the shift). It is stored as is -- float32, at the image's resolution, clamped at 0
like the model's ReLU head -- in ``pseudo_depth/<cat>/<name>.npy``; the training loss aligns scale
and shift itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from zsw.data.layout import SPLITS, SampleId, ZeroShapeLayout
from zsw.errors import ConfigError, InputError

__all__ = ["DEFAULT_DEPTH_MODEL", "DepthAnything", "PseudoDepthReport", "pseudo_depth_dataset"]

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


class DepthAnything:
    """Batched relative inverse depth with a transformers depth-estimation model."""

    def __init__(self, model: Any, processor: Any, *, device: str = "cpu", dtype: Any = None, model_id: str = ""):
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.model_id = model_id

    @classmethod
    def from_pretrained(cls, source: str = DEFAULT_DEPTH_MODEL, *, device: str = "cpu", dtype: Any = None):
        """Load model and image processor (hub id or local folder)."""
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        from zsw.hub import load_pretrained

        kw = dict(what="Depth Anything V2 model", option="--model", default_id=DEFAULT_DEPTH_MODEL)
        processor = load_pretrained(AutoImageProcessor.from_pretrained, source, **kw)
        dtype = torch.float32 if dtype is None else dtype
        model = load_pretrained(AutoModelForDepthEstimation.from_pretrained, source, dtype=dtype, **kw)
        return cls(model.to(device).eval(), processor, device=device, dtype=dtype, model_id=str(source))

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:  # each [H, W, 3] uint8 -> [H, W] float32
        """Relative inverse depth for each image, at the image's own size."""
        import torch
        from PIL import Image

        results: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):  # one forward per image size: the processor keeps aspect ratio
            groups.setdefault(im.shape[:2], []).append(i)
        for size, idx in groups.items():
            inputs = self.processor(images=[Image.fromarray(images[i]) for i in idx], return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                outputs = self.model(pixel_values=pixels)
            outputs.predicted_depth = outputs.predicted_depth.float()
            post = self.processor.post_process_depth_estimation(outputs, target_sizes=[size] * len(idx))
            for i, p in zip(idx, post):
                results[i] = p["predicted_depth"].clamp_min(0).cpu().numpy().astype(np.float32)
        return results  # type: ignore[return-value]


@dataclass
class PseudoDepthReport:
    total: int = 0
    written: int = 0
    skipped: int = 0


def pseudo_depth_dataset(
    data: str | os.PathLike,
    model: Callable[[Sequence[np.ndarray]], list[np.ndarray]],
    *,
    batch_size: int = 16,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: Callable[[PseudoDepthReport], None] | None = None,
) -> PseudoDepthReport:
    """Write ``pseudo_depth/<cat>/<name>.npy`` for every listed image of ``data`` (this shard).

    Existing files are kept unless ``overwrite``; each file is written atomically, so an
    interrupted run resumes where it stopped.
    """
    layout = ZeroShapeLayout(data)
    if not layout.root.is_dir():
        raise InputError(f"--data {layout.root} is not a directory")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    seen: dict[SampleId, None] = {}
    for cat in layout.categories():
        for split in SPLITS:
            seen.update(dict.fromkeys(layout.read_list(cat, split)))
    if not seen:
        raise InputError(f"{layout.root} has no images: no lists/<category>_<split>.list files name any")
    samples = sorted(seen)[shard[0] :: shard[1]]
    todo = [s for s in samples if overwrite or not layout.pseudo_depth(s).is_file()]
    report = PseudoDepthReport(total=len(samples), skipped=len(samples) - len(todo))
    if progress:
        progress(report)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        images = []
        for sid in chunk:
            try:
                images.append(layout.read_image(sid))
            except FileNotFoundError:
                raise InputError(f"{layout.image(sid)} is missing") from None
            except OSError as e:
                raise InputError(f"{layout.image(sid)} is unreadable ({e})") from None
        for sid, disparity in zip(chunk, model(images)):
            layout.write_pseudo_depth(sid, disparity)
        report.written += len(chunk)
        if progress:
            progress(report)
    return report
