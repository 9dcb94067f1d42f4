"""A logging handler that writes its lines in batches, a few milliseconds apart.

Writing each access-log line with its own ``write()`` cost more than the
request it records. :class:`BufferedLineHandler` gathers the lines logged
while an event loop runs and writes them together :data:`FLUSH_DELAY` seconds
after the first of them, or as soon as :data:`MAX_PENDING_LINES` wait;
without a running loop in the logging thread it writes at once. (Writing at
the end of each loop iteration was measured too: a gateway that is not
saturated finishes about one request per iteration, so that was still a
``write()`` per request, 5 us of CPU each behind nginx.) Lines keep their
order; :meth:`~BufferedLineHandler.flush` (run by :func:`logging.shutdown` at
exit, by a worker before it exits and by the server when it stops) writes
whatever waits, so nothing is lost on a clean exit or SIGTERM.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import select
import time
from collections.abc import Callable
from typing import TextIO

from .logconfig import ACCESS_LINE_FORMAT, BARE_LINE_FORMAT

__all__ = ["FLUSH_DELAY", "MAX_PENDING_LINES", "BufferedLineHandler"]

#: Seconds between the first line of a batch and its write: short enough for
#: ``tail -f``, long enough for a batch to hold many requests.
FLUSH_DELAY = 0.01
#: Lines waiting before they are written at once.
MAX_PENDING_LINES = 512
# One write() of at most this many bytes to a pipe is atomic: the lines of
# workers sharing one stdout pipe never interleave mid-line.
_ATOMIC_WRITE = select.PIPE_BUF


class BufferedLineHandler(logging.StreamHandler[TextIO]):
    """A :class:`logging.StreamHandler` whose lines are written in batches.

    Any formatter works. For the two the gateway configures itself (its
    access-line prefix ``%(asctime)s [%(process)d] ``, or the bare message as
    for JSON lines) the handler keeps bare messages and puts the prefix on
    when it writes them: :meth:`message_writer` gives the access log a way in
    that skips the :class:`logging.LogRecord` and the formatter. The time in
    that prefix is when the line is written: at most :data:`FLUSH_DELAY`
    after it was logged.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        #: Lines not written yet, without their newline: bare messages when
        #: the formatter is one the handler stands in for, else formatted.
        #: Appended to without the lock (one thread, the loop's, appends in
        #: the common case); written under the lock, and only the lines
        #: present when the write began are removed, so a line appended
        #: meanwhile is kept.
        self._pending: list[str] = []
        self._fd = _fileno(self.stream)
        #: None: the formatter formats each record; "": bare messages;
        #: ACCESS_LINE_FORMAT: messages get the time-and-pid prefix.
        self._stands_in: str | None = None
        self._second = -1
        self._second_text = ""
        os.register_at_fork(after_in_child=self._pending.clear)

    def setStream(self, stream: TextIO) -> TextIO | None:
        """Write pending lines to the old stream, then use ``stream``."""
        self.flush()
        old = super().setStream(stream)
        self._fd = _fileno(self.stream)
        return old

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        """Write pending lines in the old format, then use ``fmt``."""
        self.flush()
        super().setFormatter(fmt)
        self._stands_in = _known_format(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the line of ``record`` (``handle()`` holds the lock)."""
        try:
            if self._stands_in is not None and not (record.exc_info or record.stack_info):
                line = record.getMessage()
            else:
                if self._stands_in is not None:
                    # A traceback needs the formatter, and the lines before it their prefix.
                    self.flush()
                    self.stream.write(self.format(record) + self.terminator)
                    self.stream.flush()
                    return
                line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line)

    def message_writer(self) -> Callable[[str], None] | None:
        """A function that queues a message as this handler's formatter would
        print it, or None if the formatter is not one it can stand in for."""
        return self._add if self._stands_in is not None else None

    def line_queue(self) -> tuple[list[str], Callable[[int], None]] | None:
        """What :meth:`message_writer`'s function does, in two parts, for a
        caller that appends itself (the access log's C logger): the list of
        pending messages, and the function to call with its new length when
        that is 1 or at least :data:`MAX_PENDING_LINES`. None as for
        :meth:`message_writer`. The list stays the same object for the
        handler's life."""
        return (self._pending, self._grew) if self._stands_in is not None else None

    def _add(self, line: str) -> None:
        pending = self._pending
        pending.append(line)
        n = len(pending)
        if n == 1 or n >= MAX_PENDING_LINES:
            self._grew(n)

    def _grew(self, n: int) -> None:
        """``n`` lines wait now: the first of a batch has its write scheduled,
        a full batch is written at once."""
        if n == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush_or_report()  # no loop will come back for it
            else:
                loop.call_later(FLUSH_DELAY, self.flush_or_report)
        elif n >= MAX_PENDING_LINES:
            self.flush_or_report()

    def flush_or_report(self) -> None:
        """:meth:`flush`, reporting a failed write as StreamHandler.emit does
        (``handleError``) rather than raising it into the caller or the loop."""
        try:
            self.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "writing buffered log lines"}))

    def flush(self) -> None:
        """Write every line waiting, then flush the stream."""
        self.acquire()
        try:
            self._write_pending()
            stream = self.stream
            if stream is not None and hasattr(stream, "flush"):
                stream.flush()
        finally:
            self.release()

    def _prefix(self) -> str:
        if self._stands_in != ACCESS_LINE_FORMAT:
            return ""
        # logging.Formatter's "%(asctime)s [%(process)d] ", the date part made
        # once a second; getpid() each time, as workers are forked later.
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._second_text},{int((now - second) * 1000):03d} [{os.getpid()}] "

    def _write_pending(self) -> None:
        pending = self._pending
        n = len(pending)
        if not n:
            return
        prefix = self._prefix()
        text = prefix + ("\n" + prefix).join(pending[:n]) + "\n"
        del pending[:n]
        fd = self._fd
        if fd is None:
            self.stream.write(text)
            return
        # Straight to the file descriptor, in pieces of at most PIPE_BUF bytes
        # cut at line ends (a longer line goes alone); what the stream itself
        # buffered goes first.
        self.stream.flush()
        data = text.encode(self._encoding, "backslashreplace")
        view = memoryview(data)
        start, size = 0, len(data)
        while start < size:
            end = size
            if end - start > _ATOMIC_WRITE:
                end = data.rfind(b"\n", start, start + _ATOMIC_WRITE) + 1
                if end <= start:
                    end = data.find(b"\n", start) + 1 or size
            while start < end:
                start += os.write(fd, view[start:end])

    @property
    def _encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    def close(self) -> None:
        """Write what waits; the stream stays open, as with StreamHandler."""
        self.flush()
        super().close()


def _known_format(fmt: logging.Formatter | None) -> str | None:
    """The format string of ``fmt`` if the handler can stand in for it."""
    if fmt is None or type(fmt) is not logging.Formatter or fmt.datefmt is not None:
        return None
    style = fmt._style
    if type(style) is not logging.PercentStyle or fmt.converter is not time.localtime:
        return None
    if style._fmt == BARE_LINE_FORMAT:
        return ""
    return ACCESS_LINE_FORMAT if style._fmt == ACCESS_LINE_FORMAT else None


def _fileno(stream: TextIO | None) -> int | None:
    try:
        return stream.fileno() if stream is not None else None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
