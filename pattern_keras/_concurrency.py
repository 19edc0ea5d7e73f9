"""A readers-writer lock: many ``analyze`` calls at once, or one swap of the patterns.

A pattern analyzer's compiled pass reads its patterns from variables; a refit, ``set_patterns``
or ``load_patterns`` writes them. Writing them one layer after the other while a pass reads
them would give that pass some old and some new patterns, an explanation of neither. So every
``analyze`` call holds the lock shared for its whole length (all its batches see the same
patterns), and a swap holds it alone. Waiting writers go first: a stream of ``analyze`` calls
cannot keep a refit's patterns out for ever.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["ReadWriteLock"]


class ReadWriteLock:
    """Shared ``read()`` sections, exclusive ``write()`` sections, writers first.

    A thread that already holds a read section may open another (nested) one even while a
    writer waits, so that a nested call cannot deadlock against a waiting writer. A write
    section must not be opened by a thread that holds a read section (it would wait for itself);
    that raises ``RuntimeError``.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread id -> nested read sections
        self._writer: int | None = None
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared for the ``with`` block."""
        me = threading.get_ident()
        with self._condition:
            if self._writer == me:
                raise RuntimeError("A write section cannot open a read section.")
            if me not in self._readers:
                while self._writer is not None or self._writers_waiting:
                    self._condition.wait()
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._condition:
                self._readers[me] -= 1
                if not self._readers[me]:
                    del self._readers[me]
                    self._condition.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock alone for the ``with`` block."""
        me = threading.get_ident()
        with self._condition:
            if me in self._readers or self._writer == me:
                raise RuntimeError("A thread inside a read or write section cannot write.")
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._condition.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = me
        try:
            yield
        finally:
            with self._condition:
                self._writer = None
                self._condition.notify_all()
