"""``python -m zsw`` is the same as the ``zsw`` command.

``-m`` puts the working folder on ``sys.path``, which the command does not have. Run from a zsw
checkout, the checkout's folders would then answer imports before the installed zsw: its ``zsw/``
(which, installed from a wheel, lacks ``zsw.kernels``, ``zsw.cli`` and ``zsw.bench``: setuptools maps
them in) and its ``kernels/`` as a top-level ``kernels`` (which hands over to Hugging Face's
package, ``kernels/__init__.py``). Such an entry is taken off first.
"""

import os
import sys


def _checkout(entry: str) -> bool:
    """Whether a ``sys.path`` entry is a zsw source checkout."""
    root = os.path.abspath(entry or os.curdir)
    return all(os.path.isfile(os.path.join(root, *p)) for p in (("kernels", "__init__.py"), ("zsw", "__init__.py")))


sys.path[:] = [entry for entry in sys.path if not _checkout(entry)]

from zsw.cli.main import main  # noqa: E402

main()
