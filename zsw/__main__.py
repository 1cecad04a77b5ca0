"""``python -m zsw`` is the same as the ``zsw`` command.

``-m`` puts the working folder on ``sys.path``, which the command does not have. Run from a zsw
checkout, that makes the repository's ``kernels/`` folder (installed as ``zsw.kernels``) a top-level
``kernels`` package, in front of Hugging Face's ``kernels``, which transformers (5.25 on) imports
with its models: ``from kernels import ...`` then fails. Such an entry is taken off first.
"""

import os
import sys


def _checkout(entry: str) -> bool:
    """Whether a ``sys.path`` entry is a zsw source checkout (its ``kernels/`` would shadow)."""
    root = os.path.abspath(entry or os.curdir)
    return all(os.path.isfile(os.path.join(root, *p)) for p in (("kernels", "__init__.py"), ("zsw", "__init__.py")))


sys.path[:] = [entry for entry in sys.path if not _checkout(entry)]

from zsw.cli.main import main  # noqa: E402

main()
