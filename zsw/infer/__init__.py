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

from zsw.infer.backend import Backend, Prediction, TorchBackend, load_backend, predict
from zsw.infer.grid import extract_mesh, extract_meshes
from zsw.infer.reconstruct import Reconstructor
from zsw.infer.result import Reconstruction

# the function ``reconstruct`` is ``zsw.reconstruct``; re-exporting it here would shadow the
# submodule ``zsw.infer.reconstruct`` of the same name

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
