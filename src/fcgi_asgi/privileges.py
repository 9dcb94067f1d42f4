"""Users and groups: who owns the socket file, and who the app runs as.

Names and numeric ids are resolved once, before anything is bound, so that a
typo is a one-line error at start rather than a worker that cannot boot.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass

from .config import ConfigError, opt

__all__ = [
    "Identity",
    "SocketOwner",
    "acting_as",
    "drop_privileges",
    "parse_socket_owner",
    "resolve_identity",
]


@dataclass(frozen=True)
class Identity:
    """The user and group to switch to after binding."""

    uid: int
    gid: int
    #: The user's name, for its supplementary groups (None: numeric uid with no passwd entry).
    name: str | None

    def is_current(self) -> bool:
        """True when the process already runs as this user and group."""
        return os.geteuid() == self.uid and os.getegid() == self.gid


@dataclass(frozen=True)
class SocketOwner:
    """Owner and group for the unix socket file; -1 leaves one unchanged (as chown(2))."""

    uid: int = -1
    gid: int = -1


def _uid(user: str) -> tuple[int, int, str | None]:
    """``(uid, primary gid, name)`` of a user name or numeric id."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise ConfigError(f"no such user: {user!r}") from None
        try:
            entry = pwd.getpwuid(int(user))
        except KeyError:
            return int(user), int(user), None
    return entry.pw_uid, entry.pw_gid, entry.pw_name


def _gid(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ConfigError(f"no such group: {group!r}") from None


def resolve_identity(user: str | None, group: str | None) -> Identity | None:
    """Resolve ``--user``/``--group``; None when neither was given.

    The group defaults to the user's primary group. Switching to another
    identity needs root: any other start is refused with a clear message
    (asking for the identity one already has is allowed and does nothing).
    """
    if not user and not group:
        return None
    if user:
        uid, gid, name = _uid(user)
    else:
        uid, gid, name = os.geteuid(), os.getegid(), None
    if group:
        gid = _gid(group)
    identity = Identity(uid, gid, name)
    if os.geteuid() != 0 and not identity.is_current():
        raise ConfigError(
            f"{opt('user')}/{opt('group')} need the gateway to start as root "
            f"(it runs as uid {os.geteuid()}); start it as root or drop the options"
        )
    return identity


def parse_socket_owner(spec: str | None, identity: Identity | None) -> SocketOwner | None:
    """Resolve ``--socket-owner USER[:GROUP]`` or ``:GROUP``.

    With no ``--socket-owner`` the socket belongs to ``--user``/``--group``
    when given (as php-fpm's listen.owner defaults to the pool's user), so
    that the app's own user can reach it.
    """
    if not spec:
        if identity is None:
            return None
        return SocketOwner(identity.uid, identity.gid)
    user, _, group = spec.partition(":")
    uid = _uid(user)[0] if user else -1
    gid = _gid(group) if group else -1
    if uid == -1 and gid == -1:
        raise ConfigError(f"{opt('socket_owner')} must be USER[:GROUP] or :GROUP, not {spec!r}")
    return SocketOwner(uid, gid)


def drop_privileges(identity: Identity) -> None:
    """Switch this process to ``identity`` for good (groups first, then the user)."""
    if identity.is_current() and os.getuid() == identity.uid:
        return
    if identity.name is not None:
        os.initgroups(identity.name, identity.gid)
    else:
        os.setgroups([identity.gid])
    os.setgid(identity.gid)
    os.setuid(identity.uid)


@contextlib.contextmanager
def acting_as(identity: Identity | None) -> Iterator[None]:
    """Run the block with ``identity``'s effective ids, then return to root.

    For code that must run before root is given up for good (importing the
    app before a chroot, or in the supervisor for ``--preload``): files are
    opened with the user's rights, so an import does what it would as that
    user. This is no sandbox: the saved user id stays root, and code that
    asks can take root back.
    """
    if identity is None or identity.is_current():
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    if identity.name is not None:
        os.setgroups(os.getgrouplist(identity.name, identity.gid))
    else:
        os.setgroups([identity.gid])
    os.setegid(identity.gid)
    os.seteuid(identity.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)
