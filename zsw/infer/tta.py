"""Test-time augmentation with the photo's mirror image: ``--tta auto|flip|flip-pixel|none``.

Flipping the input left to right is the camera of the scene reflected through its x = 0 plane, so
the two predictions can be averaged in one frame: the pixel model's maps and camera
(:func:`mirror_average`, ``flip-pixel``), or the occupancy fields at each point and its reflection
(:func:`occupancy_function`, ``flip``). Measured gains: ``bench/results/tta/README.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zsw.errors import ZswError
from zsw.infer.backend import Backend, Prediction
from zsw.infer.precision import autocast
from zsw.infer.settings import resolve_tta
from zsw.model import PixelOutput, SurfacePrediction

__all__ = [
    "resolve_tta",
    "mirror_average",
    "flip_averaged_pixel",
    "pixel_function",
    "mirror_points",
    "occupancy_function",
]


def mirror_average(pixel: PixelOutput, mirrored: PixelOutput) -> PixelOutput:
    """The mean of the pixel model's outputs for an input (``pixel``) and for the input flipped left
    to right (``mirrored``), the latter flipped back: its maps flipped, its principal point moved
    from ``cx`` to ``W - 1 - cx`` (integer pixel centres, see :func:`mirror_points`)."""
    W = pixel.depth.shape[-1]
    K = mirrored.intrinsics.clone()
    K[:, 0, 2] = (W - 1) - K[:, 0, 2]

    def mean(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        return None if a is None or b is None else 0.5 * (a + b.flip(-1))

    return PixelOutput(
        mean(pixel.depth, mirrored.depth),
        0.5 * (pixel.intrinsics + K),
        mean(pixel.visible_mask_logits, mirrored.visible_mask_logits),
        mean(pixel.occluder_mask_logits, mirrored.occluder_mask_logits),
    )


def flip_averaged_pixel(backend: Backend, image: torch.Tensor, text: torch.Tensor | None) -> PixelOutput:
    """The pixel model's outputs for ``image [B, 3, S, S]`` averaged with those for the image
    mirrored left to right (:func:`mirror_average`): what ``--tta flip-pixel`` uses."""
    return mirror_average(backend.pixel(image, text), backend.pixel(image.flip(-1), text))


def pixel_function(backend: Backend, tta: str) -> Callable[[torch.Tensor, torch.Tensor | None], PixelOutput]:
    """The pixel model as ``zsw reconstruct`` runs it for a resolved ``tta``: on ``image [B, 3, S, S]``
    and the prompts' ``text``, averaged with the mirrored image's outputs under ``flip-pixel``
    (:func:`flip_averaged_pixel`), and with each pixel that both masks claim left to the more
    confident one (:meth:`~zsw.model.PixelOutput.exclusive`). Measured with the packaged model, CD
    0.0636 -> 0.0630 on the 100 test images, 0.0701 -> 0.0690 from eye level, 0.0675 -> 0.0660 on
    the foreign renders (0.0035 on their occluded views); the real photos' masks do not change."""
    if tta == "flip-pixel":
        return lambda image, text: flip_averaged_pixel(backend, image, text).exclusive()
    return lambda image, text: backend.pixel(image, text).exclusive()


def mirror_points(points: torch.Tensor, pred: SurfacePrediction, mirrored: SurfacePrediction) -> torch.Tensor:
    """Points ``[B, N, 3]`` of ``pred``'s normalised frame, reflected through the camera's x = 0
    plane and expressed in ``mirrored``'s normalised frame, where ``mirrored`` is the prediction
    for the same input flipped left to right. Flipping column u to W - 1 - u is the camera of the
    reflected scene: ``u = fx X / Z + cx`` becomes ``W - 1 - u = fx (-X) / Z + (W - 1 - cx)``."""
    camera = pred.to_camera(points)
    return mirrored.to_normalized(camera * camera.new_tensor([-1.0, 1.0, 1.0]))


def occupancy_function(
    backend: Backend,
    pred: Prediction,
    mirrored: Prediction | None = None,
    precision: str = "fp32",
    label: str = "",
):
    """The occupancy logits ``[B, N]`` of points ``[B, N, 3]`` in ``pred``'s normalised frame, as
    grid extraction calls it. With ``mirrored`` (the prediction for the input flipped left to
    right), the mean of the two fields' logits: ``pred``'s at each point and ``mirrored``'s at its
    reflection (:func:`mirror_points`). Non-finite logits raise :class:`~zsw.errors.ZswError`."""
    device = backend.device

    def decode(points: torch.Tensor) -> torch.Tensor:  # [B, N, 3] -> [B, N]
        with autocast(precision, device):
            logits = backend.decode(pred.latents, points).float()
            if mirrored is not None:
                reflected = mirror_points(points.float(), pred, mirrored).to(points.dtype)
                logits = 0.5 * (logits + backend.decode(mirrored.latents, reflected).float())
        if not bool(torch.isfinite(logits).all()):
            raise ZswError(
                f"the model ({label or backend.name}) decodes non-finite occupancy: its weights are damaged or diverged"
            )
        return logits

    return decode
