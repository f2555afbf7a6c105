"""pysyncobj behind one small adapter: every use of it in orchestra-nb goes through this module.

Importing pysyncobj runs its Windows shim (``pysyncobj/win_inet_pton.py``), which replaces
``socket.inet_ntop`` in the whole process -- on every platform -- with a function that
only works on Windows (``psutil.net_connections()`` then fails, for one). This module
imports pysyncobj and puts the original back, so neither the user's process (which
imports it to check ``raft_configuration``) nor a replica is left patched. pysyncobj itself
never calls ``inet_ntop``.

``RaftLog`` wraps the one pysyncobj node a replica runs. It reaches into pysyncobj's
private members in a few places, each marked below with why: keep those here, so a
pysyncobj upgrade is checked in one file.
"""
from __future__ import annotations

import _socket
import logging
import os
import socket
import struct
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence

_inet_ntop_before = socket.inet_ntop
_inet_pton_before = getattr(socket, 'inet_pton', None)

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated  # noqa: E402  (after saving them)
from pysyncobj import tcp_connection as _tcp_connection  # noqa: E402
from pysyncobj import win_inet_pton as _shim  # noqa: E402
from pysyncobj.encryptor import HAS_CRYPTO  # noqa: E402
from pysyncobj.journal import LAST_RECORD_OFFSET_OFFSET, FileJournal  # noqa: E402
from pysyncobj.node import TCPNode  # noqa: E402
from pysyncobj.pickle import dumps as _pysyncobj_dumps  # noqa: E402

from runtime.raft.durable import fsync_dir, fsync_file  # noqa: E402

log = logging.getLogger('orchestra.raft')

__all__ = ['FAIL_REASON', 'HAS_CRYPTO', 'SyncObjConf', 'RaftLog', 'ROLES', 'LEADER', 'quiet_pysyncobj',
           'restore_socket_functions', 'shrink_journal', 'stored_zlib']


def restore_socket_functions() -> None:
    """Undo pysyncobj's replacement of ``socket.inet_ntop`` (and, on Windows, ``inet_pton``)."""
    for name, before in (('inet_ntop', _inet_ntop_before), ('inet_pton', _inet_pton_before)):
        if getattr(socket, name, None) is getattr(_shim, name):
            # imported before us (by the user) the shim is what we saw: take the C function then
            original = before if before is not getattr(_shim, name) else getattr(_socket, name, None)
            if original is not None:
                setattr(socket, name, original)


restore_socket_functions()

#: pysyncobj's ``_RAFT_STATE`` codes (passed to ``onStateChanged``) -> our role names
ROLES = {0: 'follower', 1: 'candidate', 2: 'leader'}
LEADER = 2


class _ReplicatedLog(SyncObj):
    """The pysyncobj object: its only replicated method appends a batch of records (plain tuples)."""

    def __init__(self, on_commit: Callable[[int, Sequence[Sequence[Any]]], None], self_address: str,
                 others: List[str], conf: SyncObjConf):
        self._on_commit = on_commit
        super().__init__(self_address, others, conf)

    @replicated
    def append_records(self, records):
        # pysyncobj applies entries one by one; this entry's index is the next one
        self._on_commit(self.raftLastApplied + 1, records)


def stored_zlib(data: bytes, level: int = -1) -> bytes:
    """``data`` as a zlib stream of *stored* (uncompressed) deflate blocks: what ``zlib.decompress``
    reads, built without running deflate.

    pysyncobj compresses every message it sends with ``zlib.compress(pickled, 3)``: 20-45 us for a
    1 KB message on this machine, its largest cost per message (Fernet encryption: 4 us, decryption
    7 us). Our messages are small records whose bulk (an inline body) hardly compresses, so its
    connections send them stored instead (:func:`_send_messages_stored`); peers read them unchanged.

    >>> zlib.decompress(stored_zlib(b'abc' * 30000)) == b'abc' * 30000
    True
    """
    view = memoryview(data)
    parts = [b'\x78\x01']   # deflate, 32 KB window, no dictionary (a valid header check)
    pos = 0
    while True:
        chunk = view[pos:pos + 0xFFFF]
        pos += len(chunk)
        final = pos >= len(view)
        parts.append(struct.pack('<BHH', 1 if final else 0, len(chunk), len(chunk) ^ 0xFFFF))
        parts.append(chunk)
        if final:
            break
    parts.append(struct.pack('>I', zlib.adler32(data)))
    return b''.join(parts)


class _StoredZlib:
    """What pysyncobj's ``tcp_connection`` module sees as ``zlib``: stored blocks out, any zlib in."""

    compress = staticmethod(stored_zlib)
    decompress = staticmethod(zlib.decompress)


def _send_messages_stored() -> None:
    """pysyncobj's connections send stored zlib streams (module ``pysyncobj.tcp_connection``'s ``zlib``:
    it has no setting for the compression level). Replicas only: the user's process never runs a node."""
    _tcp_connection.zlib = _StoredZlib


class RaftLog:
    """One replica's pysyncobj node, as ``Consensus`` uses it.

    ``on_commit(index, records)`` runs on pysyncobj's thread for every committed entry, in
    log order. Everything else is read by the asyncio loop while pysyncobj's thread runs:
    these are reads of single attributes, racy but safe (callers treat them as a moment's view).
    """

    def __init__(self, on_commit: Callable[[int, Sequence[Sequence[Any]]], None], self_address: str,
                 others: List[str], conf: SyncObjConf):
        _send_messages_stored()
        self._obj = _ReplicatedLog(on_commit, self_address, others, conf)
        self._nodes: Dict[str, TCPNode] = {a: TCPNode(a) for a in others}
        self._journal_fd: Optional[int] = None   # make_durable's descriptor of the journal file

    # -- pysyncobj's public API -----------------------------------------------------------
    def wait_bound(self) -> None:
        """Block until the RAFT port is bound; raises if it cannot be."""
        self._obj.waitBinded()

    def add_on_tick(self, callback: Callable[[], None]) -> None:
        self._obj.addOnTickCallback(callback)

    def propose(self, records: List[tuple], callback: Callable[[Any, int], None]) -> None:
        """Append one entry holding ``records``; ``callback(result, code)`` on pysyncobj's thread."""
        self._obj.append_records(records, callback=callback)

    @property
    def last_applied(self) -> int:
        return self._obj.raftLastApplied

    @property
    def commit_index(self) -> int:
        return self._obj.raftCommitIndex

    @property
    def term(self) -> int:
        return self._obj.raftCurrentTerm

    def is_connected(self, address: str) -> bool:
        """Whether pysyncobj holds a connection to the peer at ``address`` (one of ``others``)."""
        return self._obj.isNodeConnected(self._nodes[address])

    # -- pysyncobj's private members (no public equivalent) -------------------------------
    def is_leader(self) -> bool:
        """Whether this node leads now. ``SyncObj._isLeader``: the public ``getStatus()`` builds a
        dict of the whole node's state per call, too slow for every payload push we answer."""
        return self._obj._isLeader()

    def leader_address(self) -> Optional[str]:
        """The RAFT address of the leader this node last heard of (None: none known).
        ``SyncObj._getLeader``: public only through ``getStatus()`` (see ``is_leader``)."""
        return getattr(self._obj._getLeader(), 'address', None)

    def log_size(self) -> int:
        """Entries in the in-memory log. ``SyncObj._getRaftLogSize``: public only in ``getStatus()``."""
        return self._obj._getRaftLogSize()

    def make_durable(self, journal_file: str, dump_file: str,
                     on_flush: Optional[Callable[[int], None]] = None) -> None:
        """``durability='fsync'``: nothing leaves this node that reflects journal state not on disk.

        pysyncobj's ``FileJournal`` writes ``journal.bin`` through ``mmap`` (the page cache only)
        and has no hook between appending entries and answering a peer, so:

        * ``SyncObj._SyncObj__raftLog`` (the journal): its ``add``/``clear``/``deleteEntriesFrom``
          mark it changed; ``deleteEntriesTo`` (log compaction) first syncs ``dump_file`` (written
          and synced by our serializer, renamed by pysyncobj) and its folder, then flushes the cut;
          its meta storer (term, vote, commit index) writes, syncs, renames and syncs the folder;
        * ``SyncObj._SyncObj__transport.send``: before any message goes out, a changed journal is
          flushed: a follower acknowledges entries, a candidate asks for votes and the leader
          sends entries only once they are on disk. One flush covers every entry appended since
          the previous one (group commit); ``on_flush(last log index)`` is called after each.
          The flush is ``fdatasync`` on our own descriptor of ``journal_file``, not pysyncobj's
          ``mmap.flush()``: CPython's ``msync`` holds the GIL for the whole disk write, stopping
          the replica's event loop and applier meanwhile (py-spy: the largest GIL holder while
          indexing); ``fdatasync`` releases it, and on Linux it writes the pages dirtied through
          the shared mapping as ``msync`` does (both end in ``vfs_fsync_range``).

        Called right after the node is built: its tick thread waits 0.1 s before its first tick.
        """
        journal = self._obj._SyncObj__raftLog
        transport = self._obj._SyncObj__transport
        if not isinstance(journal, FileJournal):
            raise TypeError(f'durability needs pysyncobj\'s FileJournal, got {type(journal).__name__}')
        state = {'dirty': True}

        def changed(method: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any) -> Any:
                state['dirty'] = True
                return method(*args)
            return wrapper

        fd = os.open(journal_file, os.O_RDONLY)
        self._journal_fd = fd

        def flush() -> None:
            if state['dirty']:
                state['dirty'] = False
                os.fdatasync(fd)
                if on_flush is not None:
                    on_flush(journal[-1][1] if len(journal) else 0)

        cut = journal.deleteEntriesTo

        def delete_entries_to(entry_to: int) -> None:
            if os.path.exists(dump_file):   # the dump covers what the cut removes: on disk first
                fsync_file(dump_file)
                fsync_dir(os.path.dirname(os.path.abspath(dump_file)))
            cut(entry_to)
            state['dirty'] = True
            flush()

        for name in ('add', 'clear', 'deleteEntriesFrom'):
            setattr(journal, name, changed(getattr(journal, name)))
        journal.deleteEntriesTo = delete_entries_to

        meta_storer = journal._FileJournal__metaStorer
        meta_path = meta_storer.getPath()

        def store_meta(meta: Dict[str, Any]) -> None:
            tmp = meta_path + '.tmp'
            with open(tmp, 'wb') as f:
                f.write(_pysyncobj_dumps(meta))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, meta_path)
            fsync_dir(os.path.dirname(os.path.abspath(meta_path)))

        meta_storer.storeMeta = store_meta
        send = transport.send

        def durable_send(node: Any, message: Any) -> Any:
            flush()
            return send(node, message)

        transport.send = durable_send

    def destroy(self) -> Optional[Callable[[float], None]]:
        """Stop the node; -> a function that waits (with a timeout) for its tick thread to end.

        ``SyncObj._SyncObj__thread``: ``destroy()`` only asks the thread to stop, and the public
        ``destroy_synchronous()`` joins it without a timeout; we must not hang a shutdown on it."""
        self._obj.destroy()
        thread = getattr(self._obj, '_SyncObj__thread', None)
        fd, self._journal_fd = self._journal_fd, None

        def join(timeout: float) -> None:
            if thread is not None:
                thread.join(timeout)
            if fd is not None and (thread is None or not thread.is_alive()):
                os.close(fd)   # still running: the process's end closes it
        return join


def shrink_journal(path: str, durable: bool = False) -> int:
    """Cut pysyncobj's journal file to the entries it holds, before the node opens it; -> bytes freed.

    ``FileJournal`` grows its file by doubling and never gives space back: after log compaction
    a journal of a few entries keeps the 16 MB it once needed. Its header says where the last
    entry ends (``LAST_RECORD_OFFSET_OFFSET``); what lies beyond is never read.
    """
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            f.seek(LAST_RECORD_OFFSET_OFFSET)
            end = struct.unpack('<I', f.read(4))[0]
    except (OSError, struct.error):
        return 0
    keep = max(end, 1024)
    if not LAST_RECORD_OFFSET_OFFSET < end <= size or size <= 2 * keep:
        return 0
    os.truncate(path, keep)
    if durable:
        fsync_file(path)
    return size - keep


class _DivergedFilter(logging.Filter):
    """pysyncobj logs CRITICAL "state machine may have diverged" whenever a follower
    truncates and re-appends entries the leader re-sent -- routine under load, and
    harmless here (entries are applied once, by index). Count them at DEBUG instead."""

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if 'may have diverged' in str(record.msg):
            _DivergedFilter.count += 1
            log.debug('pysyncobj re-appended already applied entries (%d so far)', _DivergedFilter.count)
            return False
        return True


def quiet_pysyncobj(level: str) -> None:
    """Set pysyncobj's log level and filter its routine "may have diverged" alarm."""
    logging.getLogger('pysyncobj').setLevel(level)
    sync_logger = logging.getLogger('pysyncobj.syncobj')
    if not any(isinstance(f, _DivergedFilter) for f in sync_logger.filters):
        sync_logger.addFilter(_DivergedFilter())

