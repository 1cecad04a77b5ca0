"""User-facing errors.

Anything a user can cause (a missing file, a bad option, a corrupt checkpoint, an image of the
wrong shape) raises :class:`ZswError` with one sentence that names the culprit. The CLI prints the
message without a traceback; library callers can catch it. Bugs stay ordinary exceptions.
"""

from __future__ import annotations

__all__ = ["ZswError", "ConfigError", "OptionError", "CheckpointError", "InputError", "Terminated", "reason"]


class ZswError(Exception):
    """An error caused by input, configuration or environment, reported in one line."""


class ConfigError(ZswError, ValueError):
    """A configuration file, preset name or option value is invalid."""


class OptionError(ConfigError):
    """A command-line option has a value that is not allowed (the CLI exits 2, as for any usage
    error)."""


class CheckpointError(ZswError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


class InputError(ZswError, ValueError):
    """A tensor, image or file given to zsw has the wrong type, shape or content."""


class Terminated(KeyboardInterrupt):
    """A termination request (SIGTERM: ``timeout``'s default signal, ``kill``, a scheduler's time
    limit) that a long job turned into the stop Ctrl-C makes, so that it ends as cleanly (the
    command line exits with 143, as a process stopped by SIGTERM does)."""


def reason(e: BaseException) -> str:
    """The first line of a library's exception (or its type's name when it has no message): what
    a one-line error quotes of the cause."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
