"""The forward pass of one training step, stage by stage, and the optimiser's parameter groups.

Stage ``pixel`` (stage 1) runs only the pixel model (depth, intrinsics, visible and occluder masks)
and trains it with the depth, auxiliary-depth, intrinsics and mask losses; the encoder and decoder
are frozen. Stage ``shape`` trains the encoder and decoder alone on the *ground-truth* visible
surface (GT depth, K and masks; the pixel model is not run): the upper bound of shape learning and
a stage that can run beside ``pixel``. Stage ``full`` (stage 2) runs the whole model: the predicted
depth and intrinsics are lifted to the visible surface (on the GT masks with ``teacher_masks``,
else the predicted ones) -- or, per sample with probability ``teacher_p`` (the
``teacher_surface`` schedule), the ground-truth depth and K -- encoded into tokens, and the query
points -- moved to the camera with the GT pose and normalised with the GT visible surface (and,
with ``align_labels``, moved onto the surface the decoder was given) -- are decoded against them;
every loss is on.

:class:`TrainStep` is the module DistributedDataParallel wraps, so one ``forward`` is one
micro-batch's losses.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from zsw.model.pixel import PixelOutput
from zsw.model.zeroshape_w import ModelOutput
from zsw.train import losses as L
from zsw.train.config import OptimConfig, TrainConfig

__all__ = [
    "TrainStep",
    "param_groups",
    "set_trainable",
    "unused_parameters",
    "synthetic_batch",
    "loss_scalars",
    "is_finite",
]


def set_trainable(model: nn.Module, stage: str, train_pixel: bool = True) -> None:
    """Stage ``pixel`` trains ``model.pixel`` only, ``shape`` everything else, ``full`` everything
    (everything but ``model.pixel`` when not ``train_pixel``: no gradient reaches it then)."""
    for name, p in model.named_parameters():
        in_pixel = name.startswith("pixel.")
        p.requires_grad_({"pixel": in_pixel, "shape": not in_pixel, "full": train_pixel or not in_pixel}[stage])


def synthetic_batch(batch: int, size: int, points: int, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """A well-formed training batch without a dataset (benchmarks, the unused-parameter probe):
    a disc of depth facing the camera at ZeroShape's default K, random query points around it."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((xs - size / 2) ** 2 + (ys - size / 2) ** 2).float().sqrt()
    disc = (r < size * 0.3).float()[None, None].expand(batch, 1, size, size)
    depth = disc * (2.0 + 0.001 * r[None, None])
    f = 1.3875 * size
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]]).expand(batch, 3, 3)
    Rt = torch.cat([torch.eye(3), torch.tensor([[0.0], [0.0], [2.0]])], dim=1).expand(batch, 3, 4)
    pts = torch.rand(batch, points, 3, generator=g) * 1.2 - 0.6
    sdf = pts.norm(dim=-1) - 0.4
    occluder = torch.zeros(batch, 1, size, size)
    occluder[..., : size // 4, :] = 1.0
    out = {
        "image": torch.rand(batch, 3, size, size, generator=g),
        "depth": depth.contiguous(),
        "intrinsics": K.contiguous(),
        "extrinsics": Rt.contiguous(),
        "visible_mask": disc.contiguous(),
        "occluder_mask": occluder,
        "points": pts,
        "sdf": sdf,
        "occupancy": (sdf - 0.003 < 0).float(),
        "pseudo_depth": torch.rand(batch, 1, size, size, generator=g),
        "pseudo_valid": torch.ones(batch, 1, size, size),
    }
    return {k: v.to(device) for k, v in out.items()}


def unused_parameters(step: TrainStep, device: torch.device | str = "cpu") -> list[str]:
    """Trainable parameters that the stage's losses never reach (e.g. DPT's first fusion block
    has a residual unit that only a second input would use; it exists so ZeroShape checkpoints
    load). Found with one gradient probe on a synthetic batch, in eval mode, without touching
    ``.grad`` or BatchNorm statistics. DistributedDataParallel needs them frozen (or it never
    finishes reducing their bucket), and freezing them everywhere keeps 1 and N ranks identical."""
    model = step.model
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return []
    was_training = model.training
    model.eval()
    try:
        batch = synthetic_batch(2, model.config.pixel.image_size, 64, device)
        total = step(batch)["total"]
        grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    finally:
        model.train(was_training)
    return [n for (n, _), g in zip(named, grads) if g is None]


def param_groups(model: nn.Module, stage: str, cfg: OptimConfig) -> list[dict]:
    """AdamW groups: {pretrained pixel model, the rest} x {decay, no decay}.

    No weight decay on biases and other parameters with ``ndim <= 1`` (norm scales, embeddings
    such as tokens); in stage ``full`` the pixel model (trained in stage 1 or initialised from
    ZeroShape) uses ``lr_pretrained``. Empty groups are dropped.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    names: dict[tuple[bool, bool], list[str]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (stage == "full" and name.startswith("pixel."), p.ndim <= 1)
        groups.setdefault(key, []).append(p)
        names.setdefault(key, []).append(name)
    out = []
    for (pretrained, no_decay), params in sorted(groups.items()):
        out.append(
            dict(
                params=params,
                lr=cfg.lr_pretrained if pretrained else cfg.lr,
                weight_decay=0.0 if no_decay else cfg.weight_decay,
                name=f"{'pixel' if pretrained else 'main'}{'-no-decay' if no_decay else ''}",
            )
        )
    return out


class TrainStep(nn.Module):
    """``forward(batch) -> {"total": ..., "<term>": ..., "pred_*": detached predictions}``."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.has_masks = bool(model.config.pixel.mask_heads)
        # probability of a ground-truth surface for the encoder (stage full); the trainer sets it
        # from cfg.teacher_surface before every step
        self.teacher_p = float(cfg.teacher_surface[0])

    def set_progress(self, fraction: float) -> None:
        """Move the ``teacher_surface`` schedule to ``fraction`` (0 = first step, 1 = last)."""
        start, end = self.cfg.teacher_surface
        self.teacher_p = start + (end - start) * min(max(fraction, 0.0), 1.0)

    def _prompts(self, batch: dict) -> list[str] | None:
        if self.cfg.data.prompts == "category" and "category" in batch:
            return list(batch["category"])
        return None

    def _lift(self, batch: dict[str, Tensor], pix: PixelOutput, teacher: Tensor | None, text) -> ModelOutput:
        """Encode the visible surface: lifted from ``pix`` (predicted depth and K), except for the
        samples where ``teacher`` [B] is True, which take the ground-truth depth, K and masks."""
        vis, occ = batch["visible_mask"] > 0.5, batch["occluder_mask"] > 0.5
        if teacher is not None:
            t = teacher[:, None, None, None]
            depth = torch.where(t, batch["depth"].to(pix.depth.dtype), pix.depth)
            K = torch.where(t[:, :, 0], batch["intrinsics"].to(pix.intrinsics.dtype), pix.intrinsics)
            pix = PixelOutput(depth, K, pix.visible_mask_logits, pix.occluder_mask_logits)
        if not (self.cfg.teacher_masks or not self.has_masks or self.cfg.stage == "shape"):
            vis_pred, occ_pred = pix.visible_mask_logits >= 0, pix.occluder_mask_logits >= 0
            vis = vis_pred if teacher is None else torch.where(t, vis, vis_pred)
            occ = occ_pred if teacher is None else torch.where(t, occ, occ_pred)
        dtype = batch["image"].dtype
        return self.model.encode_surface(pix, text, vis.to(dtype), occ.to(dtype) if self.has_masks else None)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg, w = self.cfg, self.cfg.loss
        model = self.model
        image = batch["image"]
        visible = batch["visible_mask"] > 0.5  # [B, 1, S, S]
        occluder = batch["occluder_mask"]
        B = image.shape[0]
        text = model.embed_prompts(self._prompts(batch), B)
        terms: dict[str, Tensor] = {}
        gt_points, gt_center, gt_scale = L.visible_frame(batch["depth"], batch["intrinsics"], visible)
        out = None
        if cfg.stage == "shape":  # ground-truth surface: the pixel model is not run
            gt = PixelOutput(batch["depth"].to(image.dtype), batch["intrinsics"].to(image.dtype), None, None)
            out = self._lift(batch, gt, None, text)
        else:
            pix = model.pixel(image, text)
            depth, K = pix.depth, pix.intrinsics
            vis_logits, occ_logits = pix.visible_mask_logits, pix.occluder_mask_logits
            if cfg.stage == "full":
                teacher = None
                if self.teacher_p > 0:
                    teacher = torch.rand(B, device=image.device) < self.teacher_p
                out = self._lift(batch, pix, teacher, text)
            pred_points, _, _ = L.visible_frame(depth, K, visible)
            flat_mask = visible.reshape(B, -1)
            terms["intrinsics"] = L.intrinsics_loss(pred_points, gt_points, flat_mask)
            if w.focal > 0:
                terms["focal"] = L.focal_loss(K, batch["intrinsics"])
            terms["depth"] = L.depth_loss(depth, batch["depth"], visible, w.depth_gradient)
            pseudo_valid = batch["pseudo_valid"] > 0.5
            terms["aux_depth"] = L.aux_depth_loss(depth, batch["pseudo_depth"], pseudo_valid, w.aux_depth_eps)
            if self.has_masks:
                terms["visible_mask"] = L.mask_bce(vis_logits, batch["visible_mask"])
                terms["occluder_mask"] = L.mask_bce(occ_logits, occluder)
        if out is not None:
            queries = L.query_points(batch["points"], batch["extrinsics"], gt_center, gt_scale)
            # the labels' frame: the ground truth's, or (align_labels) the surface the model was given
            scale, shift = queries.new_ones(B, 3), queries.new_zeros(B, 3)
            if cfg.align_labels and cfg.stage == "full":
                lifted = out.visible_points.flatten(2).transpose(1, 2)
                scale, shift = L.surface_alignment(
                    gt_points, visible.reshape(B, -1), lifted, out.visible_mask.reshape(B, -1) > 0.5
                )
                queries = queries * scale[:, None] + shift[:, None]
            latents = model.latents(out)
            if latents.center_offset is not None:  # the object frame's origin is its bounding-box centre
                origin = batch["points"].new_zeros(B, 1, 3)
                true_center = L.query_points(origin, batch["extrinsics"], gt_center, gt_scale)[:, 0]
                true_center = true_center * scale + shift
                terms["center"] = (latents.object_center() - true_center).abs().sum(-1).mean()
            if latents.up is not None:  # the object frame's y axis is up
                true_up = nn.functional.normalize(batch["extrinsics"][:, :, 1].float() * scale, dim=-1)
                terms["up"] = (1.0 - (latents.up * true_up).sum(-1)).mean()
            logits = model.decoder.decode(latents, queries.to(out.tokens.dtype))
            terms["occupancy"] = L.occupancy_bce(logits, batch["occupancy"])
            pred, gt_occ = logits.detach() > 0, batch["occupancy"] > 0.5  # soft labels too (label_softness)
            terms["occupancy_acc"] = (pred == gt_occ).float().mean()
            union = (pred | gt_occ).sum()
            terms["occupancy_iou"] = (pred & gt_occ).sum() / union.clamp(min=1)
        weights = {
            "intrinsics": w.intrinsics,
            "focal": w.focal,
            "depth": w.depth,
            "aux_depth": w.aux_depth,
            "visible_mask": w.visible_mask,
            "occluder_mask": w.occluder_mask,
            "occupancy": w.occupancy,
            "center": w.center,
            "up": w.up,
        }
        total = sum(weights[k] * v for k, v in terms.items() if k in weights)
        result = {"total": total, **terms}
        result["pred_depth"] = (out.depth if out is not None else depth).detach()
        if cfg.stage != "shape" and vis_logits is not None:
            result["pred_visible"] = vis_logits.detach()
            result["pred_occluder"] = occ_logits.detach()
        return result


def loss_scalars(result: dict[str, Tensor]) -> dict[str, float]:
    """The scalar terms of a :class:`TrainStep` result as floats (for logging)."""
    return {k: float(v.detach()) for k, v in result.items() if not k.startswith("pred_") and v.dim() == 0}


def is_finite(result: dict[str, Tensor]) -> bool:
    return bool(torch.isfinite(result["total"].detach()).all())
