"""Appearance synthesis: depth ControlNet on Stable Diffusion 1.5 with initial guidance.

Algorithm 1, step 1. A render's perturbed image is encoded, noised to DDIM step ``start_step`` of
``steps`` and denoised from there under a depth ControlNet and the prompt "a [color] [material]
[object]" (SDEdit-style initial guidance keeps the silhouette; the depth keeps the shape).
With diffusers' img2img pipeline that is ``strength = (steps - start_step) / steps``: 20 steps
starting at step 8 run 12 denoising steps, from t = 551 with SD 1.5's scheduler.

The pipeline is diffusers' own ``StableDiffusionControlNetImg2ImgPipeline``, used as is (no
subclass); several prompts go through one call, each with its own ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zsw.errors import ConfigError
from zsw.synth.guidance import check_batch, resize_image, unit_to_uint8

__all__ = [
    "DEFAULT_BASE_MODEL",
    "DEFAULT_CONTROLNET",
    "AppearanceBatch",
    "ControlNetAppearance",
    "strength_for_start_step",
]

DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNET = "lllyasviel/control_v11f1p_sd15_depth"


def strength_for_start_step(steps: int, start_step: int) -> float:
    """The img2img ``strength`` that makes diffusers start at index ``start_step`` of ``steps``.

    diffusers runs ``int(steps * strength)`` steps; the quotient is nudged up where float
    rounding would truncate one step away.
    """
    if steps < 1 or not 0 <= start_step < steps:
        raise ConfigError(f"start step must be in [0, steps), got start {start_step} of {steps} steps")
    strength = (steps - start_step) / steps
    while int(steps * strength) < steps - start_step:
        strength = math.nextafter(strength, 2.0)
    return strength


@dataclass
class AppearanceBatch:
    """Synthesized images (each at its guide's size) and the timesteps the sampler ran."""

    images: list[np.ndarray]  # each [H, W, 3] uint8
    timesteps: list[int] = field(default_factory=list)


class ControlNetAppearance:
    """Depth-ControlNet img2img appearance model (callable on a batch).

    Args:
        pipe: a ``StableDiffusionControlNetImg2ImgPipeline`` (any scheduler; :meth:`from_pretrained`
            installs DDIM).
        steps: DDIM steps of the full schedule (20).
        start_step: schedule index at which the noised guidance is injected (8).
        guidance_scale: classifier-free guidance weight.
        controlnet_scale: ControlNet residual weight (diffusers' img2img default would be 0.8).
        resolution: square generation size (512 for SD 1.5); images are resized in and out.
        negative_prompt: optional negative prompt for every sample.
        model_ids: provenance recorded in the manifest.
    """

    def __init__(
        self,
        pipe: Any,
        *,
        steps: int = 20,
        start_step: int = 8,
        guidance_scale: float = 7.5,
        controlnet_scale: float = 1.0,
        resolution: int = 512,
        negative_prompt: str = "",
        model_ids: dict[str, str] | None = None,
    ):
        self.pipe = pipe
        self.steps = steps
        self.start_step = start_step
        self.strength = strength_for_start_step(steps, start_step)
        self.guidance_scale = guidance_scale
        self.controlnet_scale = controlnet_scale
        self.resolution = resolution
        self.negative_prompt = negative_prompt
        self.model_ids = dict(model_ids or {})

    @classmethod
    def from_pretrained(
        cls,
        base_model: str = DEFAULT_BASE_MODEL,
        controlnet: str = DEFAULT_CONTROLNET,
        *,
        device: str = "cpu",
        dtype: Any = None,
        **options: Any,
    ) -> ControlNetAppearance:
        """Load SD 1.5 + a depth ControlNet (hub ids or local folders) and switch to DDIM."""
        import torch
        from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetImg2ImgPipeline

        from zsw.hub import diffusers_dtype, load_pretrained, ready_pipeline

        dtype = torch.float32 if dtype is None else dtype
        cn = load_pretrained(
            ControlNetModel.from_pretrained,
            controlnet,
            what="depth ControlNet",
            option="--controlnet",
            default_id=DEFAULT_CONTROLNET,
            **diffusers_dtype(dtype),
        )
        pipe = load_pretrained(
            StableDiffusionControlNetImg2ImgPipeline.from_pretrained,
            base_model,
            what="Stable Diffusion 1.5 base model",
            option="--base-model",
            default_id=DEFAULT_BASE_MODEL,
            controlnet=cn,
            safety_checker=None,
            requires_safety_checker=False,
            **diffusers_dtype(dtype),
        )
        ids = {"base_model": str(base_model), "controlnet": str(controlnet)}
        return cls(ready_pipeline(pipe, DDIMScheduler, device), model_ids=ids, **options)

    def __call__(
        self,
        guides: Sequence[np.ndarray],  # each [H, W, 3] uint8: perturbed render
        controls: Sequence[np.ndarray],  # each [H, W, 3] uint8: inverse-depth control image
        prompts: Sequence[str],
        seeds: Sequence[int],
    ) -> AppearanceBatch:
        """One pipeline call over the batch; sample i uses ``torch.Generator().manual_seed(seeds[i])``."""
        import torch
        from PIL import Image

        n = check_batch("appearance", guides, controls, prompts, seeds)
        r = self.resolution
        timesteps: list[int] = []

        def record(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
            timesteps.append(int(t))
            return kwargs

        # CPU generators: the same seed gives the same noise on any device
        out = self.pipe(
            prompt=list(prompts),
            negative_prompt=[self.negative_prompt] * n if self.negative_prompt else None,
            image=[Image.fromarray(resize_image(g, r)) for g in guides],
            control_image=[Image.fromarray(resize_image(c, r)) for c in controls],
            height=r,
            width=r,
            strength=self.strength,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            controlnet_conditioning_scale=self.controlnet_scale,
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            output_type="np",
            callback_on_step_end=record,
        ).images  # [n, r, r, 3] float in [0, 1]
        return AppearanceBatch([unit_to_uint8(img, g.shape[0]) for img, g in zip(out, guides)], timesteps)
