"""zsw: ZeroShape-W single-image 3D shape reconstruction in the wild.

One photo of an object (background, occluders, no mask) in, a watertight mesh out. The model
predicts depth, intrinsics, a visible mask and an occluder mask, lifts the visible surface to 3D
and decodes occupancy for any 3D point. See ``zsw.model.build_model`` for the network and the
``zsw`` command line for everything else.

Heavy modules (torch, timm) are imported lazily so ``import zsw`` and ``zsw --help`` stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "ZswError", "reconstruct", "reconstruct_many", "ReconstructSettings", "GridSettings"]

from zsw.errors import ZswError  # noqa: E402  (light module, safe to import eagerly)


def __getattr__(name: str):
    # `zsw.reconstruct(...)` without importing torch at `import zsw` time
    if name == "reconstruct":
        from zsw.infer.reconstruct import reconstruct

        return reconstruct
    if name == "reconstruct_many":
        from zsw.infer.jobs import reconstruct_many

        return reconstruct_many
    if name in ("ReconstructSettings", "GridSettings"):
        from zsw.infer import settings

        return getattr(settings, name)
    raise AttributeError(f"module 'zsw' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy names too (tab completion, help()); not `annotations`, the __future__ import
    return sorted((set(globals()) - {"annotations"}) | set(__all__))
