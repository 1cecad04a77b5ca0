"""Inference: backends, grid extraction, meshes, and the ``zsw.reconstruct`` API.

* :mod:`zsw.infer.backend` -- the :class:`Backend` protocol, :func:`predict`, :func:`load_backend`;
* :mod:`zsw.infer.grid` -- occupancy grids (dense or coarse to fine) and marching cubes;
* :mod:`zsw.infer.image` -- reading any photo into the model's input;
* :mod:`zsw.infer.reconstruct` -- ``zsw.reconstruct`` and the :class:`Reconstructor` behind it;
* :mod:`zsw.infer.result` -- :class:`Reconstruction`, one image's result and the files it is saved as;
* :mod:`zsw.infer.weights` -- which weights and backend a run uses (``--weights``, ``--backend``);
* :mod:`zsw.infer.precision`, :mod:`zsw.infer.tta` -- ``--precision`` and ``--tta``;
* :mod:`zsw.infer.reruns` -- which photos of a folder run need work again;
* :mod:`zsw.infer.jobs` -- ``zsw reconstruct``'s job over many photos;
* :mod:`zsw.infer.category` -- ``--prompt auto``: CLIP zero-shot or a VLM;
* :mod:`zsw.infer.preview` -- the preview picture (a small torch rasteriser).
"""

import importlib

# the function ``reconstruct`` is ``zsw.reconstruct``; re-exporting it here would shadow the
# submodule ``zsw.infer.reconstruct`` of the same name

#: where each name lives: imported on first use, so that a folder run with nothing left to do
#: (every photo's result already there) plans it without importing PyTorch (``zsw.infer.jobs``)
_HOMES = {
    "Backend": "backend",
    "Prediction": "backend",
    "TorchBackend": "backend",
    "load_backend": "backend",
    "predict": "backend",
    "extract_mesh": "grid",
    "extract_meshes": "grid",
    "Reconstruction": "result",
    "Reconstructor": "reconstruct",
}

__all__ = [
    "Backend",
    "Prediction",
    "TorchBackend",
    "load_backend",
    "predict",
    "extract_mesh",
    "extract_meshes",
    "Reconstruction",
    "Reconstructor",
]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"zsw.infer.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'zsw.infer' has no attribute {name!r}")
