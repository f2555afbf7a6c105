"""The gRPC side of one peer: ``_Peer`` (its addresses and channel) and ``_Pusher`` (payload pushes).

``_Pusher`` batches the bodies pushed to one peer: one ``put_payloads`` call in flight,
bodies queued meanwhile go together in the next. It is given what it needs (the loop, a
function making ``Control`` calls, one starting tasks) by :class:`runtime.raft.bodies.Bodies`.
Relies on :mod:`runtime.protocol` and grpc.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Awaitable, Callable, Deque, Dict, List, NamedTuple, Optional, Tuple

from runtime import protocol
from runtime.raft.common import Outcome, _short
from runtime.raft.records import Record


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
            self._channel = grpc.aio.insecure_channel(self.grpc_address, options=protocol.CHANNEL_OPTIONS)
            self._stub = self._channel.unary_unary(protocol.CONTROL)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None


class _PushResult(NamedTuple):
    """What became of one body pushed to a peer."""

    stored: bool                 # the peer holds the body
    why: str                     # why not ('' when stored)
    outcome: Optional[Outcome]   # the peer's proposal of the record sent along; None: none sent or no answer


class _PushItem(NamedTuple):
    """One body waiting in a ``_Pusher``'s queue."""

    rid: str
    digest: str
    body: bytes
    deadline: float                       # loop time
    future: 'asyncio.Future[_PushResult]'
    record: Optional[Record]              # sent along for the peer to propose when it leads


class _Pusher:
    """Payload pushes to one peer: one call in flight; bodies queued meanwhile go together
    in the next call (``put_payloads``), so a busy replica makes few, larger calls."""

    MAX_BYTES = 8 * 1024 * 1024

    def __init__(self, peer: _Peer, call: Callable[..., Awaitable[Tuple[Dict[str, Any], bytes]]],
                 loop: asyncio.AbstractEventLoop, spawn: Callable[[Any], asyncio.Task]):
        self.peer = peer
        self._call, self._loop, self._spawn = call, loop, spawn   # call(peer name, header, body, timeout)
        self._queue: Deque[_PushItem] = collections.deque()
        self._task: Optional[asyncio.Task] = None
        self.calls = 0

    def push(self, rid: str, digest: str, body: bytes, deadline: float,
             record: Optional[Record] = None) -> 'asyncio.Future[_PushResult]':
        """Queue a body for the peer; the future gets what became of it."""
        fut = self._loop.create_future()
        self._queue.append(_PushItem(rid, digest, body, deadline, fut, record))
        if self._task is None or self._task.done():
            self._task = self._spawn(self._run())
        return fut

    async def _run(self) -> None:
        while self._queue:
            batch: List[_PushItem] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].body) <= self.MAX_BYTES):
                item = self._queue.popleft()
                if item.future.done():
                    continue
                batch.append(item)
                size += len(item.body)
            if not batch:
                continue
            left = min(it.deadline for it in batch) - self._loop.time()
            try:
                if left <= 0:
                    raise TimeoutError('deadline passed')
                header: Dict[str, Any] = {'op': 'put_payloads',
                                          'items': [[it.rid, it.digest, len(it.body)] for it in batch]}
                if any(it.record is not None for it in batch):   # the peer leads: it proposes these records
                    header['records'] = [None if it.record is None else list(it.record.to_wire()) for it in batch]
                h, _ = await self._call(self.peer.name, header, b''.join(it.body for it in batch),
                                               min(max(left, 0.1), 30.0))
                self.calls += 1
                if h.get('ok'):
                    errors = h.get('errors') or [None] * len(batch)
                    proposed = h.get('outcomes') or [None] * len(batch)
                    outcomes = [_PushResult(e is None, '' if e is None else f'{self.peer.name}: {e}',
                                            None if p is None else Outcome.of(p))
                                for e, p in zip(errors, proposed)]
                else:
                    why = f'{self.peer.name}: {h.get("error", {}).get("message")}'
                    outcomes = [_PushResult(False, why, None)] * len(batch)
            except asyncio.CancelledError:
                for it in batch:
                    if not it.future.done():
                        it.future.set_result(_PushResult(False, f'{self.peer.name}: cancelled', None))
                raise
            except Exception as e:
                outcomes = [_PushResult(False, f'{self.peer.name}: {_short(e)}', None)] * len(batch)
            for it, outcome in zip(batch, outcomes):
                if not it.future.done():
                    it.future.set_result(outcome)
