"""Ordering ``@write`` requests through the log: ``Writes`` (store the body, propose, wait until applied here).

A write is acknowledged once its record is applied on the replica that received it (the
applier's future for its request id). How the record reaches the log is decided by
:func:`runtime.raft.decisions.write_route` (inline, delegated to the leader, or proposed here
once a majority holds the body), and what happens after each proposal by
:func:`~runtime.raft.decisions.commit_step` and :func:`~runtime.raft.decisions.retry_delay`.
``Writes`` is given the parts it drives -- the body store (``store``/``push``/``majority``), the
applier (``waiter``/``expect``/``forget``), a door to the proposer and a few callables of the
node -- and owns no state of theirs. ``tests/test_raft_writes.py`` drives it in process, with
stand-ins for those parts.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

from runtime.raft.common import Outcome, RaftNotReady
from runtime.raft.decisions import CommitStep, WriteRoute, commit_step, retry_delay, retry_logged, write_parameters, \
    write_route
from runtime.raft.payloads import _RID, _digest
from runtime.raft.records import Record
from runtime.raft.settings import PeerAddress

log = logging.getLogger('orchestra.raft')

Reply = Tuple[Dict[str, Any], bytes]

#: a write that took longer than this says where its time went (the body's majority, or the log)
SLOW_WRITE_S = 2.0


class Writes:
    """One replica's write path: :meth:`write` for ``@write`` requests, :meth:`commit` for any
    record (barriers of reads and readiness too).

    ``bodies``: ``store(rid, body, digest)``, ``push(peer, rid, digest, body, deadline, record)``,
    ``majority(pushes, deadline)`` (:class:`runtime.raft.bodies.Bodies`); ``applier``:
    ``waiter(rid)``, ``expect(rid)``, ``forget(rid, fut)`` (:class:`runtime.raft.apply.Applier`);
    ``propose(record)``: the proposer's future of the record's ``Outcome`` (group commit, the same
    door ``PeerControl`` proposes through);
    ``leader_peer()``: the peer our node sees leading (None: we lead, or none); ``status()``: the
    node's status, for error messages; ``closing()``: the node is shutting down; ``spawn(coro)``:
    a task the node cancels at close; ``trace(event, rid)``: the test-only durability trace.
    """

    def __init__(self, name: str, replica: int, peers: Sequence[PeerAddress], write_timeout: float,
                 bodies: Any, applier: Any, propose: Callable[[Record], 'asyncio.Future[Outcome]'],
                 leader_peer: Callable[[], Optional[PeerAddress]],
                 status: Callable[[], Dict[str, Any]], closing: Callable[[], bool],
                 spawn: Callable[[Awaitable[Any]], 'asyncio.Task[Any]'], trace: Callable[[str, str], None]):
        self.name, self.replica, self.peers, self.write_timeout = name, replica, tuple(peers), write_timeout
        self._bodies, self._applier, self._propose = bodies, applier, propose
        self._leader_peer, self._status, self._closing = leader_peer, status, closing
        self._spawn, self._trace = spawn, trace
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Once the log runs (``propose`` may be called from then on)."""
        self._loop = loop

    def barrier(self) -> Record:
        """A record without an endpoint: applied, it says everything committed before it is applied here."""
        return Record(uuid.uuid4().hex, None, '', 0, '', self.replica)

    async def write(self, endpoint: str, parameters: Optional[dict], body: bytes,
                    request_id: Optional[str] = None) -> Reply:
        """Order a ``@write`` request through RAFT; return its reply once applied here.

        ``request_id`` (32 hex digits, set by :class:`~runtime.client.Client`) makes a retried
        request idempotent: whichever copy commits first is applied, later ones are skipped.
        """
        loop = self._loop
        assert loop is not None, 'Writes.start() first'
        params = write_parameters(endpoint, parameters)
        t0 = loop.time()
        deadline = t0 + self.write_timeout
        rid = request_id if isinstance(request_id, str) and _RID.match(request_id) else uuid.uuid4().hex
        digest = _digest(body)
        leader = self._leader_peer()
        route = write_route(len(body), leader is not None)
        delegate: Optional[Callable[[], Awaitable[Outcome]]] = None
        if route is WriteRoute.INLINE:
            record = Record(rid, endpoint, params, len(body), digest, self.replica, bytes(body))
        else:
            record = Record(rid, endpoint, params, len(body), digest, self.replica)
            await self._bodies.store(rid, body, digest)   # in our workspace before any peer may propose it
            pushes = {p.name: self._spawn(self._bodies.push(p.name, rid, digest, body, deadline,
                                                            record if p is leader else None)) for p in self.peers}
            if route is WriteRoute.MAJORITY:
                await self._bodies.majority(pushes, deadline)
            else:
                assert leader is not None

                async def leader_proposes() -> Outcome:
                    pushed = await pushes[leader.name]
                    if pushed.stored and pushed.outcome == Outcome.COMMITTED:
                        return Outcome.COMMITTED
                    await self._bodies.majority(pushes, deadline)   # else: stored on a majority, we propose
                    return Outcome.REFUSED if pushed.outcome is None else pushed.outcome
                delegate = leader_proposes
        t1 = loop.time()
        trace: List[Tuple[str, float]] = []
        reply = await self.commit(record, max(0.1, deadline - t1), f'write to {endpoint!r}', trace, delegate)
        took = loop.time() - t0
        self._trace('ack', rid)
        if took > SLOW_WRITE_S:
            st = self._status()
            log.warning('%s: slow write to %s: %.2f s (payload on a majority %.2f s, commit and apply %.2f s; '
                        'proposal outcomes %s; %s, leader %s)', self.name, endpoint, took, t1 - t0,
                        took - (t1 - t0), trace, st.get('role'), st.get('leader'))
        return reply

    async def commit(self, record: Record, timeout: Optional[float], what: str,
                     trace: Optional[List[Tuple[str, float]]] = None,
                     delegate: Optional[Callable[[], Awaitable[Outcome]]] = None) -> Reply:
        """Propose ``record`` (retrying on leader changes) until applied here; -> its reply.

        ``trace`` collects (outcome, seconds) per proposal, for diagnostics. ``delegate``: a
        coroutine function that has the leader propose the record (the body's push carries it)
        and returns its ``Outcome``; on anything but ``COMMITTED`` we propose it ourselves.
        """
        loop = self._loop
        assert loop is not None, 'Writes.start() first'
        rid = record.rid
        existing = self._applier.waiter(rid)
        if existing is not None and not existing.done():   # the same request again: share its outcome
            done, _ = await asyncio.wait({existing}, timeout=timeout)
            if not done:
                raise TimeoutError(f'{what} was not committed and applied by {self.name} within {timeout:.0f} s')
            return existing.result()
        applied = self._applier.expect(rid)
        deadline = None if timeout is None else loop.time() + timeout

        def remaining() -> Optional[float]:
            return None if deadline is None else max(0.0, deadline - loop.time())

        def not_applied(how: str) -> TimeoutError:
            return TimeoutError(f'{what} was {how} by {self.name} within {timeout:.0f} s '
                                f'(raft: {json.dumps(self._status())}); is a majority of replicas up?')

        async def settle(proposal: 'asyncio.Future[Outcome]', label: str) -> Tuple[Optional[Reply], Outcome]:
            """Wait for the proposal or the apply: (the reply once applied, else None; the outcome)."""
            tp = loop.time()
            done, _ = await asyncio.wait({applied, proposal}, timeout=remaining(),
                                         return_when=asyncio.FIRST_COMPLETED)
            if applied.done():
                return applied.result(), Outcome.COMMITTED
            if not done:
                raise not_applied('not committed and applied')
            outcome = proposal.result()   # a delegate raises if no majority holds the body
            if trace is not None:
                trace.append((label + outcome.label, round(loop.time() - tp, 3)))
            if commit_step(outcome) is CommitStep.AWAIT_APPLY:
                await asyncio.wait({applied}, timeout=remaining())
                if applied.done():
                    return applied.result(), outcome
                raise not_applied('committed but not applied')
            return None, outcome

        try:
            if delegate is not None:   # the leader proposes it; on anything but COMMITTED, we do at once
                reply, _ = await settle(self._spawn(delegate()), 'by the leader: ')
                if reply is not None:
                    return reply
            attempt = 0
            while True:
                if self._closing():
                    raise RaftNotReady(f'{self.name} is shutting down')
                if remaining() == 0.0:   # proposals that fail at once must not retry past the deadline
                    raise not_applied('not committed and applied')
                reply, outcome = await settle(self._propose(record), '')
                if reply is not None:
                    return reply
                attempt += 1
                if retry_logged(attempt):
                    log.info('%s: %s not committed yet (%s, attempt %d); retrying',
                             self.name, what, outcome.label, attempt)
                left = remaining()
                await asyncio.sleep(retry_delay(attempt) if left is None else min(retry_delay(attempt), left))
        finally:
            self._applier.forget(rid, applied)
