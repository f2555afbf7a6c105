"""Group commit: records proposed while earlier ones are in flight go together in one log entry.

It is given the loop and the function that appends an entry to the log
(:meth:`runtime.raft.syncobj.RaftLog.propose`); how many records go in one entry is
:func:`runtime.raft.decisions.group_size`. Outcomes are :class:`~runtime.raft.common.Outcome`.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable, Deque, List, Tuple

from runtime.raft.common import Outcome
from runtime.raft.decisions import group_size
from runtime.raft.records import Record

log = logging.getLogger('orchestra.raft')


class _Proposer:
    """Group commit: records wait while ``max_in_flight`` entries are being committed,
    then go together in one log entry (at most ``max_batch`` records, ~``max_bytes``).

    One entry in flight (the default): records arriving while an entry commits wait for it
    and go together in the next. Measured (benchmarks/README.md, issue 20): indexing 20k docs
    made 97-102 entries for 200 writes against 125-133 with two in flight (each entry costs a
    pickled, encrypted message per peer and a journal fsync on every replica), and no slower."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 propose: Callable[[List[tuple], Callable[[Any, int], None]], None], max_batch: int,
                 max_in_flight: int = 1, max_bytes: int = 32 * 1024, proposal_timeout: float = 5.0):
        self._loop, self._propose = loop, propose   # propose(records as tuples, callback on pysyncobj's thread)
        self.max_batch, self.max_in_flight, self.max_bytes = max_batch, max_in_flight, max_bytes
        self.proposal_timeout = proposal_timeout
        self.in_flight = 0
        self.entries = 0
        self.records = 0
        self._queue: Deque[Tuple[Record, 'asyncio.Future[Outcome]']] = collections.deque()

    def submit(self, record: Record) -> 'asyncio.Future[Outcome]':
        """Propose ``record``; the future gets its ``Outcome`` (``COMMITTED``: in the log, on a majority)."""
        fut = self._loop.create_future()
        self._queue.append((record, fut))
        self._kick()
        return fut

    def _kick(self) -> None:
        while self.in_flight < self.max_in_flight and self._queue:
            live = [(r, f) for r, f in self._queue if not f.done()]   # a timed-out caller's: dropped
            if not live:
                self._queue.clear()
                return
            n = group_size([r for r, _ in live], self.max_batch, self.max_bytes)
            self._queue = collections.deque(live[n:])
            self._send(live[:n])

    def _send(self, batch: List[Tuple[Record, 'asyncio.Future[Outcome]']]) -> None:
        loop = self._loop
        state = {'done': False}
        self.in_flight += 1
        self.entries += 1
        self.records += len(batch)

        def finish(err: Outcome) -> None:
            if state['done']:
                return
            state['done'] = True
            self.in_flight -= 1
            timer.cancel()
            for _, f in batch:
                if not f.done():
                    f.set_result(err)
            self._kick()

        def callback(result: Any, err: int) -> None:   # on pysyncobj's thread
            try:
                loop.call_soon_threadsafe(finish, Outcome.of(err))
            except RuntimeError:
                pass   # the loop is closed: shutting down

        timer = loop.call_later(self.proposal_timeout, finish, Outcome.NO_ANSWER)
        try:   # the log holds plain tuples (see runtime.raft.records)
            self._propose([r.to_wire() for r, _ in batch], callback)
        except Exception as e:   # queue full, node destroyed
            log.warning('RAFT proposal refused: %s: %s', type(e).__name__, e)
            finish(Outcome.REFUSED)
