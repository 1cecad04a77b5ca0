"""Background synthesis: object-aware outpainting around an exactly preserved object.

Algorithm 1, step 2. The salient-object-aware background model of Eshratifar et al. (CVPR-W 2024,
``yahoo-inc/photo-background-generation``) is an inpainting ControlNet on Stable Diffusion 2
inpainting; diffusers' built-in ``StableDiffusionControlNetInpaintPipeline`` loads it without
remote code. As in the authors' notebook, the inverted object mask (white = background to
generate) is both the inpainting mask and the control image, and UniPC runs 20 steps.

The diffusion output passes through the VAE, which never reproduces pixels exactly, so the object
is pasted back from the foreground image: inside the render's mask the result *is* the
foreground, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zsw.synth.guidance import check_batch, composite, resize_image, resize_mask, unit_to_uint8

__all__ = ["DEFAULT_BACKGROUND_MODEL", "ObjectAwareBackground"]

DEFAULT_BACKGROUND_MODEL = "yahoo-inc/photo-background-generation"


class ObjectAwareBackground:
    """Object-aware background outpainting model (callable on a batch).

    Args:
        pipe: a ``StableDiffusionControlNetInpaintPipeline`` with a 9-channel inpainting UNet.
        steps: sampler steps (20, as in the authors' notebook).
        guidance_scale: classifier-free guidance weight.
        controlnet_scale: ControlNet residual weight (1.0 in the notebook).
        resolution: square generation size (512).
        negative_prompt: optional negative prompt for every sample.
        model_ids: provenance recorded in the manifest.
    """

    def __init__(
        self,
        pipe: Any,
        *,
        steps: int = 20,
        guidance_scale: float = 7.5,
        controlnet_scale: float = 1.0,
        resolution: int = 512,
        negative_prompt: str = "",
        model_ids: dict[str, str] | None = None,
    ):
        self.pipe = pipe
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.controlnet_scale = controlnet_scale
        self.resolution = resolution
        self.negative_prompt = negative_prompt
        self.model_ids = dict(model_ids or {})

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_BACKGROUND_MODEL,
        *,
        device: str = "cpu",
        dtype: Any = None,
        **options: Any,
    ) -> ObjectAwareBackground:
        """Load the background model (hub id or local folder with a ``controlnet/`` subfolder)."""
        import torch
        from diffusers import StableDiffusionControlNetInpaintPipeline, UniPCMultistepScheduler

        from zsw.hub import diffusers_dtype, load_pretrained, ready_pipeline

        pipe = load_pretrained(
            StableDiffusionControlNetInpaintPipeline.from_pretrained,
            model,
            what="object-aware background model",
            option="--background-model",
            default_id=DEFAULT_BACKGROUND_MODEL,
            safety_checker=None,
            requires_safety_checker=False,
            **diffusers_dtype(torch.float32 if dtype is None else dtype),
        )
        pipe = ready_pipeline(pipe, UniPCMultistepScheduler, device)
        return cls(pipe, model_ids={"background_model": str(model)}, **options)

    def __call__(
        self,
        foregrounds: Sequence[np.ndarray],  # each [H, W, 3] uint8
        masks: Sequence[np.ndarray],  # each [H, W] bool, True = object (kept)
        prompts: Sequence[str],
        seeds: Sequence[int],
    ) -> list[np.ndarray]:  # each [H, W, 3] uint8; equal to the foreground inside the mask
        """One pipeline call over the batch, then the exact object composite."""
        import torch
        from PIL import Image

        n = check_batch("background", foregrounds, masks, prompts, seeds)
        r = self.resolution
        # white = generate; the same inverted mask conditions the ControlNet
        holes = [Image.fromarray((~resize_mask(m, r)).astype(np.uint8) * 255) for m in masks]
        out = self.pipe(
            prompt=list(prompts),
            negative_prompt=[self.negative_prompt] * n if self.negative_prompt else None,
            image=[Image.fromarray(resize_image(f, r)) for f in foregrounds],
            mask_image=holes,
            control_image=[h.convert("RGB") for h in holes],
            height=r,
            width=r,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            controlnet_conditioning_scale=self.controlnet_scale,
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            output_type="np",
        ).images  # [n, r, r, 3] float in [0, 1]
        return [composite(fg, unit_to_uint8(img, fg.shape[0]), m) for img, fg, m in zip(out, foregrounds, masks)]
