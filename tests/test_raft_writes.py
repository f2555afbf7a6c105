"""The write path (runtime/raft/writes.py) in process: stand-ins for the body store, the applier
and the proposer; the test decides what each proposal's outcome is and when a record is applied.

What is checked: how a write reaches the log (inline, delegated to the leader, proposed here once
a majority holds the body), that it is acknowledged only once applied here, retries on leader
changes, the same request id sharing one outcome, and the errors when it cannot commit.
"""
import asyncio

import pytest

from runtime.raft.common import Outcome, RaftNotReady
from runtime.raft.decisions import MAX_WRITE_PARAMETERS_BYTES, WriteRoute, commit_step, retry_delay, write_route
from runtime.raft.pushers import _PushResult
from runtime.raft.records import INLINE_PAYLOAD_BYTES
from runtime.raft.settings import PeerAddress
from runtime.raft.writes import Writes

PEERS = (PeerAddress(replica=1, name='kv/rep-1', raft='127.0.0.1:1', grpc='127.0.0.1:11'),
         PeerAddress(replica=2, name='kv/rep-2', raft='127.0.0.1:2', grpc='127.0.0.1:12'))
RID = 'a' * 32
SMALL, LARGE = b's' * 100, b'L' * (INLINE_PAYLOAD_BYTES + 1)


class Applier:
    """``waiter``/``expect``/``forget`` as runtime.raft.apply.Applier; ``apply`` is the log applying a record."""

    def __init__(self):
        self.waiters = {}

    def waiter(self, rid):
        return self.waiters.get(rid)

    def expect(self, rid):
        self.waiters[rid] = asyncio.get_running_loop().create_future()
        return self.waiters[rid]

    def forget(self, rid, fut):
        if self.waiters.get(rid) is fut:
            del self.waiters[rid]

    def apply(self, rid):
        fut = self.waiters.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(({'ok': True}, b'reply of ' + rid.encode()))


class Bodies:
    """``store``/``push``/``majority`` as runtime.raft.bodies.Bodies; ``events`` says what happened, in order."""

    def __init__(self, leader_outcome=None, applier=None):
        self.events = []
        self.leader_outcome = leader_outcome   # what the leader answers to a push carrying a record
        self.applier = applier

    async def store(self, rid, body, digest):
        self.events.append(('store', rid))

    async def push(self, peer, rid, digest, body, deadline, record=None):
        self.events.append(('push', peer, record is not None))
        if record is not None and self.leader_outcome is Outcome.COMMITTED:
            self.applier.apply(rid)   # the leader proposed it, it committed; the log applies it here too
        return _PushResult(True, '', self.leader_outcome if record is not None else None)

    async def majority(self, pushes, deadline):
        await asyncio.gather(*pushes.values())
        self.events.append(('majority',))


class Proposer:
    """``submit`` as the group commit: each proposal's outcome from ``outcomes``, in turn (None: no answer)."""

    def __init__(self, applier, outcomes, events):
        self.applier, self.outcomes, self.events = applier, list(outcomes), events
        self.records = []

    def submit(self, record):
        self.records.append(record)
        self.events.append(('propose', record.rid))
        fut = asyncio.get_running_loop().create_future()
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            fut.set_result(outcome)
            if outcome is Outcome.COMMITTED:
                asyncio.get_running_loop().call_soon(self.applier.apply, record.rid)
        return fut


def make(outcomes=(Outcome.COMMITTED,), leader=None, leader_outcome=None, timeout=5.0, closing=False):
    applier = Applier()
    bodies = Bodies(leader_outcome, applier)
    proposer = Proposer(applier, outcomes, bodies.events)

    def spawn(coro):
        return asyncio.ensure_future(coro)
    writes = Writes('kv/rep-0', 0, PEERS, timeout, bodies, applier, proposer.submit, lambda: leader,
                    lambda: {'role': 'follower', 'leader': None}, lambda: closing, spawn, lambda event, rid: None)
    writes.start(asyncio.get_running_loop())
    return writes, bodies, proposer, applier


def test_the_route_decision():
    assert write_route(INLINE_PAYLOAD_BYTES, True) is WriteRoute.INLINE
    assert write_route(INLINE_PAYLOAD_BYTES + 1, True) is WriteRoute.DELEGATE
    assert write_route(INLINE_PAYLOAD_BYTES + 1, False) is WriteRoute.MAJORITY
    assert [commit_step(o).name for o in (Outcome.COMMITTED, Outcome.NO_ANSWER)] == ['AWAIT_APPLY', 'PROPOSE']
    assert retry_delay(3) < retry_delay(30) == retry_delay(3000) == 0.25


def test_a_small_write_rides_in_its_record_and_is_acknowledged_once_applied_here():
    async def main():
        writes, bodies, proposer, applier = make()
        header, reply = await writes.write('/index', {'k': 1}, SMALL, RID)
        assert (header, reply) == ({'ok': True}, b'reply of ' + RID.encode())
        (record,) = proposer.records
        assert (record.rid, record.endpoint, record.parameters, record.body) == (RID, '/index', '{"k":1}', SMALL)
        assert bodies.events == [('propose', RID)]   # no store, no push: the log carries it
        assert applier.waiters == {}                 # nothing left waiting
    asyncio.run(main())


def test_a_large_write_with_a_peer_leading_is_proposed_by_the_leader():
    async def main():
        writes, bodies, proposer, _ = make(leader=PEERS[1], leader_outcome=Outcome.COMMITTED)
        await writes.write('/index', {}, LARGE, RID)
        assert bodies.events[0] == ('store', RID)   # ours first: the leader may propose it on receipt
        assert sorted(bodies.events[1:]) == [('push', 'kv/rep-1', False), ('push', 'kv/rep-2', True)]
        assert proposer.records == []               # the leader's proposal committed: none of ours
    asyncio.run(main())


def test_the_leader_declines_then_we_propose_at_once_and_retry_until_committed():
    async def main():
        writes, bodies, proposer, _ = make(outcomes=[Outcome.NO_LEADER, Outcome.COMMITTED],
                                           leader=PEERS[0], leader_outcome=Outcome.NOT_LEADER)
        await writes.write('/index', {}, LARGE, RID)
        assert ('majority',) in bodies.events       # on a majority before we propose it ourselves
        assert bodies.events.index(('majority',)) < bodies.events.index(('propose', RID))
        assert len(proposer.records) == 2           # NO_LEADER, then COMMITTED
    asyncio.run(main())


def test_when_we_lead_the_body_is_on_a_majority_before_the_proposal():
    async def main():
        writes, bodies, proposer, _ = make(leader=None)
        await writes.write('/index', {}, LARGE, RID)
        assert bodies.events[0] == ('store', RID)
        assert ('push', 'kv/rep-1', False) in bodies.events and ('push', 'kv/rep-2', False) in bodies.events
        assert bodies.events[-2:] == [('majority',), ('propose', RID)]
    asyncio.run(main())


def test_the_same_request_twice_shares_one_proposal_and_reply():
    async def main():
        writes, bodies, proposer, applier = make(outcomes=[None])   # the first proposal does not answer
        first = asyncio.ensure_future(writes.write('/index', {}, SMALL, RID))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(writes.write('/index', {}, SMALL, RID))   # a resend of the same request
        await asyncio.sleep(0.01)
        applier.apply(RID)
        assert await first == await second
        assert len(proposer.records) == 1
    asyncio.run(main())


def test_a_write_that_cannot_commit_times_out_naming_it():
    async def main():
        writes, _, proposer, _ = make(outcomes=[Outcome.NO_LEADER] * 1000, timeout=0.3)
        with pytest.raises(TimeoutError, match=r"write to '/index' was not committed and applied by kv/rep-0 "
                                               r".*is a majority of replicas up\?"):
            await writes.write('/index', {}, SMALL, RID)
        assert 3 <= len(proposer.records) < 100     # retried, with a growing pause
    asyncio.run(main())


def test_closing_stops_the_retries_and_oversized_parameters_are_refused():
    async def main():
        writes, _, _, _ = make(outcomes=[Outcome.NO_LEADER], closing=True)
        with pytest.raises(RaftNotReady, match='shutting down'):
            await writes.write('/index', {}, SMALL, RID)
        writes, _, proposer, _ = make()
        with pytest.raises(ValueError, match=r"parameters of a write to '/index' are \d+ bytes as JSON; "
                                             r'stateful writes accept up to 32 KB'):
            await writes.write('/index', {'x': 'y' * MAX_WRITE_PARAMETERS_BYTES}, SMALL, RID)
        assert proposer.records == []
    asyncio.run(main())
