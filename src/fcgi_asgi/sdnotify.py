"""systemd readiness notifications (``Type=notify`` / ``Type=notify-reload``).

When systemd starts the gateway with ``NOTIFY_SOCKET`` set, the process that
systemd watches (the supervisor, or the single serving process) says:

* ``READY=1`` once the app has started and connections are served (with
  ``--workers``: once every worker is ready),
* ``RELOADING=1`` on SIGHUP, then ``READY=1`` when the new workers serve and
  the old ones are draining,
* ``STOPPING=1`` when it begins to stop.

So ``systemctl start`` and ``systemctl reload`` return when the new code
really serves, and units ordered after this one start only then. Without
``NOTIFY_SOCKET`` every call is a no-op. The protocol is one datagram of
``KEY=VALUE`` lines to a unix socket; a name starting with ``@`` is in the
abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["Notifier"]

logger = logging.getLogger("fcgi_asgi.error")


class Notifier:
    """Sends state changes to systemd's notification socket, if there is one."""

    def __init__(self, address: str | None) -> None:
        self.address: str | None = None
        if address and (address[0] in "/@"):
            # "@name" is Linux's abstract namespace: a leading NUL byte.
            self.address = "\0" + address[1:] if address[0] == "@" else address
        elif address:
            logger.warning("ignoring NOTIFY_SOCKET=%r: not a unix socket path", address)

    @classmethod
    def from_environ(cls, *, unset: bool = False) -> Notifier:
        """The notifier for ``$NOTIFY_SOCKET``; ``unset`` removes the variable so
        that processes started later (workers, the app's own) do not send too."""
        address = (
            os.environ.pop("NOTIFY_SOCKET", None) if unset else os.environ.get("NOTIFY_SOCKET")
        )
        return cls(address)

    @property
    def enabled(self) -> bool:
        """True when systemd listens for notifications."""
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; False when not sent.

        A failure is logged, never raised: a lost notification must not stop
        the gateway from serving (systemd then times the unit out, visibly).
        """
        if self.address is None:
            return False
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            logger.warning("could not notify systemd (%s): %s", lines[0], exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """Serving: ``READY=1`` with a human-readable ``STATUS``."""
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        """A reload began; ``MONOTONIC_USEC`` is required by ``Type=notify-reload``."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        """Stopping: running requests drain."""
        return self.send("STOPPING=1", "STATUS=stopping")
