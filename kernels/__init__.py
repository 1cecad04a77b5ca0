"""zsw.kernels: point cross-attention, the occupancy MLP and Chamfer nearest neighbours.

Each public function dispatches between a Triton kernel and its pure-PyTorch reference in
:mod:`zsw.kernels.reference` (same signature, same semantics); :mod:`zsw.kernels.dispatch` says
which runs when (``impl="auto"|"torch"|"triton"``, ``ZSW_KERNELS``, export).

This folder is installed as ``zsw.kernels`` only. Run from a zsw checkout's root (a REPL, a
notebook, ``python -c``, ``python -m``), Python also finds it as a top-level ``kernels``: the name
of Hugging Face's ``kernels`` package, which transformers (5.25 on) imports with its models. Imported
under that name, this file hands the import over to the ``kernels`` found elsewhere on ``sys.path``,
or fails as if the folder were not there; it never runs as a second copy of zsw's kernels.
"""

from __future__ import annotations

import sys


def _hand_over_top_level_kernels() -> None:
    """Load the top-level ``kernels`` that the rest of ``sys.path`` holds into ``sys.modules``,
    where the import statement that ran this file takes its result from."""
    import importlib.machinery
    import importlib.util
    import os

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def elsewhere(entry) -> bool:
        try:
            return os.path.abspath(os.fspath(entry) or os.curdir) != checkout
        except TypeError:  # not a path (a custom finder's key): it cannot be this checkout
            return True

    spec = importlib.machinery.PathFinder.find_spec(__name__, [e for e in sys.path if elsewhere(e)])
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
    module = importlib.util.module_from_spec(spec)
    sys.modules[__name__] = module  # on failure the import machinery removes it again
    spec.loader.exec_module(module)


if __name__ == "kernels":
    _hand_over_top_level_kernels()
else:
    import types

    class _Package(types.ModuleType):
        """``zsw.kernels`` itself: importing ``kernels/<name>.py`` makes Python set the package
        attribute ``<name>`` to that module, which would hide the public dispatch function of the
        same name (``point_cross_attention``, ``occupancy_mlp``) once the Triton modules load
        lazily; the function is kept."""

        def __setattr__(self, name: str, value) -> None:
            current = self.__dict__.get(name)
            if isinstance(value, types.ModuleType) and callable(current) and not isinstance(current, types.ModuleType):
                return
            super().__setattr__(name, value)

    sys.modules[__name__].__class__ = _Package

    from zsw.kernels import dispatch
    from zsw.kernels.dispatch import *  # noqa: E402,F403  (the public API: dispatch.__all__)
    from zsw.kernels.dispatch import __all__  # noqa: E402,F401

    for _name in __all__:  # the public functions' home is this package (reprs, pickling, docs)
        _public = getattr(dispatch, _name)
        if isinstance(_public, types.FunctionType) and _public.__module__ == dispatch.__name__:
            _public.__module__ = __name__
    del _name, _public
