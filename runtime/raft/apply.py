"""The applier: committed log entries run on the Executor's thread, in log order.

``Applier`` (a part of ``Consensus``, with its own state) takes the messages pysyncobj's thread
posts (``Apply``, ``Mark``, ``SnapshotDue``, ``Install``: :mod:`runtime.raft.decisions`), finds
each record's body (here, or from a peer, digest checked) and calls the ``@write`` endpoint
once per request id; a client's write waits on :meth:`Applier.expect` until its record is
applied here. What to do with each record is the :class:`~runtime.raft.decisions.ApplyLedger`'s
decision. Relies on ``Bodies`` (:mod:`runtime.raft.bodies`), ``Snapshots``
(:mod:`runtime.raft.snapshots`) and the worker's server (its Executor thread, endpoints and
status pipe).
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Sequence, Tuple

from runtime import protocol
from runtime.codec import decode_docs
from runtime.executor import call_endpoint
from runtime.raft.decisions import (Action, ApplyLedger, BodyStep, Install, Mark, SnapshotDue, Verdict, body_step,
                                    covered_reply, duplicate_reply, take_apply_batch)
from runtime.raft.payloads import _digest
from runtime.raft.records import Record

if TYPE_CHECKING:
    from runtime.applying import ApplyingMark
    from runtime.raft.bodies import Bodies
    from runtime.raft.durable import Trace
    from runtime.raft.settings import PeerAddress
    from runtime.raft.snapshots import Snapshots

log = logging.getLogger('orchestra.raft')

Reply = Tuple[Dict[str, Any], bytes]


class Applier:
    """Applies committed entries in log order (the loop thread; Executor calls on its thread).

    >>> applier = Applier('kv/rep-0', 0, peers, ledger, bodies, snapshots, server, trace, mark)   # doctest: +SKIP
    >>> applier.start(loop); reply = await applier.expect(rid)                              # doctest: +SKIP
    """

    def __init__(self, name: str, replica: int, peers: Sequence['PeerAddress'], ledger: ApplyLedger,
                 bodies: 'Bodies', snapshots: 'Snapshots', server: Any, trace: 'Trace', mark: 'ApplyingMark'):
        self.name, self.replica, self._peers = name, replica, tuple(peers)
        self._ledger, self._bodies, self._snapshots = ledger, bodies, snapshots
        self._server, self._trace, self._mark = server, trace, mark
        self._actions: Deque[Action] = collections.deque()   # posted by pysyncobj's thread, in order
        self._news = asyncio.Event()                          # set when ``_actions`` has news
        self._handoff: Deque[Action] = collections.deque()   # posted from pysyncobj's thread, not yet taken
        self._handoff_pending = False                         # a loop wake-up taking ``_handoff`` is scheduled
        self._waiters: Dict[str, 'asyncio.Future[Reply]'] = {}   # request id -> its reply once applied here
        self._snapshot_wanted = False   # pysyncobj compacted: snapshot after the current batch
        self._closing = False
        self._task: Optional[asyncio.Task] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.fetched = 0   # bodies fetched from peers

    # -- the node's side ------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task = asyncio.ensure_future(self._run())

    def post(self, action: Action) -> None:
        """A message for the applier, on the loop's thread (from pysyncobj's: :meth:`post_from_thread`)."""
        self._actions.append(action)
        self._news.set()

    def post_from_thread(self, action: Action) -> None:
        """A message from pysyncobj's thread. One loop wake-up (``call_soon_threadsafe``) hands
        over every message posted until the loop runs it, not one wake-up per committed entry."""
        self._handoff.append(action)
        if not self._handoff_pending:
            self._handoff_pending = True
            try:
                assert self._loop is not None, 'Applier.start() first'
                self._loop.call_soon_threadsafe(self._take_handoff)
            except RuntimeError:
                pass   # loop closed: shutting down

    def _take_handoff(self) -> None:
        """On the loop: the messages posted from the thread so far, in order. The flag is cleared
        first, so a message posted meanwhile is taken here or by the wake-up it schedules."""
        self._handoff_pending = False
        handoff = self._handoff
        while handoff:
            self.post(handoff.popleft())

    def waiter(self, rid: str) -> 'Optional[asyncio.Future[Reply]]':
        """The future of a write of ``rid`` already waiting here, if any."""
        return self._waiters.get(rid)

    def expect(self, rid: str) -> 'asyncio.Future[Reply]':
        """A future that gets ``rid``'s reply once its record is applied here (or covered by a
        snapshot): that is when the write is acknowledged. :meth:`forget` it when done waiting."""
        assert self._loop is not None, 'Applier.start() first'
        fut = self._loop.create_future()
        self._waiters[rid] = fut
        return fut

    def forget(self, rid: str, fut: 'asyncio.Future[Reply]') -> None:
        if self._waiters.get(rid) is fut:
            del self._waiters[rid]

    async def close(self, why: BaseException) -> None:
        """Stop applying; every write still waiting fails with ``why``."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(why)

    async def _run(self) -> None:
        while True:
            await self._news.wait()
            self._news.clear()
            while self._actions:
                try:
                    await self._apply_next()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception('%s: applying the RAFT log failed; retrying in 1 s', self.name)
                    await asyncio.sleep(1.0)
            if self._ledger.snapshot_due(self._snapshot_wanted, self._closing):
                self._snapshot_wanted = False
                await self._snapshots.take()

    async def _apply_next(self) -> None:
        batch = take_apply_batch(self._actions)
        if batch:
            try:
                await self._apply_entries([(a.index, a.records) for a in batch])
            except BaseException:
                self._actions.extendleft(reversed(batch))   # not applied: try again, in order
                raise
            return
        head = self._actions[0]
        if isinstance(head, Mark):       # entries without records (no-ops) up to here are applied
            self._ledger.applied_through(head.index)
        elif isinstance(head, SnapshotDue):
            self._snapshot_wanted = True
        elif isinstance(head, Install):
            await self._install(head.snapshot_index, head.records, head.last)
        self._actions.popleft()

    async def _apply_entries(self, entries: List[Tuple[int, List[Record]]]) -> None:
        covered, items = self._ledger.split(entries)
        for rec in covered:   # covered by a snapshot already: answer anyone waiting
            self._covered(rec)
        prepared: List[Tuple[int, Record, Optional[bytes]]] = []
        for i, rec in items:
            if i <= self._ledger.applied_index:   # a snapshot installed while we fetched a body
                self._covered(rec)
                continue
            if rec.is_barrier:
                prepared.append((i, rec, None))
                continue
            payload = await self._payload_for(rec, i)
            if payload is None:   # a peer's snapshot covering this entry was installed instead
                for _, r, _ in prepared:
                    self._covered(r)
                prepared = []
                self._covered(rec)
                continue
            prepared.append((i, rec, payload))
        last = max(i for i, _ in entries)
        if prepared:
            assert self._loop is not None
            results = await self._on_executor_thread(self._apply_sync, prepared, last)
            for rid, reply in results:
                fut = self._waiters.get(rid)
                if fut is not None and not fut.done():
                    fut.set_result(reply if reply is not None else ({'ok': True}, b''))
        self._ledger.applied_through(last)

    def _on_executor_thread(self, fn: Any, *args: Any) -> 'asyncio.Future[Any]':
        """``fn(*args)`` on the Executor's thread: through the worker's ``ExecutorThread.run``
        (one ``call_soon_threadsafe`` back, no ``concurrent.futures`` chain: a few % of a replica's
        CPU under single-doc writes, py-spy) when the pool has it, else ``run_in_executor``."""
        pool = self._server.pool
        run = getattr(pool, 'run', None)
        if run is not None:
            return run(fn, *args)
        assert self._loop is not None
        return self._loop.run_in_executor(pool, fn, *args)

    def _covered(self, rec: Record) -> None:
        """A record applied through a snapshot rather than here: answer a local waiter."""
        fut = self._waiters.get(rec.rid)
        if fut is not None and not fut.done():
            fut.set_result(covered_reply((rec.body or self._bodies.get(rec.rid)) if not rec.is_barrier else None))

    def _apply_sync(self, prepared: List[Tuple[int, Record, Optional[bytes]]], last: int) -> List[Tuple[str, Any]]:
        """On the Executor's thread: run each record's endpoint, in log order.

        Before each call the entry is marked (:class:`runtime.applying.ApplyingMark`, a file the
        owner reads when the replica dies; cleared after the batch): a replica that dies in the
        call is named with the entry (runtime.supervision). Entries in the skip list are no-ops.
        """
        out: List[Tuple[str, Any]] = []
        marked = False
        for index, rec, payload in prepared:
            rid, endpoint = rec.rid, rec.endpoint
            verdict = self._ledger.verdict(index, rec)
            if verdict is Verdict.BARRIER:
                out.append((rid, None))
                continue
            if verdict is Verdict.DUPLICATE:   # a retried request committed twice: applied once
                out.append((rid, duplicate_reply(payload)))
                continue
            if verdict is Verdict.SKIPPED:
                out.append((rid, self._skip(index, rec)))
                continue
            self._mark.set(index, endpoint)
            marked = True
            reply = None
            try:
                ep = self._server.endpoints.lookup(endpoint)
                params = json.loads(rec.parameters) if rec.parameters else {}
                if rid in self._waiters:   # a client waits here: decode, call, encode its reply
                    reply = self._server.run_endpoint(ep, params, payload)
                else:                      # nobody to answer: the call alone (its result is dropped)
                    call_endpoint(ep, decode_docs(payload, ep.input_type), params)
            except Exception as e:
                log.error('%s: applying %s (log index %d) failed: %s: %s', self.name, endpoint, index,
                          type(e).__name__, e)
                reply = (protocol.error_header(e, self.name, traceback.format_exc()), b'')
            self._bodies.applied(rid, index)
            self._trace('applied', rid, index)
            out.append((rid, reply))
        if marked:
            self._mark.clear()
        self._ledger.executed(last)
        return out

    def _skip(self, index: int, rec: Record) -> Tuple[Dict[str, Any], bytes]:
        """Pass over a record of a skipped entry (every replica does): the reply says so."""
        self._bodies.applied(rec.rid, index)
        log.warning('%s: log entry %d (%s, request %s) is in the skip list: not applied', self.name, index,
                    rec.endpoint, rec.rid)
        err = RuntimeError(f'log entry {index} ({rec.endpoint}) was skipped by the operator '
                           '(Deployment.skip_entry): this write was not applied on any replica')
        return protocol.error_header(err, self.name), b''

    async def _payload_for(self, rec: Record, index: int) -> Optional[bytes]:
        """The record's body: ours, a peer's (digest checked), or None once a covering snapshot is installed."""
        rid, digest = rec.rid, rec.digest
        if rec.body is not None:   # BodyStep.INLINE, without looking in the store
            return rec.body
        waited = False
        while True:   # the decision is runtime.raft.decisions.body_step; the I/O is here
            local = await self._local_body(rid)
            step = body_step(rec, None if local is None else local[1], self.replica, waited)
            if step is BodyStep.LOCAL:
                return local[0] if local is not None else None
            if step is BodyStep.REPLACE:   # same request id, other body (a misbehaving client)
                log.warning('%s: the local body of request %s does not match the committed digest; '
                            'fetching it from a peer', self.name, rid)
                await asyncio.to_thread(self._bodies.discard, rid)
                break
            if step is BodyStep.WAIT_FOR_ORIGIN:
                waited = True
                await self._bodies.wait_for_arrival(rid, 0.05)
                continue
            break   # FETCH
        t0 = time.monotonic()
        warned = False
        while True:
            for peer in sorted(self._peers, key=lambda p: p.replica != rec.origin):   # the origin first
                try:
                    h, body = await self._bodies.call(peer.name, {'op': 'get_payload', 'rid': rid}, timeout=30.0)
                except Exception:
                    continue
                if h.get('ok') and _digest(body) == digest:
                    self.fetched += 1
                    await self._bodies.store(rid, body, digest)
                    return body
            # no peer has it any more (compacted): take a peer's snapshot that covers this entry
            if await self._snapshots.install_from_peer(index):
                return None
            if not warned and time.monotonic() - t0 > 5.0:
                warned = True
                log.warning('%s: the payload of request %s (log index %d) is on no reachable peer yet; '
                            'retrying', self.name, rid, index)
            await asyncio.sleep(0.2)
            local = self._bodies.cached_with_digest(rid)   # a late push may have brought it meanwhile
            if local is not None and local[1] == digest:
                return local[0]

    async def _local_body(self, rid: str) -> Optional[Tuple[bytes, str]]:
        """(body, its digest) from our store, or None: from memory with the digest it was stored
        under (hashed once), else read from the workspace and hashed."""
        hit = self._bodies.cached_with_digest(rid)
        if hit is not None:
            return hit
        data = await asyncio.to_thread(self._bodies.get, rid)
        return None if data is None else (data, _digest(data))

    async def _install(self, snapshot_index: int, records: List[Tuple[int, List[Record]]], last: int) -> None:
        """A compaction dump: state = a snapshot >= ``snapshot_index`` + ``records`` up to ``last``."""
        t0 = time.monotonic()
        while self._ledger.needs_snapshot_from_peer(snapshot_index):
            if await self._snapshots.install_from_peer(snapshot_index):
                break
            if time.monotonic() - t0 > 5.0:
                log.warning('%s: waiting for a peer snapshot at index >= %d', self.name, snapshot_index)
                t0 = time.monotonic()
            await asyncio.sleep(0.2)
        todo = [(i, r) for i, r in records if i > self._ledger.applied_index]
        if todo:
            await self._apply_entries(todo)
        self._ledger.applied_through(last)
