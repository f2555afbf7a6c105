"""The gateway's balancing: replica choice (idle first), shard choice (polling), health, retries.

**Idle first.** A :class:`ReplicaSet` keeps at most ``max_in_flight`` requests
in flight per replica and holds the rest in its own FIFO queue. Each request
goes to the replica with the fewest in flight, ties round robin. A slow
replica therefore never builds a backlog and gets fewer requests than its
peers. A replica whose connection fails is marked down, probed in the
background, and the request is retried on another replica.

**Health and retries** (docs/reliability.md). Every replica's ``Info`` is probed
each second; one that does not answer within ``health_timeout`` leaves the
rotation at once and the requests it holds are taken back (a SIGSTOPped or
deadlocked process holds them no longer). A request that lost its replica (the
connection, the health probe, or ``timeout_send``) is retried on another replica
**at most once**, and only where that is safe: a lost connection always (a
stateful replica applies a request id once); a hung replica or a timeout only on
stateless Deployments and for reads of stateful ones, never a ``@write``. Then it
fails naming the replicas and the tail of the last one's log.

**Polling.** :class:`PollingPolicy` says, per endpoint, whether one shard
(``ANY``) or every shard (``ALL``) gets a request. Precedence: the endpoint's
own key, then ``'*'``, then a plain string, then the defaults (``/search``
ALL, every other endpoint ANY). Unlike Jina, a plain ``polling='ALL'``
covers every endpoint, ``/index`` included.

**Writes of a stateful Deployment go to its RAFT leader.** Every replica applies every
``@write`` anyway; the one that receives it only drives it through consensus, and the leader
does that with the fewest hops (a follower first pushes the body and its record to the
leader and waits for the leader's answer). The gateway learns which replica leads from the
replicas' ``Info`` (its health probe, each second); the leader takes up to ``max_in_flight``
x replicas writes at once -- as many as the shard held when they were spread over its
replicas -- so group commit has them to group, and no write queues inside a replica longer
than before (a write's ``write_timeout`` counts from its arrival there, the wait behind slow
applies included). While no leader is known, or it is down, or when a write is retried
after losing its replica, the write goes idle first like any request (a follower forwards
it: slower, never wrong). A stale hint costs the same detour, for at most a second.

The decisions are pure functions, tested in process: :func:`choose_replica` (which
replica), :func:`choose_writer` (which replica drives a stateful ``@write``),
:func:`choose_shards` (which shards) and :func:`retry_allowed` (retry or not).
Merging the shards' documents lives in :mod:`runtime.merging`.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import grpc

from runtime import protocol
from runtime.logfiles import tail
from runtime.specs import (  # noqa: F401  (PollingPolicy: importable from here too)
    HEALTH_INTERVAL_S, HEALTH_TIMEOUT_S, MAX_IN_FLIGHT_PER_REPLICA, REPLICA_WAIT_S, PollingPolicy)

log = logging.getLogger('orchestra.routing')

class NoReplicaAvailable(ConnectionError):
    """Every replica of a shard is unreachable."""


class ReplicaLost(NoReplicaAvailable):
    """A request lost its replica and was not retried again (or could not be, safely)."""


#: a request that lost its replica is sent again at most this many times
MAX_RETRIES = 1

#: how often the health probe asks a stateful shard's replicas while none is known to lead
LEADER_PROBE_INTERVAL_S = 0.1

#: why a request lost its replica: its connection broke, the replica missed its health probe
#: (the request was taken back), or ``timeout_send`` ran out
LOST_CAUSES = ('connection', 'hung', 'timeout')


# -- the decisions (pure functions) ------------------------------------------------------------

def choose_replica(in_flight: Sequence[int], eligible: Sequence[bool], max_in_flight: int,
                   turns: Iterator[int]) -> Optional[int]:
    """Idle first: the index of the eligible replica with the fewest requests in flight, among
    those below ``max_in_flight``; ties round robin (the next of ``turns``, drawn only on a tie
    or a single choice). ``None``: none has room (the request waits in the FIFO).

    >>> turns = itertools.count()
    >>> choose_replica([2, 0, 0], [True, True, True], 4, turns), choose_replica([2, 0, 0], [True] * 3, 4, turns)
    (1, 2)
    >>> choose_replica([4, 1], [True, False], 4, turns) is None
    True
    """
    fewest = max_in_flight
    tied: List[int] = []
    for i, (n, ok) in enumerate(zip(in_flight, eligible)):
        if not ok or n >= max_in_flight:
            continue
        if n < fewest:
            fewest, tied = n, [i]
        elif n == fewest:
            tied.append(i)
    if not tied:
        return None
    return tied[0] if len(tied) == 1 else tied[next(turns) % len(tied)]


def choose_writer(in_flight: Sequence[int], eligible: Sequence[bool], leading: Sequence[bool], window: int,
                  max_in_flight: int, turns: Iterator[int]) -> Optional[int]:
    """Which replica drives a ``@write`` of a stateful shard: the eligible replica that leads its
    RAFT group, up to ``window`` writes at once (``None``: the write waits for room there); with
    no eligible leader known, idle first as :func:`choose_replica` (``max_in_flight`` each).

    >>> turns = itertools.count()
    >>> choose_writer([5, 0, 0], [True] * 3, [True, False, False], 64, 4, turns)    # the leader, though busiest
    0
    >>> choose_writer([64, 0, 0], [True] * 3, [True, False, False], 64, 4, turns) is None   # its window is full
    True
    >>> choose_writer([1, 0, 2], [False, True, True], [True, False, False], 64, 4, turns)   # leader down: idle first
    1
    """
    for i, (ok, leads) in enumerate(zip(eligible, leading)):
        if ok and leads:
            return i if in_flight[i] < window else None
    return choose_replica(in_flight, eligible, max_in_flight, turns)


def choose_shards(mode: str, in_flight: Sequence[int], turns: Iterator[int]) -> List[int]:
    """Polling: which shards get a request. ``ALL``: every one; ``ANY``: the one with the fewest
    requests in flight, ties round robin (as :func:`choose_replica`). One shard: that one, whatever
    the mode.

    >>> turns = itertools.count()
    >>> choose_shards('ALL', [0, 3], turns), choose_shards('ANY', [3, 1], turns), choose_shards('ALL', [5], turns)
    ([0, 1], [1], [0])
    """
    if len(in_flight) == 1:
        return [0]
    if mode == 'ALL':
        return list(range(len(in_flight)))
    fewest = min(in_flight)
    tied = [i for i, n in enumerate(in_flight) if n == fewest]
    return [tied[0] if len(tied) == 1 else tied[next(turns) % len(tied)]]


def retry_allowed(cause: str, stateful: bool, write: Optional[bool]) -> bool:
    """May a request that lost its replica (``cause``, one of :data:`LOST_CAUSES`) go to another one?

    A lost connection: always (a stateful replica applies a request id once). A replica that
    hung or ran out of ``timeout_send`` may still apply the request: only on a stateless
    Deployment, or for an endpoint known not to be a ``@write`` (``write`` is ``None`` while
    that is not known yet). The caller also keeps to :data:`MAX_RETRIES`.

    >>> retry_allowed('connection', True, True), retry_allowed('hung', True, True)
    (True, False)
    >>> retry_allowed('timeout', False, None), retry_allowed('timeout', True, False)
    (True, True)
    """
    if cause not in LOST_CAUSES:
        raise ValueError(f'cause={cause!r}; allowed: {", ".join(LOST_CAUSES)}')
    if cause == 'connection' or not stateful:
        return True
    return write is False


class Replica:
    """A connection to one replica server."""

    def __init__(self, address: str, name: str, log_path: Optional[str] = None):
        self.address = address
        self.name = name
        self.log_path = log_path
        self.in_flight = 0
        self.sent = 0
        self.healthy = True
        self.draining = False
        self.leads = False                # its RAFT role, from its latest Info (stateful replicas)
        self.calls: Dict[Any, str] = {}   # its calls in flight -> endpoint (taken back when it hangs)
        self.abandoned: set = set()       # those taken back
        self.channel = grpc.aio.insecure_channel(address, options=protocol.CHANNEL_OPTIONS)
        self.call = self.channel.unary_unary(protocol.CALL)
        self.info = self.channel.unary_unary(protocol.INFO)

    async def close(self) -> None:
        await self.channel.close()


_CONNECTION_LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)


class ReplicaSet:
    """The replicas of one shard, routed idle first; see the module docstring."""

    def __init__(self, addresses: Sequence[str], name: str = 'shard',
                 max_in_flight: int = MAX_IN_FLIGHT_PER_REPLICA,
                 wait_for_replica: float = REPLICA_WAIT_S, timeout_send: Optional[float] = None,
                 health_timeout: float = HEALTH_TIMEOUT_S, stateful: bool = False):
        if max_in_flight < 1:
            raise ValueError(f'max_in_flight must be >= 1, got {max_in_flight}')
        self.name = name
        self.max_in_flight = max_in_flight
        self.wait_for_replica = wait_for_replica
        self.timeout_send = timeout_send
        self.health_timeout = health_timeout
        self.stateful = stateful
        self.endpoints: Optional[Dict[str, Any]] = None   # endpoint -> {'write': ...}, from Info
        self.stopped: Dict[str, str] = {}                  # address -> why it is left down
        self.replicas: List[Replica] = []
        self._rr = itertools.count()
        self.retries = 0        # requests retried on another replica (runtime.metrics reads these two)
        self.taken_out = 0      # times a replica was taken out of rotation
        self._waiters: collections.deque = collections.deque()         # (future, excluded replicas)
        self._write_waiters: collections.deque = collections.deque()   # the same, for writes to the leader
        self._probes: Dict[str, asyncio.Task] = {}
        self._health: Optional[asyncio.Task] = None
        self.update(addresses)

    # -- membership ----------------------------------------------------------------
    def update(self, addresses: Sequence[str], names: Optional[Sequence[str]] = None,
               logs: Optional[Sequence[Optional[str]]] = None, stopped: Optional[Dict[str, str]] = None) -> None:
        """Serve from these addresses now: new ones join, missing ones drain and close.

        ``names``/``logs``: each replica's name and log file (for error messages);
        ``stopped``: address -> why the supervisor left it down (crash loop).
        """
        current = {r.address: r for r in self.replicas if not r.draining}
        keep = []
        for i, addr in enumerate(addresses):
            r = current.pop(addr, None) or Replica(addr, f'{self.name}/rep-{i}')
            if names and i < len(names) and names[i]:
                r.name = names[i]
            if logs and i < len(logs):
                r.log_path = logs[i]
            keep.append(r)
        for gone in current.values():
            gone.draining = True
            asyncio.ensure_future(self._close_when_idle(gone))
        self.replicas = keep
        self.stopped = dict(stopped or {})
        self._start_health()
        self._dispatch()

    async def _close_when_idle(self, r: Replica) -> None:
        while r.in_flight:
            await asyncio.sleep(0.05)
        await r.close()

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
        for t in self._probes.values():
            t.cancel()
        for r in self.replicas:
            await r.close()

    # -- idle-first choice ---------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    @property
    def queue_depth(self) -> int:
        """Requests waiting here for a replica with room."""
        return len(self._waiters) + len(self._write_waiters)

    def _pick(self, exclude: Iterable[Replica] = (), write: bool = False) -> Optional[Replica]:
        replicas = self.replicas
        in_flight = [r.in_flight for r in replicas]
        eligible = [r.healthy and r not in exclude for r in replicas]
        if write:
            i = choose_writer(in_flight, eligible, [r.leads for r in replicas], self.max_in_flight * len(replicas),
                              self.max_in_flight, self._rr)
        else:
            i = choose_replica(in_flight, eligible, self.max_in_flight, self._rr)
        return None if i is None else replicas[i]

    def _dispatch(self) -> None:
        # two FIFOs: writes waiting for the leader's room do not hold up reads the followers can take
        for waiters, write in ((self._write_waiters, True), (self._waiters, False)):
            while waiters:
                fut, exclude = waiters[0]
                if fut.done():
                    waiters.popleft()
                    continue
                r = self._pick(exclude, write)
                if r is None:
                    break
                waiters.popleft()
                r.in_flight += 1
                fut.set_result(r)

    async def acquire(self, exclude: Sequence[Replica] = (), write: bool = False) -> Replica:
        """Wait for a replica with room (``write``: a stateful ``@write``, see :func:`choose_writer`);
        the caller must :meth:`release` it."""
        waiters = self._write_waiters if write else self._waiters
        if not waiters:
            r = self._pick(exclude, write)
            if r is not None:
                r.in_flight += 1
                return r
        if not any(r.healthy for r in self.replicas if r not in exclude):
            await self._wait_for_healthy(exclude)
            return await self.acquire(exclude, write)
        fut = asyncio.get_running_loop().create_future()
        waiters.append((fut, tuple(exclude)))
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
        why = ''.join(f'\n{r.name} is left down: {self.stopped[r.address]}'
                      for r in self.replicas if r.address in self.stopped)
        raise NoReplicaAvailable(f'{self.name}: no replica reachable (tried {addrs}){why}')

    # -- sending ---------------------------------------------------------------------
    async def send(self, frame: bytes, endpoint: str = '/') -> bytes:
        """Send one request frame (to ``endpoint``); see the module docstring for retries."""
        lost: List[Tuple[Replica, str]] = []
        while True:
            tried = [x for x, _ in lost]
            # a write retried after losing its replica goes idle first: the leader may be what was lost
            r = await self.acquire(tried if len(tried) < len(self.replicas) else (),
                                   write=self.stateful and not tried and bool(self._is_write(endpoint)))
            call = None
            try:
                r.sent += 1
                call = r.call(frame, timeout=self.timeout_send)
                r.calls[call] = endpoint
                return await call
            except asyncio.CancelledError:
                if call is None or call not in r.abandoned:
                    raise
                cause, why = 'hung', self._why_hung()
            except grpc.aio.AioRpcError as e:
                if call in r.abandoned:
                    cause, why = 'hung', self._why_hung()
                elif e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self.timeout_send:
                    cause, why = 'timeout', f'no answer within timeout_send={self.timeout_send:g} s'
                elif e.code() in _CONNECTION_LOST:
                    cause, why = 'connection', f'connection lost ({e.code().name}: {e.details()})'
                    self._mark_down(r)
                else:
                    raise
            finally:
                if call is not None:
                    r.calls.pop(call, None)
                    r.abandoned.discard(call)
                self.release(r)
            retry = retry_allowed(cause, self.stateful, self._is_write(endpoint))
            lost.append((r, why))
            if not retry or len(lost) > MAX_RETRIES:
                raise ReplicaLost(self._lost_message(endpoint, lost, retry))
            self.retries += 1
            log.warning('%s (%s): %s; retrying %s on another replica', r.name, r.address, why, endpoint)

    def _why_hung(self) -> str:
        return f'it stopped answering (no health probe answer within {self.health_timeout:g} s)'

    def _is_write(self, endpoint: str) -> Optional[bool]:
        """Whether ``endpoint`` is a ``@write`` (learnt from the replicas' Info); None: not known yet."""
        if not self.endpoints:
            return None
        ep = self.endpoints.get(endpoint) or self.endpoints.get('__default__')
        return None if ep is None else bool(ep.get('write'))

    def retry_safe(self, endpoint: str) -> bool:
        """May a request that a hung or slow replica may still apply go to another replica too?"""
        return retry_allowed('hung', self.stateful, self._is_write(endpoint))

    def _lost_message(self, endpoint: str, lost: List[Tuple[Replica, str]], retry: bool) -> str:
        parts = '; '.join(f'{r.name} ({r.address}): {why}' for r, why in lost)
        if retry:
            head = (f'{self.name}: request to {endpoint!r} lost {len(lost)} replicas and is not retried again '
                    f'(a request that loses its replica is retried at most {MAX_RETRIES} time(s): it may be '
                    f'what kills them): {parts}')
        else:
            head = (f'{self.name}: request to {endpoint!r} failed: {parts}; not retried on another replica: '
                    f'{endpoint!r} is a @write of a stateful Deployment (or not yet known not to be one), and the '
                    'replica may still apply it')
        if not any(r.healthy for r in self.replicas):
            head = head.replace(f'{self.name}: ', f'{self.name}: no replica reachable; ', 1)
        last = lost[-1][0]
        if last.log_path:
            text = tail(last.log_path, 12).rstrip()
            head += f"\n--- last lines of {last.name}'s log ({last.log_path}) ---\n{text or '(empty log)'}"
        return head

    def _mark_down(self, r: Replica, abandon: bool = False) -> None:
        """Out of the rotation until it answers again; ``abandon``: take back its calls in flight
        that are safe to retry elsewhere (a stateful ``@write`` waits until the supervisor kills a
        hung replica: then its connection is lost, and a request id is applied once)."""
        if r.healthy:
            self.taken_out += 1
        r.healthy = False
        if abandon:
            for call, endpoint in list(r.calls.items()):
                if self.retry_safe(endpoint):
                    r.abandoned.add(call)
                    call.cancel()
        if r.address not in self._probes or self._probes[r.address].done():
            self._probes[r.address] = asyncio.ensure_future(self._probe(r))

    async def _probe(self, r: Replica) -> None:
        while not r.draining:
            try:
                self._learn(r, await r.info(b'', timeout=self.health_timeout))
                r.healthy = True
                log.warning('%s (%s) answers again: back in rotation', r.name, r.address)
                self._dispatch()
                return
            except (grpc.aio.AioRpcError, ValueError):
                await asyncio.sleep(0.2)

    # -- health ------------------------------------------------------------------------
    def _start_health(self) -> None:
        if self._health is None or self._health.done():
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return   # built outside a loop: started by the first update inside one
            self._health = asyncio.ensure_future(self._health_loop())

    async def _health_loop(self) -> None:
        """Each second, every replica in rotation must answer Info within ``health_timeout``."""
        await asyncio.gather(*(self._check(r) for r in self.replicas))   # learn the endpoints now
        while True:
            # a stateful shard with no leader known yet (electing, or the gateway started first) asks
            # again soon: its writes go the long way round until the gateway knows the leader
            leaderless = self.stateful and not any(r.leads and r.healthy for r in self.replicas)
            await asyncio.sleep(LEADER_PROBE_INTERVAL_S if leaderless else HEALTH_INTERVAL_S)
            await asyncio.gather(*(self._check(r) for r in self.replicas if r.healthy and not r.draining))

    async def _check(self, r: Replica) -> None:
        try:
            self._learn(r, await r.info(b'', timeout=self.health_timeout))
        except (grpc.aio.AioRpcError, ValueError) as e:
            if r.healthy and not r.draining:
                code = e.code().name if isinstance(e, grpc.aio.AioRpcError) else 'a bad answer'
                log.warning('%s (%s) missed its health probe (%s within %g s): out of rotation, its %d '
                            'request(s) in flight taken back', r.name, r.address, code, self.health_timeout,
                            len(r.calls))
                self._mark_down(r, abandon=True)

    def _learn(self, r: Replica, info: bytes) -> None:
        """What a replica's Info tells the routing: the endpoints (once) and, on a stateful shard,
        whether it leads (each time)."""
        if self.endpoints is not None and not self.stateful:
            return
        answer = json.loads(info)
        if self.endpoints is None:
            eps = answer.get('endpoints')
            if isinstance(eps, dict):
                self.endpoints = eps
        raft = answer.get('raft')
        leads = isinstance(raft, dict) and raft.get('role') == 'leader'
        if leads and not r.leads:   # a new leader: one at a time (the newest answer wins); its writes may go
            for other in self.replicas:
                other.leads = False
            r.leads = True
            self._dispatch()
        elif not leads:
            r.leads = False

    def describe(self) -> List[Dict[str, Any]]:
        return [{'name': r.name, 'address': r.address, 'in_flight': r.in_flight, 'sent': r.sent,
                 'healthy': r.healthy, **({'leads': True} if r.leads else {}),
                 **({'stopped': self.stopped[r.address]} if r.address in self.stopped else {})}
                for r in self.replicas]
