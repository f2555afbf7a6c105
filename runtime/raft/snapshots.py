"""Snapshots of an Executor's state: on disk (``SnapshotStore``) and between replicas.

``_Snapshots`` (a part of ``Consensus``) takes snapshots on the Executor's thread, restores
them at start, serves them to peers in chunks (``get_snapshot``) and installs a peer's when
this replica is too far behind. Relies on the ``Consensus`` attributes (declared in
:mod:`runtime.raft.state`), its peer calls (:mod:`runtime.raft.control`) and
``Executor.snapshot()``/``restore()``.
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
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from runtime import protocol
from runtime.raft.common import _short, _unlink, _write_json
from runtime.raft.durable import fsync_dir, fsync_tree

if TYPE_CHECKING:   # a part of Consensus: its attributes (see runtime.raft.state for why not at run time)
    from runtime.raft.state import ConsensusState as _Base
else:
    _Base = object

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


class _Snapshots(_Base):
    """``Consensus``'s snapshots: take, restore, serve to peers, install from a peer."""

    SNAPSHOT_CHUNK = 8 * 1024 * 1024
    def _restore_local(self, latest: Tuple[int, str]) -> None:
        """At start, on the Executor's thread: load the newest local snapshot (older ones if it fails)."""
        for _, path in reversed(self.snapshots.list()):
            try:
                self._restore_sync(path, call_restore=not self.options['no_snapshot_restore_on_start'])
                return
            except Exception as e:
                log.error('%s: snapshot %s cannot be restored (%s: %s); trying an older one',
                          self.name, path, type(e).__name__, e)

    def _restore_sync(self, path: str, call_restore: bool = True) -> None:
        with open(os.path.join(path, 'meta.json')) as f:
            meta = json.load(f)
        if call_restore:
            self.server.executor.restore(os.path.join(path, 'state'))
        index = self.ledger.restored(meta)   # the loop waits on this thread meanwhile
        with self._records_lock:
            for i in [i for i in self._records if i <= index]:
                del self._records[i]

    def _snapshot_sync(self, requested: int) -> int:
        """On the Executor's thread: write its state and our bookkeeping to ``snap-<index>``."""
        meta = self.ledger.snapshot_meta(requested)
        index = meta['index']
        if any(i == index for i, _ in self.snapshots.list()):
            return index
        tmp = self.snapshots.new_tmp()
        try:
            self.server.executor.snapshot(os.path.join(tmp, 'state'))
            _write_json(os.path.join(tmp, 'meta.json'),
                        dict(meta, replica=self.name, created=time.time()))
            self.snapshots.commit(tmp, index)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return index

    def _start_snapshot(self, index: int) -> 'asyncio.Future[int]':
        """Run ``_snapshot_sync`` on the Executor's thread; ``close`` waits for it (a process exits with
        ``os._exit``: a snapshot cut short there would leave a ``tmp-*`` folder behind)."""
        t0 = time.monotonic()
        fut = self.loop.run_in_executor(self.server.pool, self._snapshot_sync, index)

        def took(_: Any) -> None:
            self.snapshot_seconds = time.monotonic() - t0
        fut.add_done_callback(took)
        self._snapshot_running = fut
        return fut

    async def _take_snapshot(self) -> None:
        self._snapshot_wanted = False
        try:
            index = await asyncio.shield(self._start_snapshot(self.ledger.applied_index))
        except Exception as e:
            self._snapshot_failures += 1
            if self._snapshot_failures in (1, 10) or self._snapshot_failures % 100 == 0:
                log.error('%s: Executor.snapshot() failed (%s: %s); the RAFT log keeps growing until it '
                          'succeeds. Override snapshot(path)/restore(path) for state that does not pickle.',
                          self.name, type(e).__name__, e)
            return
        self._snapshot_done(index)

    def _snapshot_done(self, index: int) -> None:
        self.ledger.snapshot_taken(index)
        snap = self.ledger.snapshot_index
        with self._records_lock:
            for i in [i for i in self._records if i <= snap]:
                del self._records[i]
        self.snapshots.prune(keep=1)
        limit = snap - int(self.options['trailing_logs'])
        if limit > 0:
            t = asyncio.ensure_future(asyncio.to_thread(self.bodies.gc, limit))
            self._background.add(t)
            t.add_done_callback(self._background.discard)

    async def _serve_snapshot(self, header: Dict[str, Any]) -> bytes:
        want = header.get('index')
        snaps = self.snapshots.list()
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
            path = self.snapshots.tar(index)
            with open(path, 'rb') as f:
                f.seek(offset)
                return os.path.getsize(path), f.read(self.SNAPSHOT_CHUNK)

        total, data = await asyncio.to_thread(chunk)
        return protocol.pack({'ok': True, 'index': index, 'total': total}, data)

    async def _install_from_peer(self, min_index: int) -> bool:
        """Fetch a peer's snapshot at index >= ``min_index`` and restore it; False if none has one."""
        for peer in self.peers:
            tmp = os.path.join(self.snapshots.root, f'incoming-{uuid.uuid4().hex[:8]}.tar')
            try:
                index, offset, total = None, 0, None
                with open(tmp, 'wb') as f:
                    while total is None or offset < total:
                        h, body = await self.bodies.call(
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
                got, path = await asyncio.to_thread(self.snapshots.unpack, tmp)
                await self.loop.run_in_executor(self.server.pool, self._restore_sync, path, True)
                self.installed_snapshots += 1
                self._snapshot_done(got)
                log.info('%s: installed the snapshot at index %d from %s', self.name, got, peer.name)
                return True
            except Exception as e:
                log.warning('%s: fetching a snapshot from %s failed: %s', self.name, peer.name, _short(e))
            finally:
                _unlink(tmp)
        return False

