"""``durability='fsync'``: the fsync helpers and the test-only trace of fsyncs and acks.

With ``durability='fsync'`` (the default of stateful Deployments) a replica puts on disk
(``fsync``) everything an acknowledged write depends on before the write is acknowledged:

* request bodies: the payload writer thread ``fdatasync``s each batch it appended (one
  sync covers every body queued meanwhile: group commit) before it reports the batch
  written; a new segment file's folder is synced once;
* pysyncobj's journal (``journal.bin``, written through ``mmap``: it reaches the page cache
  only): :meth:`runtime.raft.syncobj.RaftLog.make_durable` flushes it (``msync``) before the
  node sends any message once the journal changed, so a follower acknowledges entries, and
  the leader sends them, only once they are on disk -- and a write commits only on a
  majority that holds it on disk. One flush covers every entry appended since the last;
  term and vote (``journal.bin.meta``) are synced before a vote is sent;
* the compaction dump and the Executor snapshots it names, before the journal is cut.

``durability='none'`` writes the same files without syncing them: a process crash loses
nothing (the page cache survives it), a power cut of a majority can lose acknowledged writes.

Test hook: with the environment variable :data:`TRACE_ENV` set to a folder, each replica
appends one line per event to ``<folder>/<replica>-<pid>.trace``: ``journal T INDEX``
(journal on disk up to log index INDEX), ``payloads T RID,...`` (those bodies on disk),
``applied T RID INDEX`` and ``ack T RID`` (the write's reply is about to be sent); ``T`` is
``time.monotonic_ns()``, one clock for every process of the machine. Relies on the
standard library only.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

#: a folder: replicas write the trace of fsyncs and acks there (tests only)
TRACE_ENV = 'ORCHESTRA_DURABILITY_TRACE'


def fsync_file(path: str) -> None:
    """Put a file's data (and size) on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Put a folder's entries (files created, renamed or removed in it) on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """Every file and folder under ``root`` (``root`` included) on disk, deepest first."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


class Trace:
    """The test-only event trace of one replica (a no-op unless :data:`TRACE_ENV` is set)."""

    def __init__(self, name: str, folder: Optional[str] = None):
        folder = folder if folder is not None else os.environ.get(TRACE_ENV)
        self.enabled = bool(folder)
        self._fd: Optional[int] = None
        self._lock = threading.Lock()
        if self.enabled:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f'{name.replace("/", "_")}-{os.getpid()}.trace')
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def __call__(self, event: str, *fields: object) -> None:
        """Append ``event T fields...`` (T: ``time.monotonic_ns()`` taken now)."""
        if self._fd is None:
            return
        line = ' '.join([event, str(time.monotonic_ns()), *map(str, fields)]) + '\n'
        with self._lock:
            os.write(self._fd, line.encode())

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
