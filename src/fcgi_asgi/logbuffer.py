"""A logging handler that writes its lines in batches, once per event-loop iteration.

Writing each access-log line with its own ``write()`` cost more than the
request it records. :class:`BufferedLineHandler` gathers the lines logged
during one iteration of the running event loop and writes them together when
the iteration ends, or as soon as :data:`MAX_PENDING_LINES` wait; without a
running loop in the logging thread it writes at once. Lines keep their order;
:meth:`~BufferedLineHandler.flush` (run by :func:`logging.shutdown` at exit, by
a worker before it exits and by the server when it stops) writes whatever
waits, so nothing is lost on a clean exit or SIGTERM.
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

__all__ = ["MAX_PENDING_LINES", "BufferedLineHandler"]

#: Lines waiting before they are written without waiting for the loop.
MAX_PENDING_LINES = 512
# One write() of at most this many bytes to a pipe is atomic: the lines of
# workers sharing one stdout pipe never interleave mid-line.
_ATOMIC_WRITE = select.PIPE_BUF


class BufferedLineHandler(logging.StreamHandler[TextIO]):
    """A :class:`logging.StreamHandler` whose lines are written in batches.

    Any formatter works through :meth:`emit`. For the two formats the gateway
    configures itself (its access-line prefix, or the bare message as for JSON
    lines), :meth:`message_writer` gives the access log a shortcut that skips
    the :class:`logging.LogRecord` and the formatter and yields the same bytes.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        #: Finished lines (with their newline) not written yet. Appended to
        #: without the lock (one thread, the loop's, appends in the common
        #: case); written under the lock, and only the lines present when the
        #: write began are removed, so a line appended meanwhile is kept.
        self._pending: list[str] = []
        self._fd = _fileno(self.stream)
        self._ms = -1
        self._second = -1
        self._second_text = ""
        self._stamp = ""
        # A forked worker must not write its parent's waiting lines a second time.
        os.register_at_fork(after_in_child=self._pending.clear)

    def setStream(self, stream: TextIO) -> TextIO | None:
        """Write pending lines to the old stream, then use ``stream``."""
        self.flush()
        old = super().setStream(stream)
        self._fd = _fileno(self.stream)
        return old

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and queue its line (``handle()`` holds the lock)."""
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._add(line)

    def message_writer(self) -> Callable[[str], None] | None:
        """A function that queues a message as this handler's formatter would
        print it, or None if the formatter is not one it can stand in for."""
        fmt = self.formatter
        if fmt is None or type(fmt) is not logging.Formatter or fmt.datefmt is not None:
            return None
        style = fmt._style
        if type(style) is not logging.PercentStyle or fmt.converter is not time.localtime:
            return None
        if style._fmt == BARE_LINE_FORMAT:
            return self._add_bare
        if style._fmt == ACCESS_LINE_FORMAT:
            return self._add_stamped
        return None

    def _add_bare(self, message: str) -> None:
        self._add(message + "\n")

    def _add_stamped(self, message: str) -> None:
        # logging.Formatter's "%(asctime)s [%(process)d] " for this millisecond,
        # made once per millisecond rather than once per line.
        now = time.time()
        ms = int(now * 1000)
        if ms != self._ms:
            self._ms = ms
            second = ms // 1000
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            # getpid() here, not once: workers are forked after the handler is made.
            self._stamp = f"{self._second_text},{ms % 1000:03d} [{os.getpid()}] "
        self._add(self._stamp + message + "\n")

    def _add(self, line: str) -> None:
        pending = self._pending
        pending.append(line)
        n = len(pending)
        if n == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()  # no loop will come back for it
            else:
                loop.call_soon(self.flush)
        elif n >= MAX_PENDING_LINES:
            self.flush()

    def flush(self) -> None:
        """Write every line waiting, then flush the stream."""
        self.acquire()
        try:
            self._write_pending()
            stream = self.stream
            if stream is not None and hasattr(stream, "flush"):
                stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "writing buffered log lines"}))
        finally:
            self.release()

    def _write_pending(self) -> None:
        pending = self._pending
        n = len(pending)
        if not n:
            return
        text = "".join(pending[:n])
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


def _fileno(stream: TextIO | None) -> int | None:
    try:
        return stream.fileno() if stream is not None else None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
