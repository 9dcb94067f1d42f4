"""Creating listening sockets: unix paths, TCP, inherited file descriptors.

:func:`open_listener` picks one from the options: ``--socket``, ``--host``/
``--port``, ``--fd``, then sockets passed by systemd socket activation
(``LISTEN_FDS``/``LISTEN_PID``), then a listening socket on fd 0.

Each failure a user can cause (a path held by a live server, a path that is
not a socket, an unwritable directory, a port in use) becomes a
:class:`ListenError` with a one-line message that says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .privileges import Identity, SocketOwner, parse_socket_owner

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "FCGI_LISTENSOCK_FILENO",
    "ListenError",
    "Listener",
    "bind_tcp",
    "bind_unix",
    "effective_backlog",
    "from_fd",
    "is_listening_socket",
    "open_listener",
    "systemd_listen_fds",
]

FCGI_LISTENSOCK_FILENO = 0
#: The first file descriptor systemd passes (SD_LISTEN_FDS_START).
SD_LISTEN_FDS_START = 3
#: Bytes in ``sockaddr_un.sun_path`` on Linux: the longest unix socket path.
SUN_PATH_MAX = 108

logger = logging.getLogger("fcgi_asgi.error")


class ListenError(OSError):
    """A listening socket could not be set up; the message says why."""


@dataclass
class Listener:
    """A bound, listening socket and, for a unix socket we created, its file."""

    sock: socket.socket
    #: Path of a unix socket file this process created (removed on shutdown).
    path: str | None = None
    #: ``(st_dev, st_ino)`` of that file, so a newer socket at the same path
    #: (another server started since) is never removed by mistake.
    file_id: tuple[int, int] | None = None

    def describe(self) -> str:
        """Where the listener listens, for log lines."""
        if self.sock.family == socket.AF_UNIX:
            name = self.sock.getsockname()
            return f"unix:{name or self.path or '?'}"
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def remove_file(self) -> None:
        """Remove the unix socket file if it is still the one we created."""
        if self.path is None or self.file_id is None:
            return
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self.file_id:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def effective_backlog(requested: int) -> int:
    """The backlog the kernel will grant: ``requested`` capped by somaxconn."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            cap = int(f.read().strip())
    except (OSError, ValueError):
        return requested
    return min(requested, cap)


def _socket_in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno == errno.EAGAIN:  # backlog full: somebody is listening
            return True
        raise ListenError(exc.errno, f"cannot check socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    return True


def bind_unix(
    path: str, backlog: int, mode: int | None = None, owner: SocketOwner | None = None
) -> Listener:
    """Bind and listen on a unix socket at ``path``.

    A stale socket file (nobody accepts on it) is replaced; a socket that a
    live server accepts on, or a path that is not a socket, is left alone
    and reported. ``mode`` and ``owner`` are applied to the file before
    ``listen()``, so no client can connect while it has the umask's bits.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ListenError(exc.errno, f"cannot use socket path {path}: {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenError(errno.EEXIST, f"{path} exists and is not a socket; not removing it")
        if _socket_in_use(path):
            raise ListenError(errno.EADDRINUSE, f"{path} is in use by a running server")
        try:
            os.unlink(path)
        except OSError as exc:
            raise ListenError(
                exc.errno, f"cannot remove stale socket {path}: {exc.strerror}"
            ) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        directory = os.path.dirname(os.path.abspath(path))
        size = len(os.fsencode(path))
        if size > SUN_PATH_MAX:
            # Python raises this one with no errno (its strerror would print "None").
            msg = (
                f"socket path {path} is too long ({size} bytes; the limit is "
                f"{SUN_PATH_MAX}): use a shorter path"
            )
        elif exc.errno == errno.ENOENT and not os.path.isdir(directory):
            msg = f"cannot create socket {path}: directory {directory} does not exist"
        elif exc.errno == errno.ENOENT:
            # /proc, /sys and the like exist but refuse new files.
            msg = f"cannot create socket {path}: directory {directory} does not accept new files"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            msg = f"cannot create socket {path}: directory {directory} is not writable"
        elif exc.errno == errno.EADDRINUSE:
            msg = f"{path} was created by another process meanwhile"
        else:
            msg = f"cannot create socket {path}: {exc.strerror}"
        raise ListenError(exc.errno or errno.ENAMETOOLONG, msg) from None
    st = os.lstat(path)
    listener = Listener(sock, path=path, file_id=(st.st_dev, st.st_ino))
    try:
        if owner is not None:
            os.chown(path, owner.uid, owner.gid)
        if mode is not None:
            os.chmod(path, mode)
    except OSError as exc:
        sock.close()
        listener.remove_file()
        what = "owner" if owner is not None and exc.errno == errno.EPERM else "mode or owner"
        raise ListenError(
            exc.errno, f"cannot set the {what} of socket {path}: {exc.strerror}"
        ) from None
    sock.listen(backlog)
    sock.setblocking(False)
    return listener


def bind_tcp(host: str, port: int, backlog: int) -> Listener:
    """Bind and listen on TCP ``host:port`` (IPv4 or IPv6)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(errno.EINVAL, f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            msg = f"port {port} on {host} is already in use"
        elif exc.errno == errno.EADDRNOTAVAIL:
            msg = f"address {host} is not available on this machine"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            msg = f"no permission to listen on port {port} on {host}"
        else:
            msg = f"cannot listen on {host}:{port}: {exc.strerror}"
        raise ListenError(exc.errno, msg) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(backlog)
    sock.setblocking(False)
    return Listener(sock)


def is_listening_socket(fd: int) -> bool:
    """True when ``fd`` is a stream socket in the listening state."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        sock.detach()


def from_fd(fd: int, backlog: int) -> Listener:
    """Wrap an inherited listening socket (``--fd``, fd 0 from a web server)."""
    if not is_listening_socket(fd):
        try:
            os.fstat(fd)
        except OSError:
            raise ListenError(errno.EBADF, f"file descriptor {fd} is not open") from None
        raise ListenError(errno.ENOTSOCK, f"file descriptor {fd} is not a listening socket")
    if fd != FCGI_LISTENSOCK_FILENO:
        # Close-on-exec, as sd_listen_fds does: a program the app starts must
        # not hold the listening socket (clients would queue on it after we
        # exit). fd 0 stays: it is also the standard input programs expect.
        os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    # listen() again: the backlog a parent chose is often the 100 or 128 default.
    sock.listen(backlog)
    sock.setblocking(False)
    return Listener(sock)


def systemd_listen_fds() -> list[int]:
    """File descriptors passed to this process by systemd socket activation.

    Reads ``LISTEN_PID``/``LISTEN_FDS`` (as ``sd_listen_fds(3)`` does) and
    removes them, with ``LISTEN_FDNAMES``, from the environment so that the
    app's own child processes do not take the sockets for theirs.
    """
    pid = os.environ.pop("LISTEN_PID", None)
    count = os.environ.pop("LISTEN_FDS", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    try:
        if int(pid) != os.getpid():
            return []
        n = int(count)
    except ValueError:
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(n, 0)))
    for fd in fds:
        # sd_listen_fds sets close-on-exec: the sockets are ours, not the app's children's.
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    return fds


def open_listener(config: Config, identity: Identity | None = None) -> Listener:
    """The listening socket the options ask for, bound and listening.

    A ``--socket`` file gets ``--socket-mode`` and ``--socket-owner`` (by
    default the ``identity`` the app will run as, when there is one).

    Explicit options come first (``--socket``, ``--host/--port``, ``--fd``),
    then a socket from systemd socket activation, then fd 0. Inherited
    sockets are ``listen()``-ed again with ``config.backlog``: the backlog a
    parent chose is often the small default.
    """
    backlog = effective_backlog(config.backlog)
    activated = systemd_listen_fds()
    explicit = config.socket is not None or config.port is not None or config.fd is not None
    if activated and explicit:
        logger.warning(
            "ignoring %d socket(s) passed by systemd: a listener was given on the command line",
            len(activated),
        )
    if config.socket is not None:
        owner = parse_socket_owner(config.socket_owner, identity)
        return bind_unix(config.socket, backlog, config.socket_mode, owner)
    if config.port is not None:
        return bind_tcp(config.listen_host, config.port, backlog)
    if config.fd is not None:
        return from_fd(config.fd, backlog)
    if activated:
        if len(activated) > 1:
            raise ListenError(
                errno.EINVAL,
                f"systemd passed {len(activated)} sockets; the gateway serves one "
                "(give the .socket unit a single Listen... line)",
            )
        return from_fd(activated[0], backlog)
    if is_listening_socket(FCGI_LISTENSOCK_FILENO):
        return from_fd(FCGI_LISTENSOCK_FILENO, backlog)
    raise ListenError(
        0,
        "no listener: give --socket PATH or --host/--port, or start the gateway "
        "with a listening socket on fd 0 or through systemd socket activation",
    )
