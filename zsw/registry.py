"""Which code serves each inference backend: a table of import paths, resolved on first use.

``zsw.infer`` runs backends and ``zsw.export`` builds and serves the exported ones; neither may
import the other in both directions. Both read this table instead: ``load_backend("onnxruntime")``
in ``zsw.infer`` finds its loader here, in ``zsw.export.backends``, without a static import of the
export package (which needs onnx/tensorrt and imports ``zsw.infer`` itself). It works like a
package entry point, inside one package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["BACKEND_LOADERS", "RUNTIMES", "backend_loader"]

#: backend kind -> ``module:function`` taking ``(kind, engine_dir, device)``; ``torch`` is
#: ``zsw.infer.backend``'s own and takes a checkpoint instead of an export directory
BACKEND_LOADERS = {
    "torch": "zsw.infer.backend:TorchBackend",
    "onnxruntime": "zsw.export.backends:load_runtime_backend",
    "tensorrt": "zsw.export.backends:load_runtime_backend",
    "torch-tensorrt": "zsw.export.backends:load_runtime_backend",
}
#: backend kinds served from an export directory
RUNTIMES = tuple(k for k in BACKEND_LOADERS if k != "torch")


def backend_loader(kind: str) -> Callable:
    """The loader of backend ``kind`` (imports its module on first use)."""
    module, _, name = BACKEND_LOADERS[kind].partition(":")
    return getattr(importlib.import_module(module), name)
