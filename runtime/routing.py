"""Replica choice (idle first), shard polling, and the reduce of shard results.

**Idle first.** A :class:`ReplicaSet` keeps at most ``max_in_flight`` requests
in flight per replica and holds the rest in its own FIFO queue. Each request
goes to the replica with the fewest in flight, ties round robin. A slow
replica therefore never builds a backlog and gets fewer requests than its
peers. A replica whose connection fails is marked down, probed in the
background, and the request is retried on another replica.

**Polling.** :class:`PollingPolicy` says, per endpoint, whether one shard
(``ANY``) or every shard (``ALL``) gets a request. Precedence: the endpoint's
own key, then ``'*'``, then a plain string, then the defaults (``/search``
ALL, every other endpoint ANY). Unlike Jina, a plain ``polling='ALL'``
covers every endpoint, ``/index`` included.

**Reduce.** :func:`reduce_docs` merges the shards' DocLists by doc id: for
single values the lowest shard's (non-None) value wins; lists and nested
DocLists are concatenated in shard order.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import grpc

from runtime import protocol

log = logging.getLogger('orchestra.routing')

POLLING_MODES = ('ANY', 'ALL')
DEFAULT_POLLING = {'/search': 'ALL'}


class PollingPolicy:
    """Which shards get a request to an endpoint.

    >>> PollingPolicy({'/custom': 'ALL', '*': 'ANY'}).mode('/custom')
    'ALL'
    >>> PollingPolicy(None).mode('/search'), PollingPolicy('ALL').mode('/index')
    ('ALL', 'ALL')
    """

    def __init__(self, polling: Union[str, Dict[str, str], None] = None):
        self.plain: Optional[str] = None
        self.table: Dict[str, str] = {}
        if polling is None:
            pass
        elif isinstance(polling, str):
            self.plain = self._check(polling, 'polling')
        elif isinstance(polling, dict):
            for endpoint, mode in polling.items():
                if not isinstance(endpoint, str):
                    raise ValueError(f'polling keys are endpoint strings or "*", got {endpoint!r}')
                self.table[endpoint] = self._check(mode, f'polling[{endpoint!r}]')
        else:
            raise ValueError(f"polling must be 'ANY', 'ALL' or a dict of endpoint -> mode, got {polling!r}")

    @staticmethod
    def _check(mode: Any, where: str) -> str:
        if isinstance(mode, str) and mode.upper() in POLLING_MODES:
            return mode.upper()
        raise ValueError(f"{where}={mode!r} is not a polling mode; allowed: 'ANY', 'ALL'")

    def mode(self, endpoint: str) -> str:
        if endpoint in self.table:
            return self.table[endpoint]
        if '*' in self.table:
            return self.table['*']
        if self.plain is not None:
            return self.plain
        return DEFAULT_POLLING.get(endpoint, 'ANY')

    def to_config(self) -> Union[str, Dict[str, str], None]:
        if self.table:
            return dict(self.table)
        return self.plain


class NoReplicaAvailable(ConnectionError):
    """Every replica of a shard is unreachable."""


class Replica:
    """A connection to one replica server."""

    def __init__(self, address: str, name: str):
        self.address = address
        self.name = name
        self.in_flight = 0
        self.sent = 0
        self.healthy = True
        self.draining = False
        self.channel = grpc.aio.insecure_channel(address, options=protocol.GRPC_OPTIONS)
        self.call = self.channel.unary_unary(protocol.CALL)
        self.info = self.channel.unary_unary(protocol.INFO)

    async def close(self) -> None:
        await self.channel.close()


_CONNECTION_LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)


class ReplicaSet:
    """The replicas of one shard, routed idle first; see the module docstring."""

    def __init__(self, addresses: Sequence[str], name: str = 'shard', max_in_flight: int = 4,
                 wait_for_replica: float = 5.0):
        if max_in_flight < 1:
            raise ValueError(f'max_in_flight must be >= 1, got {max_in_flight}')
        self.name = name
        self.max_in_flight = max_in_flight
        self.wait_for_replica = wait_for_replica
        self.replicas: List[Replica] = []
        self._rr = itertools.count()
        self._waiters: collections.deque = collections.deque()
        self._probes: Dict[str, asyncio.Task] = {}
        self.update(addresses)

    # -- membership ----------------------------------------------------------------
    def update(self, addresses: Sequence[str]) -> None:
        """Serve from these addresses now: new ones join, missing ones drain and close."""
        current = {r.address: r for r in self.replicas if not r.draining}
        keep = []
        for i, addr in enumerate(addresses):
            keep.append(current.pop(addr, None) or Replica(addr, f'{self.name}/rep-{i}'))
        for gone in current.values():
            gone.draining = True
            asyncio.ensure_future(self._close_when_idle(gone))
        self.replicas = keep
        self._dispatch()

    async def _close_when_idle(self, r: Replica) -> None:
        while r.in_flight:
            await asyncio.sleep(0.05)
        await r.close()

    async def close(self) -> None:
        for t in self._probes.values():
            t.cancel()
        for r in self.replicas:
            await r.close()

    # -- idle-first choice ---------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    def _pick(self, exclude: Iterable[Replica] = ()) -> Optional[Replica]:
        candidates = [r for r in self.replicas
                      if r.healthy and r.in_flight < self.max_in_flight and r not in exclude]
        if not candidates:
            return None
        fewest = min(r.in_flight for r in candidates)
        tied = [r for r in candidates if r.in_flight == fewest]
        return tied[next(self._rr) % len(tied)]

    def _dispatch(self) -> None:
        while self._waiters:
            fut, exclude = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            r = self._pick(exclude)
            if r is None:
                return
            self._waiters.popleft()
            r.in_flight += 1
            fut.set_result(r)

    async def acquire(self, exclude: Sequence[Replica] = ()) -> Replica:
        """Wait for a replica with room; the caller must :meth:`release` it."""
        if not self._waiters:
            r = self._pick(exclude)
            if r is not None:
                r.in_flight += 1
                return r
        if not any(r.healthy for r in self.replicas if r not in exclude):
            await self._wait_for_healthy(exclude)
            return await self.acquire(exclude)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, tuple(exclude)))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())
            raise

    def release(self, r: Replica) -> None:
        r.in_flight -= 1
        self._dispatch()

    async def _wait_for_healthy(self, exclude: Sequence[Replica]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_for_replica
        while loop.time() < deadline:
            if any(r.healthy for r in self.replicas if r not in exclude):
                return
            await asyncio.sleep(0.05)
        addrs = ', '.join(r.address for r in self.replicas) or 'none'
        raise NoReplicaAvailable(f'{self.name}: no replica reachable (tried {addrs})')

    # -- sending ---------------------------------------------------------------------
    async def send(self, frame: bytes, timeout: Optional[float] = None) -> bytes:
        """Send one request frame; on a lost connection retry on another replica."""
        tried: List[Replica] = []
        while True:
            r = await self.acquire(tried if len(tried) < len(self.replicas) else ())
            try:
                r.sent += 1
                return await r.call(frame, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                if e.code() not in _CONNECTION_LOST:
                    raise
                log.warning('%s (%s) lost: %s; retrying on another replica', r.name, r.address, e.details())
                self._mark_down(r)
                tried.append(r)
                if len(tried) >= 2 * max(1, len(self.replicas)) + 2:
                    raise NoReplicaAvailable(f'{self.name}: request failed on every replica '
                                             f'({", ".join(x.address for x in tried)}): {e.details()}') from e
            finally:
                self.release(r)

    def _mark_down(self, r: Replica) -> None:
        r.healthy = False
        if r.address not in self._probes or self._probes[r.address].done():
            self._probes[r.address] = asyncio.ensure_future(self._probe(r))

    async def _probe(self, r: Replica) -> None:
        while not r.draining:
            try:
                await r.info(b'', timeout=1.0)
                r.healthy = True
                self._dispatch()
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)

    def describe(self) -> List[Dict[str, Any]]:
        return [{'name': r.name, 'address': r.address, 'in_flight': r.in_flight, 'sent': r.sent,
                 'healthy': r.healthy} for r in self.replicas]


def pick_shard(shards: Sequence[ReplicaSet], counter: itertools.count) -> ReplicaSet:
    """ANY polling: the shard with the fewest requests in flight, ties round robin."""
    fewest = min(s.in_flight for s in shards)
    tied = [s for s in shards if s.in_flight == fewest]
    return tied[next(counter) % len(tied)]


def reduce_docs(results: Sequence[Any]):
    """Merge DocLists from shards (or branches) by doc id, in order.

    A doc id seen first in an earlier result keeps its place; for single values the
    earliest result's non-None value wins, lists and nested DocLists are concatenated
    in result order, dicts are merged (earlier keys win), nested docs merge recursively.

    >>> merged = reduce_docs([shard0_docs, shard1_docs])  # doctest: +SKIP
    """
    from docarray import DocList
    results = [r for r in results if r is not None]
    if not results:
        return None
    doc_type = results[0].doc_type
    by_id: Dict[str, Any] = {}
    order: List[str] = []
    for docs in results:
        for doc in docs:
            if doc.id in by_id:
                _merge_into(by_id[doc.id], doc)
            else:
                by_id[doc.id] = doc
                order.append(doc.id)
    return DocList[doc_type].construct([by_id[i] for i in order])


def concat_docs(results: Sequence[Any]):
    """``no_reduce``: every result's docs, concatenated in order, unmerged."""
    from docarray import DocList
    results = [r for r in results if r is not None]
    if not results:
        return None
    return DocList[results[0].doc_type].construct([d for r in results for d in r])


def _merge_into(left, right) -> None:
    from docarray import BaseDoc, DocList
    right_fields = type(right).model_fields
    for field in type(left).model_fields:
        if field == 'id' or field not in right_fields:
            continue
        lv, rv = getattr(left, field), getattr(right, field)
        if rv is None:
            continue
        if lv is None:
            setattr(left, field, rv)
        elif isinstance(lv, DocList) and isinstance(rv, DocList):
            lv.extend(rv)
        elif isinstance(lv, list) and isinstance(rv, list):
            setattr(left, field, lv + rv)
        elif isinstance(lv, dict) and isinstance(rv, dict):
            setattr(left, field, {**rv, **lv})
        elif isinstance(lv, BaseDoc) and isinstance(rv, BaseDoc):
            _merge_into(lv, rv)
        # other single values: the earliest (lowest shard's) value wins
