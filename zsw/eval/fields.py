"""Analytic occupancy fields: known shapes for checking and benchmarking grid extraction.

Each field maps points ``[N, 3]`` of the normalised frame (visible surface within the unit ball,
grid over ``[-1.5, 1.5]^3``) to occupancy logits ``-sharpness * sdf``: positive inside. They cover
what coarse-to-fine extraction can get wrong: a smooth blob (``sphere``), a hole (``torus``),
sharp edges (``box``), thin plates and legs (``chair``) and a pole thinner than a coarse cell
(``lamp``). :data:`TEST_SHAPES` is the set on which ``fast`` extraction must match ``dense``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["sdf_sphere", "sdf_box", "sdf_torus", "sdf_capped_cylinder", "TEST_SHAPES", "occupancy_field"]


def sdf_sphere(p: Tensor, center=(0.0, 0.0, 0.0), radius: float = 1.0) -> Tensor:  # [N, 3] -> [N]
    return (p - p.new_tensor(center)).norm(dim=-1) - radius


def sdf_box(p: Tensor, center=(0.0, 0.0, 0.0), half=(0.5, 0.5, 0.5)) -> Tensor:  # [N, 3] -> [N]
    q = (p - p.new_tensor(center)).abs() - p.new_tensor(half)
    return q.clamp(min=0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0)


def sdf_torus(p: Tensor, major: float = 0.8, minor: float = 0.2) -> Tensor:  # [N, 3] -> [N], ring in xz
    q = torch.stack([p[:, [0, 2]].norm(dim=-1) - major, p[:, 1]], dim=-1)
    return q.norm(dim=-1) - minor


def sdf_capped_cylinder(p: Tensor, center=(0.0, 0.0, 0.0), radius: float = 0.1, half_height: float = 0.5) -> Tensor:
    """A cylinder along y."""
    q = p - p.new_tensor(center)
    d = torch.stack([q[:, [0, 2]].norm(dim=-1) - radius, q[:, 1].abs() - half_height], dim=-1)
    return d.clamp(min=0).norm(dim=-1) + d.amax(dim=-1).clamp(max=0)


def _union(*sdfs: Tensor) -> Tensor:
    return torch.stack(sdfs).amin(dim=0)


def _sphere(p: Tensor) -> Tensor:
    return sdf_sphere(p, (0.1, -0.2, 0.05), 0.7)


def _torus(p: Tensor) -> Tensor:
    return sdf_torus(p, 0.8, 0.18)


def _box(p: Tensor) -> Tensor:
    return sdf_box(p, (0.0, 0.0, 0.0), (0.6, 0.3, 0.9))


def _chair(p: Tensor) -> Tensor:  # y is down (camera frame): the legs point to +y
    seat = sdf_box(p, (0.0, 0.1, 0.0), (0.6, 0.04, 0.6))
    back = sdf_box(p, (0.0, -0.5, 0.55), (0.6, 0.55, 0.04))
    legs = [sdf_box(p, (x, 0.6, z), (0.04, 0.45, 0.04)) for x in (-0.55, 0.55) for z in (-0.55, 0.55)]
    return _union(seat, back, *legs)


def _lamp(p: Tensor) -> Tensor:  # a 0.05-wide pole: thinner than one cell of a 32^3 grid over 3 units
    base = sdf_box(p, (0.0, 0.9, 0.0), (0.4, 0.03, 0.4))
    pole = sdf_capped_cylinder(p, (0.0, 0.1, 0.0), 0.025, 0.8)
    shade = sdf_sphere(p, (0.0, -0.7, 0.0), 0.35)
    return _union(base, pole, shade)


#: name -> signed distance function of the shapes used to validate ``fast`` extraction
TEST_SHAPES: dict[str, Callable[[Tensor], Tensor]] = {
    "sphere": _sphere,
    "torus": _torus,
    "box": _box,
    "chair": _chair,
    "lamp": _lamp,
}


def occupancy_field(name: str, sharpness: float = 100.0) -> Callable[[Tensor], Tensor]:
    """Occupancy logits ``-sharpness * sdf`` of test shape ``name``: points ``[N, 3]`` -> ``[N]``."""
    sdf = TEST_SHAPES[name]

    def field(points: Tensor) -> Tensor:  # [N, 3] -> [N]
        return -sharpness * sdf(points.float())

    return field
