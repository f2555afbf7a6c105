"""Snapshots of an Executor's state: on disk (``SnapshotStore``) and between replicas.

``Snapshots`` (a part of ``Consensus``, with its own state) takes snapshots on the Executor's
thread, restores them at start, serves them to peers in chunks (``get_snapshot``) and installs
a peer's when this replica is too far behind. Relies on ``Executor.snapshot()``/``restore()``,
:class:`~runtime.raft.decisions.ApplyLedger` and :class:`~runtime.raft.bodies.Bodies`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tarfile
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from runtime import protocol
from runtime.raft.common import _short, _unlink, _write_json
from runtime.raft.durable import fsync_dir, fsync_tree

if TYPE_CHECKING:
    from runtime.raft.bodies import Bodies
    from runtime.raft.decisions import ApplyLedger
    from runtime.raft.settings import PeerAddress

log = logging.getLogger('orchestra.raft')


class SnapshotStore:
    """``snap-<index>/`` folders: ``state`` (written by Executor.snapshot) and ``meta.json``."""

    def __init__(self, root: str, durable: bool = False):
        self.root = root
        self.durable = durable   # durability='fsync': a snapshot is on disk before it is named
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):   # leftovers of a snapshot or transfer cut short
            if name.startswith(('tmp-', 'incoming-')) or name.endswith('.tmp'):
                path = os.path.join(root, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _unlink(path)

    def list(self) -> List[Tuple[int, str]]:
        """Complete snapshots, oldest first."""
        out = []
        for name in os.listdir(self.root):
            if name.startswith('snap-') and os.path.isdir(os.path.join(self.root, name)):
                path = os.path.join(self.root, name)
                if os.path.exists(os.path.join(path, 'meta.json')):
                    out.append((int(name[5:]), path))
        return sorted(out)

    def latest(self) -> Optional[Tuple[int, str]]:
        snaps = self.list()
        return snaps[-1] if snaps else None

    def new_tmp(self) -> str:
        path = os.path.join(self.root, f'tmp-{uuid.uuid4().hex[:12]}')
        os.makedirs(path)
        return path

    def commit(self, tmp: str, index: int) -> str:
        final = os.path.join(self.root, f'snap-{index:012d}')
        if os.path.exists(final):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            if self.durable:
                fsync_tree(tmp)
            os.rename(tmp, final)
            if self.durable:
                fsync_dir(self.root)
        return final

    def prune(self, keep: int = 2) -> None:
        snaps = self.list()
        for _, path in snaps[:-keep] if keep else snaps:
            shutil.rmtree(path, ignore_errors=True)
            _unlink(path + '.tar')

    def tar(self, index: int) -> str:
        """The snapshot as one uncompressed tar file (built once, for transfer to a peer)."""
        path = os.path.join(self.root, f'snap-{index:012d}')
        out = path + '.tar'
        if not os.path.exists(out):
            tmp = f'{out}.{uuid.uuid4().hex[:8]}.tmp'
            with tarfile.open(tmp, 'w') as t:
                t.add(path, arcname='snap')
            os.replace(tmp, out)
        return out

    def unpack(self, tar_path: str) -> Tuple[int, str]:
        """A transferred tar -> a local snapshot folder; returns (index, path)."""
        tmp = self.new_tmp()
        with tarfile.open(tar_path) as t:
            try:
                t.extractall(tmp, filter='data')   # no paths outside tmp, no devices or links out
            except TypeError:   # a Python without extraction filters
                t.extractall(tmp)
        inner = os.path.join(tmp, 'snap')
        with open(os.path.join(inner, 'meta.json')) as f:
            index = int(json.load(f)['index'])
        final = self.commit(inner, index)
        shutil.rmtree(tmp, ignore_errors=True)
        return index, final


class Snapshots:
    """One replica's snapshots: take them (on the Executor's thread), restore them at start,
    serve them to peers in chunks (``get_snapshot``) and install a peer's when too far behind.

    A part of ``Consensus`` with its own state (the store, the snapshot under way, counts); it
    is given the Executor and its thread, the :class:`~runtime.raft.decisions.ApplyLedger` it
    reads and updates, :class:`~runtime.raft.bodies.Bodies` (peer calls, body clean-up) and
    ``on_covered(index)``, called when a snapshot covers the log up to ``index``.
    """

    SNAPSHOT_CHUNK = 8 * 1024 * 1024

    def __init__(self, name: str, store: SnapshotStore, executor: Any, pool: Any, ledger: 'ApplyLedger',
                 bodies: 'Bodies', peers: Sequence['PeerAddress'], trailing_logs: int, restore_on_start: bool,
                 on_covered: Callable[[int], None]):
        self.name = name
        self._store, self._executor, self._pool = store, executor, pool
        self._ledger, self._bodies, self._peers = ledger, bodies, tuple(peers)
        self._trailing_logs, self._restore_on_start = int(trailing_logs), restore_on_start
        self._on_covered = on_covered
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._running: Optional['asyncio.Future[int]'] = None   # the snapshot on the Executor's thread
        self._tasks: Set[asyncio.Task] = set()
        self.seconds: Optional[float] = None   # how long the latest snapshot took
        self.failures = 0                      # consecutive failed snapshots (to log only some)
        self.installed = 0                     # snapshots installed from peers

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def any_local(self) -> bool:
        return self._store.latest() is not None

    # -- restore -------------------------------------------------------------------------------
    def restore_local(self) -> None:
        """At start, on the Executor's thread: load the newest local snapshot (older ones if it fails)."""
        for _, path in reversed(self._store.list()):
            try:
                self._restore_sync(path, call_restore=self._restore_on_start)
                return
            except Exception as e:
                log.error('%s: snapshot %s cannot be restored (%s: %s); trying an older one',
                          self.name, path, type(e).__name__, e)

    def _restore_sync(self, path: str, call_restore: bool = True) -> None:
        with open(os.path.join(path, 'meta.json')) as f:
            meta = json.load(f)
        if call_restore:
            self._executor.restore(os.path.join(path, 'state'))
        self._on_covered(self._ledger.restored(meta))   # the loop waits on this thread meanwhile

    # -- take ----------------------------------------------------------------------------------
    def _snapshot_sync(self, requested: int) -> int:
        """On the Executor's thread: write its state and our bookkeeping to ``snap-<index>``."""
        meta = self._ledger.snapshot_meta(requested)
        index = meta['index']
        if any(i == index for i, _ in self._store.list()):
            return index
        tmp = self._store.new_tmp()
        try:
            self._executor.snapshot(os.path.join(tmp, 'state'))
            _write_json(os.path.join(tmp, 'meta.json'), dict(meta, replica=self.name, created=time.time()))
            self._store.commit(tmp, index)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return index

    def begin(self, index: int) -> 'asyncio.Future[int]':
        """Run a snapshot on the Executor's thread; :meth:`finish` waits for it (a process exits
        with ``os._exit``: a snapshot cut short there would leave a ``tmp-*`` folder behind)."""
        assert self._loop is not None, 'Snapshots.start() first'
        t0 = time.monotonic()
        fut = self._loop.run_in_executor(self._pool, self._snapshot_sync, index)

        def took(_: Any) -> None:
            self.seconds = time.monotonic() - t0
        fut.add_done_callback(took)
        self._running = fut
        return fut

    async def finish(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) for a snapshot under way; stop background work."""
        running = self._running
        if running is not None and not running.done():
            await asyncio.wait([running], timeout=timeout)
        for t in list(self._tasks):
            t.cancel()

    @property
    def quick(self) -> bool:
        """Whether the latest snapshot took under a second (or none was taken yet)."""
        return (self.seconds or 0.0) < 1.0

    async def take(self, last: bool = False) -> None:
        """Snapshot what is applied now; a failure is logged (the log keeps growing meanwhile).
        ``last``: the one ``close`` takes -- older snapshots are pruned, bodies left to the next start."""
        try:
            index = await asyncio.shield(self.begin(self._ledger.applied_index))
        except Exception as e:
            self.failures += 1
            if self.failures in (1, 10) or self.failures % 100 == 0:
                log.error('%s: Executor.snapshot() failed (%s: %s); the RAFT log keeps growing until it '
                          'succeeds. Override snapshot(path)/restore(path) for state that does not pickle.',
                          self.name, type(e).__name__, e)
            return
        self.failures = 0
        self._taken(index, collect_bodies=not last)

    def _taken(self, index: int, collect_bodies: bool = True) -> None:
        self._ledger.snapshot_taken(index)
        covered = self._ledger.snapshot_index
        self._on_covered(covered)
        self._store.prune(keep=1)
        limit = covered - self._trailing_logs
        if limit > 0 and collect_bodies:   # bodies it covers, but the last trailing_logs entries (slow followers)
            t = asyncio.ensure_future(asyncio.to_thread(self._bodies.gc, limit))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    # -- between replicas ----------------------------------------------------------------------
    async def serve(self, header: Dict[str, Any]) -> bytes:
        """A peer's ``get_snapshot``: one chunk of the snapshot it asks for (by index or newer than)."""
        want = header.get('index')
        snaps = self._store.list()
        if want is not None:
            found = [s for s in snaps if s[0] == int(want)]
        else:
            found = [s for s in snaps if s[0] >= int(header.get('min_index', 0))][-1:]
        if not found:
            return protocol.pack({'ok': False, 'missing': True,
                                  'latest': snaps[-1][0] if snaps else None})
        index = found[0][0]
        offset = int(header.get('offset', 0))

        def chunk() -> Tuple[int, bytes]:
            path = self._store.tar(index)
            with open(path, 'rb') as f:
                f.seek(offset)
                return os.path.getsize(path), f.read(self.SNAPSHOT_CHUNK)

        total, data = await asyncio.to_thread(chunk)
        return protocol.pack({'ok': True, 'index': index, 'total': total}, data)

    async def install_from_peer(self, min_index: int) -> bool:
        """Fetch a peer's snapshot at index >= ``min_index`` and restore it; False if none has one."""
        assert self._loop is not None, 'Snapshots.start() first'
        for peer in self._peers:
            tmp = os.path.join(self._store.root, f'incoming-{uuid.uuid4().hex[:8]}.tar')
            try:
                index, offset, total = None, 0, None
                with open(tmp, 'wb') as f:
                    while total is None or offset < total:
                        h, body = await self._bodies.call(
                            peer.name, {'op': 'get_snapshot', 'min_index': min_index, 'index': index,
                                        'offset': offset}, timeout=120.0)
                        if not h.get('ok'):
                            break
                        index, total = int(h['index']), int(h['total'])
                        f.write(body)
                        offset += len(body)
                        if not body:
                            break
                if index is None or total is None or offset < total:
                    continue
                got, path = await asyncio.to_thread(self._store.unpack, tmp)
                await self._loop.run_in_executor(self._pool, self._restore_sync, path, True)
                self.installed += 1
                self._taken(got)
                log.info('%s: installed the snapshot at index %d from %s', self.name, got, peer.name)
                return True
            except Exception as e:
                log.warning('%s: fetching a snapshot from %s failed: %s', self.name, peer.name, _short(e))
            finally:
                _unlink(tmp)
        return False
