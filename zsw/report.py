"""How a job tells its caller what happens: messages, warnings, errors and progress.

A job (``zsw.infer.jobs.reconstruct_many``, ``zsw.eval.evaluate``, ...) never prints. It talks to a
:class:`Reporter`; the command line implements one with rich (``zsw.cli._common.RichReporter``),
the web app another, and library callers get :class:`Reporter` itself, which sends messages to the
``zsw`` logger and shows no progress. So the CLI, the app and the Python API run the same code and
differ only in how they show it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

__all__ = ["Reporter", "Advance"]

#: ``advance(n=1, *, note=None, total=None, completed=None)``: n more steps of the current task are
#: done; ``note`` replaces its description (a stage, counts), ``total``/``completed`` set the bar
#: outright when a job knows absolute numbers
Advance = Callable[..., None]

_log = logging.getLogger("zsw")


class Reporter:
    """The reporting interface, and its quiet default (the ``zsw`` logger, no progress bar)."""

    def info(self, text: str) -> None:
        """Something done or decided (``photo.png -> out/photo``, ``skipping 3 images``)."""
        _log.info(text)

    def warning(self, text: str) -> None:
        """Something the user should know that does not stop the job (random weights, ...)."""
        _log.warning(text)

    def error(self, text: str) -> None:
        """One item failed (the job goes on with the others and counts it in its result)."""
        _log.error(text)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Advance]:
        """A task of ``total`` steps (None: unknown); the caller calls the yielded function as
        steps finish (see :data:`Advance`)."""
        yield lambda n=1, **_: None
