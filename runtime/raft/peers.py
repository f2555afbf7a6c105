"""Replica-to-replica messages over gRPC (``Control``), authenticated by the cluster token.

``_Peer`` is another replica of the shard; ``_Pusher`` batches payload pushes to one peer;
``_PeerMessages`` (a part of ``Consensus``) answers peers' ``control`` calls (``put_payloads``,
``get_payload``, ``get_snapshot``, ``status``), stores payloads here and on a majority, and
calls peers. Relies on the ``Consensus`` attributes set in its ``__init__`` (``payloads``,
``peers``, ``loop``, ``node``, ``token``, ...), :mod:`runtime.protocol` and grpc.
"""
from __future__ import annotations

import asyncio
import collections
import hmac
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple

from runtime import protocol
from runtime.raft.common import RaftNotReady
from runtime.raft.payloads import _check_rid, _digest
from runtime.raft.proposer import _REFUSED

if TYPE_CHECKING:
    from runtime.raft.node import Consensus


class _Peer:
    """Another replica of the shard: its RAFT address and its gRPC address."""

    def __init__(self, replica: int, name: str, raft: str, grpc: str):
        self.replica, self.name, self.raft, self.grpc_address = replica, name, raft, grpc
        self._channel = None
        self._stub = None

    def stub(self):
        if self._stub is None:
            import grpc
            # reconnect fast to a restarted peer (gRPC's default backoff grows to 2 minutes)
            options = protocol.GRPC_OPTIONS + [('grpc.initial_reconnect_backoff_ms', 100),
                                               ('grpc.min_reconnect_backoff_ms', 100),
                                               ('grpc.max_reconnect_backoff_ms', 1000)]
            self._channel = grpc.aio.insecure_channel(self.grpc_address, options=options)
            self._stub = self._channel.unary_unary(protocol.CONTROL)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None


class _Pusher:
    """Payload pushes to one peer: one call in flight; bodies queued meanwhile go together
    in the next call (``put_payloads``), so a busy replica makes few, larger calls."""

    MAX_BYTES = 8 * 1024 * 1024

    def __init__(self, consensus: 'Consensus', peer: _Peer):
        self.c, self.peer = consensus, peer
        self._queue: Deque[Tuple[str, str, bytes, float, asyncio.Future, Optional[tuple]]] = collections.deque()
        self._task: Optional[asyncio.Task] = None
        self.calls = 0

    def push(self, rid: str, digest: str, body: bytes, deadline: float,
             record: Optional[tuple] = None) -> 'asyncio.Future[Tuple[bool, str, Optional[int]]]':
        """-> (stored, why not, outcome of the peer's proposal of ``record`` or None)."""
        fut = self.c.loop.create_future()
        self._queue.append((rid, digest, body, deadline, fut, record))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
            self.c._background.add(self._task)
            self._task.add_done_callback(self.c._background.discard)
        return fut

    async def _run(self) -> None:
        while self._queue:
            batch, size = [], 0
            while self._queue and (not batch or size + len(self._queue[0][2]) <= self.MAX_BYTES):
                item = self._queue.popleft()
                if item[4].done():
                    continue
                batch.append(item)
                size += len(item[2])
            if not batch:
                continue
            left = min(it[3] for it in batch) - self.c.loop.time()
            try:
                if left <= 0:
                    raise TimeoutError('deadline passed')
                header: Dict[str, Any] = {'op': 'put_payloads', 'items': [[it[0], it[1], len(it[2])] for it in batch]}
                if any(it[5] is not None for it in batch):   # the peer leads: it proposes these records
                    header['records'] = [None if it[5] is None else list(it[5]) for it in batch]
                h, _ = await self.c._call_peer(self.peer, header, b''.join(it[2] for it in batch),
                                               min(max(left, 0.1), 30.0))
                self.calls += 1
                if h.get('ok'):
                    errors = h.get('errors') or [None] * len(batch)
                    proposed = h.get('outcomes') or [None] * len(batch)
                    outcomes = [(e is None, '' if e is None else f'{self.peer.name}: {e}', p)
                                for e, p in zip(errors, proposed)]
                else:
                    why = f'{self.peer.name}: {h.get("error", {}).get("message")}'
                    outcomes = [(False, why, None)] * len(batch)
            except asyncio.CancelledError:
                for it in batch:
                    if not it[4].done():
                        it[4].set_result((False, f'{self.peer.name}: cancelled', None))
                raise
            except Exception as e:
                outcomes = [(False, f'{self.peer.name}: {_short(e)}', None)] * len(batch)
            for it, outcome in zip(batch, outcomes):
                if not it[4].done():
                    it[4].set_result(outcome)


class _PeerMessages:
    """``Consensus``'s side of replica-to-replica calls: answering peers, pushing payloads."""

    async def control(self, header: Dict[str, Any], body: bytes) -> bytes:
        """Requests from peer replicas (payloads, snapshots); authenticated by the cluster token."""
        if not self.token or not hmac.compare_digest(str(header.get('token', '')), self.token):
            return protocol.pack({'ok': False, 'error': {'type': 'PermissionError', 'where': self.name,
                                                         'message': 'bad or missing RAFT cluster token'}})
        op = header.get('op')
        try:
            if op == 'put_payloads':   # a batch from one peer: [[rid, digest, size], ...] + the bodies
                items = header.get('items') or []
                view, offset, stores = memoryview(body), 0, []
                for rid, digest, size in items:
                    _check_rid(rid)
                    if not isinstance(size, int) or size < 0 or offset + size > len(view):
                        raise ValueError('put_payloads: the sizes do not match the body')
                    # the sender hashed the body it sends (the transport is reliable and authenticated):
                    # kept with the body, so nobody hashes it again
                    stores.append(self._store(rid, bytes(view[offset:offset + size]), str(digest)))
                    offset += size
                    arrived = self._arrivals.get(rid)
                    if arrived is not None:
                        arrived.set()
                results = await asyncio.gather(*stores, return_exceptions=True)
                errors = [None if not isinstance(r, BaseException) else _short(r) for r in results]
                outcomes = await self._propose_for_peer(items, header.get('records'), errors)
                return protocol.pack({'ok': True, 'errors': errors if any(errors) else None, 'outcomes': outcomes})
            if op == 'put_payload':
                rid = _check_rid(header.get('rid'))
                if _digest(body) != header.get('digest'):
                    raise ValueError(f'payload {rid} does not match its digest')
                await self._store(rid, bytes(body), header['digest'])
                arrived = self._arrivals.get(rid)
                if arrived is not None:
                    arrived.set()
                return protocol.pack({'ok': True})
            if op == 'get_payload':
                rid = _check_rid(header.get('rid'))
                data = self.payloads.cached(rid)
                if data is None:
                    data = await asyncio.to_thread(self.payloads.get, rid)
                if data is None:
                    return protocol.pack({'ok': False, 'missing': True})
                data = bytes(data)
                return protocol.pack({'ok': True}, data)
            if op == 'get_snapshot':
                return await self._serve_snapshot(header)
            if op == 'status':
                return protocol.pack({'ok': True, 'status': self.status()})
            raise ValueError(f"unknown RAFT control op {op!r}; allowed: 'put_payloads', 'get_payload', "
                             "'get_snapshot', 'status'")
        except Exception as e:
            return protocol.pack(protocol.error_header(e, self.name))

    async def _propose_for_peer(self, items: List[Any], records: Optional[List[Any]],
                                errors: List[Optional[str]]) -> Optional[List[Optional[int]]]:
        """A peer's payloads came with their records: if we lead, propose those stored here
        (payload on the peer and here: a majority) -> pysyncobj's outcome per record."""
        if not records:
            return None
        outcomes: List[Optional[int]] = [None] * len(items)
        node = self.node
        leading = node is not None and self._proposer is not None and not self._closing and node._isLeader()
        proposals: Dict[int, asyncio.Future] = {}
        for k, rec in enumerate(records[:len(items)]):
            if rec is None:
                continue
            if errors[k] is not None or not isinstance(rec, list) or len(rec) != 6 or rec[0] != items[k][0]:
                outcomes[k] = _REFUSED
            elif not leading:
                outcomes[k] = 4   # not leader: the peer proposes it itself
            else:
                proposals[k] = self._proposer.submit(tuple(rec))
        if proposals:
            for k, err in zip(proposals, await asyncio.gather(*proposals.values())):
                outcomes[k] = err
        return outcomes

    def _leader_peer(self) -> Optional[_Peer]:
        """The peer that leads now, as our node sees it (None: we lead, or no leader)."""
        node = self.node
        try:
            addr = getattr(node._getLeader(), 'address', None) if node is not None else None
        except Exception:
            return None
        return next((p for p in self.peers if p.raft == addr), None)

    async def _majority(self, pushes: Dict[str, asyncio.Task], deadline: float) -> None:
        """Return once a majority of replicas (us included) holds the payload ``pushes`` carry."""
        need = (len(self.peers) + 1) // 2 + 1 - 1
        acks, errors, pending = 0, [], set(pushes.values())
        if need <= 0:
            return
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - self.loop.time()),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for t in done:
                ok, why, _ = t.result()
                if ok:
                    acks += 1
                else:
                    errors.append(why)
            if acks >= need:
                return
        raise RaftNotReady(f'{self.name}: could not store the request on a majority of replicas '
                           f'({acks + 1} of {len(self.peers) + 1}): {"; ".join(errors) or "timed out"}')

    async def _push(self, peer: _Peer, rid: str, digest: str, body: bytes, deadline: float,
                    record: Optional[tuple] = None) -> Tuple[bool, str, Optional[int]]:
        """Store a payload on ``peer`` (retried) -> (stored, why not, outcome of the peer's proposal of
        ``record``: asked on the first try only, None if that try failed)."""
        why, outcome = '', None
        for attempt in range(5):
            if deadline - self.loop.time() <= 0:
                break
            ok, why, out = await self._pushers[peer.name].push(rid, digest, body, deadline,
                                                                record if attempt == 0 else None)
            if attempt == 0:
                outcome = out
            if ok:
                return True, '', outcome
            await asyncio.sleep(0.05 * (attempt + 1))
        return False, why, outcome

    async def _store(self, rid: str, data: bytes, digest: str) -> None:
        """Keep a body in memory and return once the writer thread has put it in the workspace."""
        fut = self._disk.get(rid)
        if fut is None:
            fut = self.loop.create_future()
            self._disk[rid] = fut
            if not self.payloads.put_nowait(rid, data, digest):   # stored already
                del self._disk[rid]
                fut.set_result(None)
        await asyncio.shield(fut)

    def _on_written(self, rids: List[str], error: Optional[BaseException]) -> None:
        """The writer thread stored a batch of bodies (one wake-up of the loop per batch)."""
        try:
            self.loop.call_soon_threadsafe(self._written, rids, error)
        except RuntimeError:
            pass   # loop closed: shutting down

    def _written(self, rids: List[str], error: Optional[BaseException]) -> None:
        for rid in rids:
            fut = self._disk.pop(rid, None)
            if fut is not None and not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(OSError(f'{self.name}: cannot store request {rid}: {error}'))

    async def _call_peer(self, peer: _Peer, header: Dict[str, Any], body: bytes = b'',
                         timeout: float = 30.0) -> Tuple[Dict[str, Any], bytes]:
        header = dict(header, token=self.token, sender=self.name)
        reply = await peer.stub()(protocol.pack(header, body), timeout=timeout)
        h, b = protocol.unpack(reply)
        return h, bytes(b)


def _short(e: BaseException) -> str:
    details = getattr(e, 'details', None)
    if callable(details):
        try:
            return f'{e.code().name}: {details()}'
        except Exception:
            pass
    return f'{type(e).__name__}: {e}'
