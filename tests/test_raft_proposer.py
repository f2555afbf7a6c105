"""Group commit (runtime/raft/proposer.py) in process: a fake log stands in for pysyncobj."""
import asyncio

from runtime.raft.common import Outcome
from runtime.raft.proposer import _Proposer
from runtime.raft.records import Record


def rec(n):
    return Record(f'{n:032x}', '/index', '{}', 1, 'd', 0, b'x')


class FakeLog:
    """Keeps each proposed entry and its callback; the test decides when (and how) they commit."""

    def __init__(self):
        self.entries = []

    def propose(self, records, callback):
        self.entries.append((records, callback))


def test_records_proposed_while_entries_are_in_flight_go_together():
    async def main():
        log = FakeLog()
        proposer = _Proposer(asyncio.get_running_loop(), log.propose, max_batch=64, max_in_flight=2)
        futures = [proposer.submit(rec(k)) for k in range(10)]
        assert [len(r) for r, _ in log.entries] == [1, 1]   # two in flight, eight waiting
        log.entries[0][1](None, 0)                           # the first commits (pysyncobj's SUCCESS)
        await asyncio.sleep(0)
        assert futures[0].result() is Outcome.COMMITTED
        assert [len(r) for r, _ in log.entries] == [1, 1, 8]  # the eight waiting: one entry
        log.entries[1][1](None, 4)                            # NOT_LEADER
        log.entries[2][1](None, 0)
        await asyncio.sleep(0)
        assert futures[1].result() is Outcome.NOT_LEADER
        assert {f.result() for f in futures[2:]} == {Outcome.COMMITTED}
        assert (proposer.entries, proposer.records) == (3, 10)
        assert log.entries[2][0][0] == rec(2).to_wire()       # the log holds plain tuples
    asyncio.run(main())


def test_a_proposal_pysyncobj_never_answers_times_out_and_a_refused_one_says_so():
    async def main():
        log = FakeLog()
        proposer = _Proposer(asyncio.get_running_loop(), log.propose, max_batch=64, proposal_timeout=0.05)
        silent = proposer.submit(rec(1))
        assert await asyncio.wait_for(silent, 5) is Outcome.NO_ANSWER

        def refuse(records, callback):
            raise RuntimeError('queue full')
        refused = _Proposer(asyncio.get_running_loop(), refuse, max_batch=64).submit(rec(2))
        assert await asyncio.wait_for(refused, 5) is Outcome.REFUSED
    asyncio.run(main())
