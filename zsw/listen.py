"""Whether this machine can listen on ``host:port``, told before anything slow starts.

``zsw app`` checks its address first (before importing gradio and loading the model, seconds on a
CPU), so a mistyped ``--host`` or a taken ``--port`` is one line naming the option, at once.
"""

from __future__ import annotations

import errno
import socket

from zsw.errors import ZswError, reason

__all__ = ["check_address"]


def check_address(host: str, port: int) -> None:
    """Bind ``host:port`` once, as the server will, so that the error names the culprit: a host that
    does not resolve or is not this machine's is ``--host`` (gradio checks only the port, and its
    server's failure read "in use or not allowed; choose another --port"), a taken port ``--port``."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1], as in a URL
    try:
        family, kind, proto, _, address = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ZswError(f"cannot listen on {host}: unknown host name or address ({_why(e)}); check --host") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a just-stopped app's port is free
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise ZswError(f"cannot listen on {host}: not an address of this machine; check --host") from None
            raise ZswError(f"cannot listen on {host}:{port}: {_why(e).lower()}; choose another --port") from None


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or reason(e)  # "Address already in use", not "[Errno 98] Address ..."
