"""Request bodies (payloads) on disk: ``PayloadStore``, segment files and ``applied.log``.

Also the request-id check and digest every payload is stored and fetched under.
Relies on the standard library and :mod:`runtime.raft.common`.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
import struct
import threading
import time
import uuid
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from runtime.raft.common import _unlink
from runtime.raft.durable import fsync_dir

log = logging.getLogger('orchestra.raft')

_RID = re.compile(r'^[0-9a-f]{32}$')


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _check_rid(rid: Any) -> str:
    if not isinstance(rid, str) or not _RID.match(rid):
        raise ValueError(f'not a request id: {rid!r}')
    return rid


_SEG_HEADER = struct.Struct('<2s16s16sI')      # b'PL', request id, digest, body length
_MARK = struct.Struct('<16sQ')                   # request id, log index that applied it


class PayloadStore:
    """Request bodies by request id, appended to segment files (``seg-<n>.log``).

    One file per body cost ~300 us of CPU each on this machine (ext4: create, write,
    rename, later unlink); appending to a segment costs ~20 us. Bodies are written by
    one writer thread, in batches (:meth:`put_nowait`; ``on_written`` is called with the
    request ids of each batch once it is in the page cache), or right away by :meth:`put`.
    ``applied.log`` records which log index applied which body (so :meth:`gc` can drop
    bodies a snapshot covers, across restarts). A segment file is deleted once every body
    in it is dropped. Bodies not yet applied are also kept in memory (up to ``cache_bytes``),
    with the digest they were stored under (so the applier need not hash them again).

    With ``durable`` (``durability='fsync'``) each appended batch is ``fdatasync``ed before it
    counts as written; without, a process crash loses nothing written before it (the page
    cache survives it), a power cut can lose the last writes of a replica.
    A body cut short by a crash is detected (length) when the segment is read at start.
    """

    SEGMENT_BYTES = 32 * 1024 * 1024

    def __init__(self, root: str, cache_bytes: int = 512 * 1024 * 1024,
                 on_written: Optional[Callable[[List[str], Optional[BaseException]], None]] = None,
                 durable: bool = False, trace: Optional[Callable[..., None]] = None):
        self.root = root
        os.makedirs(root, exist_ok=True)
        #: durability='fsync': each appended batch is fdatasync'ed before it counts as written
        self.durable = durable
        self._trace = trace
        self.on_written = on_written
        self._lock = threading.Lock()        # the index, the cache, the pending bodies
        self._write_lock = threading.Lock()  # the active segment
        self._index: Dict[str, Tuple[int, int, int, str, float]] = {}   # rid -> seg, offset, size, digest, time
        self._live: Dict[int, int] = collections.Counter()             # seg -> bodies indexed in it
        self._applied: Dict[str, int] = {}
        self._legacy: Dict[str, str] = {}    # one-file-per-body payloads of older versions
        self._cache: Dict[str, Tuple[bytes, str]] = {}
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._pending: Dict[str, Tuple[bytes, str]] = {}
        self._queue: Deque[str] = collections.deque()
        self._cv = threading.Condition(self._lock)
        self._writer: Optional[threading.Thread] = None
        self._closed = False
        segs = []
        for name in os.listdir(root):
            if name.endswith('.tmp'):
                _unlink(os.path.join(root, name))
            elif name.startswith('seg-') and name.endswith('.log'):
                segs.append(int(name[4:-4]))
            elif name.startswith('p-'):
                self._legacy[name[2:]] = name
            elif name.startswith('a-'):
                rid = name.rsplit('-', 1)[1]
                self._legacy[rid] = name
                self._applied[rid] = int(name[2:14])
        for seg in sorted(segs):
            self._scan(seg)
        self._read_marks()
        self._seg = max(segs, default=0) + 1   # never append after what a crash may have cut short
        self._seg_size = 0
        self._fd: Optional[int] = None
        self._marks_fd: Optional[int] = None
        self._marks = 0

    # -- files -----------------------------------------------------------------------------
    def _path(self, seg: int) -> str:
        return os.path.join(self.root, f'seg-{seg:08d}.log')

    def _scan(self, seg: int) -> None:
        path = self._path(seg)
        try:
            size = os.path.getsize(path)
            mtime = os.path.getmtime(path)
            with open(path, 'rb') as f:
                offset = 0
                while offset + _SEG_HEADER.size <= size:
                    f.seek(offset)
                    magic, rid, digest, n = _SEG_HEADER.unpack(f.read(_SEG_HEADER.size))
                    if magic != b'PL' or offset + _SEG_HEADER.size + n > size:
                        break   # cut short by a crash: the rest is ignored
                    self._index.setdefault(rid.hex(), (seg, offset + _SEG_HEADER.size, n, digest.hex(), mtime))
                    offset += _SEG_HEADER.size + n
        except OSError:
            return
        self._live[seg] = sum(1 for v in self._index.values() if v[0] == seg)
        if not self._live[seg]:
            del self._live[seg]
            _unlink(path)

    def _read_marks(self) -> None:
        try:
            with open(os.path.join(self.root, 'applied.log'), 'rb') as f:
                data = f.read()
        except OSError:
            return
        for off in range(0, len(data) - _MARK.size + 1, _MARK.size):
            rid, index = _MARK.unpack_from(data, off)
            self._applied[rid.hex()] = index

    def _append(self, items: List[Tuple[str, bytes, str]]) -> None:
        """Append bodies to the active segment (the writer thread, or put())."""
        with self._write_lock:
            if self._fd is None or self._seg_size >= self.SEGMENT_BYTES:
                if self._fd is not None:
                    os.close(self._fd)
                    with self._lock:
                        if not self._live.get(self._seg):
                            _unlink(self._path(self._seg))
                    self._seg += 1
                self._fd = os.open(self._path(self._seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._seg_size = 0
                if self.durable:   # the new segment's name on disk
                    fsync_dir(self.root)
            seg, base = self._seg, self._seg_size
            parts, where, offset = [], [], base
            for rid, data, digest in items:
                parts.append(_SEG_HEADER.pack(b'PL', bytes.fromhex(rid), bytes.fromhex(digest), len(data)))
                parts.append(data)
                offset += _SEG_HEADER.size
                where.append((rid, offset, len(data), digest))
                offset += len(data)
            buf = b''.join(parts)
            view = memoryview(buf)
            while view:
                view = view[os.write(self._fd, view):]
            self._seg_size = offset
            if self.durable:   # one sync for the whole batch (group commit)
                os.fdatasync(self._fd)
                if self._trace is not None:
                    self._trace('payloads', ','.join(rid for rid, _, _ in items))
        now = time.time()
        with self._lock:
            for rid, off, n, digest in where:
                if rid not in self._index:
                    self._index[rid] = (seg, off, n, digest, now)
                    self._live[seg] += 1

    def _writer_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                rids = list(self._queue)
                self._queue.clear()
                items = [(rid, *self._pending[rid]) for rid in rids if rid in self._pending]
            error: Optional[BaseException] = None
            try:
                if items:
                    self._append(items)
            except Exception as e:
                error = e
                log.exception('writing %d request bodies to %s failed', len(items), self.root)
            with self._lock:
                for rid, _, _ in items:
                    self._pending.pop(rid, None)
                    if error is not None:
                        hit = self._cache.pop(rid, None)
                        if hit is not None:
                            self._cache_bytes -= len(hit[0])
            if self.on_written is not None:
                try:
                    self.on_written(rids, error)
                except Exception:
                    pass

    # -- the API ---------------------------------------------------------------------------
    def has(self, rid: str) -> bool:
        return rid in self._index or rid in self._pending or rid in self._legacy

    def _remember(self, rid: str, data: bytes, digest: str) -> None:
        if rid not in self._cache and self._cache_bytes + len(data) <= self._cache_limit:
            self._cache[rid] = (data, digest)
            self._cache_bytes += len(data)

    def put_nowait(self, rid: str, data: bytes, digest: str) -> bool:
        """Keep a body in memory and queue it for the writer thread; False if already stored or queued."""
        _check_rid(rid)
        with self._cv:
            if rid in self._index or rid in self._pending or rid in self._legacy:
                return False
            self._pending[rid] = (data, digest)
            self._remember(rid, data, digest)
            self._queue.append(rid)
            if self._writer is None:
                self._writer = threading.Thread(target=self._writer_loop, daemon=True, name='payload-writer')
                self._writer.start()
            self._cv.notify()
        return True

    def pending(self, rid: str) -> bool:
        return rid in self._pending

    def put(self, rid: str, data: bytes, digest: Optional[str] = None) -> None:
        """Store a body in the workspace now (page cache); keep it in memory until applied."""
        _check_rid(rid)
        digest = digest or _digest(data)
        with self._lock:
            if rid in self._index or rid in self._pending or rid in self._legacy:
                return
            self._remember(rid, data, digest)
        self._append([(rid, data, digest)])

    def cached(self, rid: str) -> Optional[bytes]:
        hit = self._cache.get(rid)
        return hit[0] if hit is not None else None

    def cached_with_digest(self, rid: str) -> Optional[Tuple[bytes, str]]:
        """(body, the digest it was stored under) while in memory, else None."""
        return self._cache.get(rid)

    def get(self, rid: str) -> Optional[bytes]:
        hit = self._cache.get(rid) or self._pending.get(rid)
        if hit is not None:
            return hit[0]
        where = self._index.get(rid)
        try:
            if where is not None:
                with open(self._path(where[0]), 'rb') as f:
                    f.seek(where[1])
                    data = f.read(where[2])
                return data if len(data) == where[2] else None
            name = self._legacy.get(rid)
            if name is not None:
                with open(os.path.join(self.root, name), 'rb') as f:
                    return f.read()
        except FileNotFoundError:
            return None
        return None

    def applied(self, rid: str, index: int) -> None:
        """Record the log index that applied a body; drop it from memory."""
        with self._lock:
            hit = self._cache.pop(rid, None)
            if hit is not None:
                self._cache_bytes -= len(hit[0])
            if not (rid in self._index or rid in self._pending or rid in self._legacy):
                return
            self._applied[rid] = index
            if self._marks_fd is None:
                self._marks_fd = os.open(os.path.join(self.root, 'applied.log'),
                                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(self._marks_fd, _MARK.pack(bytes.fromhex(rid), index))
            self._marks += 1

    def discard(self, rid: str) -> None:
        """Forget one body (memory and index; its segment goes once nothing in it is left)."""
        with self._lock:
            self._drop(rid)

    def _drop(self, rid: str) -> None:   # with self._lock
        hit = self._cache.pop(rid, None)
        if hit is not None:
            self._cache_bytes -= len(hit[0])
        self._pending.pop(rid, None)
        self._applied.pop(rid, None)
        where = self._index.pop(rid, None)
        if where is not None:
            self._live[where[0]] -= 1
            if self._live[where[0]] <= 0:
                del self._live[where[0]]
                if where[0] != self._seg:
                    _unlink(self._path(where[0]))
        name = self._legacy.pop(rid, None)
        if name is not None:
            _unlink(os.path.join(self.root, name))

    def gc(self, upto_index: int, orphan_age: float = 600.0) -> int:
        """Drop bodies applied at or before ``upto_index``, and unapplied ones older than ``orphan_age`` s."""
        now = time.time()
        removed = 0
        with self._lock:
            for rid in list(self._index) + list(self._legacy):
                index = self._applied.get(rid)
                if index is not None:
                    drop = index <= upto_index
                elif rid in self._index:
                    drop = now - self._index[rid][4] > orphan_age
                else:
                    try:
                        drop = now - os.path.getmtime(os.path.join(self.root, self._legacy[rid])) > orphan_age
                    except OSError:
                        drop = True
                if drop:
                    self._drop(rid)
                    removed += 1
            for name in os.listdir(self.root):   # segments with nothing left in them
                if name.startswith('seg-') and name.endswith('.log'):
                    seg = int(name[4:-4])
                    if seg != self._seg and not self._live.get(seg):
                        _unlink(os.path.join(self.root, name))
            if self._marks > 4 * (len(self._index) + len(self._legacy)) + 1024:   # keep applied.log small
                keep = b''.join(_MARK.pack(bytes.fromhex(r), i) for r, i in self._applied.items()
                                if r in self._index or r in self._legacy)
                path = os.path.join(self.root, 'applied.log')
                tmp = f'{path}.{uuid.uuid4().hex[:8]}.tmp'
                with open(tmp, 'wb') as f:
                    f.write(keep)
                if self._marks_fd is not None:
                    os.close(self._marks_fd)
                    self._marks_fd = None
                os.replace(tmp, path)
                self._marks = len(keep) // _MARK.size
        return removed

    def close(self) -> None:
        """Write what is queued, stop the writer thread, close the files."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._writer is not None:
            self._writer.join(5.0)
        with self._write_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        with self._lock:
            if self._marks_fd is not None:
                os.close(self._marks_fd)
                self._marks_fd = None

    def __len__(self) -> int:
        return len(self._index) + len(self._legacy) + sum(1 for r in self._pending if r not in self._index)
