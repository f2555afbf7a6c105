"""The request bodies of one replica: ``Bodies`` -- its store, their arrival from peers, pushes to peers.

A part of ``Consensus`` with its own state: the :class:`~runtime.raft.payloads.PayloadStore`
(bodies on disk, written by its writer thread), the futures of bodies being written, the
events of bodies awaited from their origin, and one :class:`~runtime.raft.pushers._Pusher`
and gRPC channel per peer. Other parts call its methods; none reads its attributes.
The decision of how many peers must hold a body is :func:`runtime.raft.decisions.peer_acks_needed`.
Relies on :mod:`runtime.raft.pushers`, :mod:`runtime.raft.payloads` and :mod:`runtime.protocol`.
"""
from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from runtime import protocol
from runtime.raft.common import RaftNotReady
from runtime.raft.decisions import peer_acks_needed
from runtime.raft.payloads import PayloadStore
from runtime.raft.pushers import _Peer, _Pusher, _PushResult
from runtime.raft.records import Record
from runtime.raft.settings import PeerAddress
from runtime.secrets import call_metadata


class Bodies:
    """One replica's request bodies and its gRPC side towards the shard's other replicas.

    >>> bodies = Bodies('kv/rep-0', secret, peers, '/ws/.raft/shard-0/rep-0/payloads')   # doctest: +SKIP
    >>> bodies.start(asyncio.get_running_loop())                                          # doctest: +SKIP
    >>> await bodies.store(rid, body, digest)   # on disk here                            # doctest: +SKIP
    """

    def __init__(self, name: str, secret: str, peers: Sequence[PeerAddress], root: str, durable: bool = False,
                 trace: Any = None):
        self.name = name
        self._secret = secret
        self._store = PayloadStore(root, on_written=self._on_written, durable=durable, trace=trace)
        self._peers: Dict[str, _Peer] = {p.name: _Peer(p.replica, p.name, p.raft, p.grpc) for p in peers}
        self._pushers: Dict[str, _Pusher] = {}
        self._writing: Dict[str, asyncio.Future] = {}    # request id -> done once the writer thread stored it
        self._awaited: Dict[str, asyncio.Event] = {}     # request id -> set when its body arrives from a peer
        self._tasks: Set[asyncio.Task] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the replica's event loop (the writer thread reports to it)."""
        self._loop = loop
        self._pushers = {n: _Pusher(p, self.call, loop, self._spawn) for n, p in self._peers.items()}

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for p in self._peers.values():
            try:
                await p.close()
            except Exception:
                pass
        await asyncio.to_thread(self._store.close)

    # -- the store --------------------------------------------------------------------------------
    async def store(self, rid: str, data: bytes, digest: str) -> None:
        """Keep a body in memory and return once the writer thread has put it in the workspace."""
        assert self._loop is not None, 'Bodies.start() first'
        fut = self._writing.get(rid)
        if fut is None:
            fut = self._loop.create_future()
            self._writing[rid] = fut
            if not self._store.put_nowait(rid, data, digest):   # stored already
                del self._writing[rid]
                fut.set_result(None)
        await asyncio.shield(fut)

    def _on_written(self, rids: List[str], error: Optional[BaseException]) -> None:
        """The writer thread stored a batch of bodies (one wake-up of the loop per batch)."""
        try:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._written, rids, error)
        except RuntimeError:
            pass   # loop closed: shutting down

    def _written(self, rids: List[str], error: Optional[BaseException]) -> None:
        for rid in rids:
            fut = self._writing.pop(rid, None)
            if fut is not None and not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(OSError(f'{self.name}: cannot store request {rid}: {error}'))

    def cached(self, rid: str) -> Optional[bytes]:
        return self._store.cached(rid)

    def cached_with_digest(self, rid: str) -> Optional[Tuple[bytes, str]]:
        return self._store.cached_with_digest(rid)

    def get(self, rid: str) -> Optional[bytes]:
        """The body from memory or the workspace (a file read: call it off the loop)."""
        return self._store.get(rid)

    def applied(self, rid: str, index: int) -> None:
        self._store.applied(rid, index)

    def discard(self, rid: str) -> None:
        self._store.discard(rid)

    def gc(self, upto_index: int) -> int:
        return self._store.gc(upto_index)

    def __len__(self) -> int:
        return len(self._store)

    # -- bodies awaited from their origin -----------------------------------------------------------
    def arrived(self, rid: str) -> None:
        """A peer's push brought ``rid``'s body: wake the applier if it waits for it."""
        event = self._awaited.get(rid)
        if event is not None:
            event.set()

    async def wait_for_arrival(self, rid: str, timeout: float) -> None:
        """Wait up to ``timeout`` s for ``rid``'s body to arrive (returns at once if it is here)."""
        event = self._awaited.setdefault(rid, asyncio.Event())
        try:
            if self._store.cached(rid) is None:
                await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._awaited.pop(rid, None)

    # -- peers ----------------------------------------------------------------------------------------
    async def call(self, peer: str, header: Dict[str, Any], body: bytes = b'',
                   timeout: float = 30.0) -> Tuple[Dict[str, Any], bytes]:
        """One ``Control`` call to peer ``peer`` (by name), with the Deployment's secret."""
        header = dict(header, sender=self.name)
        reply = await self._peers[peer].stub()(protocol.pack(header, body), timeout=timeout,
                                               metadata=call_metadata(self._secret))
        h, b = protocol.unpack(reply)
        return h, bytes(b)

    async def push(self, peer: str, rid: str, digest: str, body: bytes, deadline: float,
                   record: Optional[Record] = None) -> _PushResult:
        """Store a body on ``peer`` (retried); the outcome of the peer's proposal of ``record``
        is asked on the first try only (None if that try failed)."""
        assert self._loop is not None, 'Bodies.start() first'
        why: str = ''
        outcome = None
        for attempt in range(5):
            if deadline - self._loop.time() <= 0:
                break
            pushed = await self._pushers[peer].push(rid, digest, body, deadline, record if attempt == 0 else None)
            if attempt == 0:
                outcome = pushed.outcome
            if pushed.stored:
                return _PushResult(True, '', outcome)
            why = pushed.why
            await asyncio.sleep(0.05 * (attempt + 1))
        return _PushResult(False, why, outcome)

    async def majority(self, pushes: Dict[str, 'asyncio.Future[_PushResult]'], deadline: float) -> None:
        """Return once a majority of replicas (us included) holds the body ``pushes`` carry;
        raises ``RaftNotReady`` saying why not by ``deadline`` (loop time)."""
        assert self._loop is not None, 'Bodies.start() first'
        need = peer_acks_needed(len(self._peers))
        acks, errors, pending = 0, [], set(pushes.values())
        if need <= 0:
            return
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - self._loop.time()),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for t in done:
                pushed: _PushResult = t.result()
                if pushed.stored:
                    acks += 1
                else:
                    errors.append(pushed.why)
            if acks >= need:
                return
        raise RaftNotReady(f'{self.name}: could not store the request on a majority of replicas '
                           f'({acks + 1} of {len(self._peers) + 1}): {"; ".join(errors) or "timed out"}')

    def _spawn(self, coro: Any) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t
