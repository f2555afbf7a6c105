"""The write path's decisions (runtime/raft/decisions.py), driven in process: no sockets, threads
or child processes. Edge cases that otherwise need a real cluster: a snapshot installed while
entries were in flight, a retried request committed twice, a poison entry, a body that is not
here (or not the committed one), group commit, majorities."""
import collections

import pytest

from runtime.raft.decisions import (APPLY_BATCH_RECORDS, Apply, ApplyLedger, BodyStep, Install, Mark, SnapshotDue,
                                    Verdict, body_step, covered_reply, duplicate_reply, group_size, peer_acks_needed,
                                    record_cost, take_apply_batch)
from runtime.raft.records import Record


def rec(n, origin=0, body=None, endpoint='/index', digest='d'):
    return Record(f'{n:032x}', endpoint, '{}', 10, digest, origin, body)


BARRIER = Record('f' * 32, None, '', 0, '', 0)


# -- what to apply next ---------------------------------------------------------------------------
def test_entries_a_snapshot_covers_are_answered_not_applied_again():
    ledger = ApplyLedger()
    ledger.restored({'index': 5, 'writes_applied': 4, 'seen': [rec(1).rid]})   # a peer's snapshot at 5
    covered, todo = ledger.split([(4, [rec(1)]), (5, [rec(2), rec(3)]), (6, [rec(4)]), (7, [BARRIER])])
    assert covered == [rec(1), rec(2), rec(3)]
    assert todo == [(6, rec(4)), (7, BARRIER)]
    assert (ledger.applied_index, ledger.snapshot_index, ledger.exec_index, ledger.writes_applied) == (5, 5, 5, 4)


def test_each_record_applied_in_order_and_the_index_only_moves_forward():
    ledger = ApplyLedger()
    verdicts = [ledger.verdict(i, r) for i, r in [(1, rec(1)), (1, rec(2)), (2, BARRIER), (3, rec(3))]]
    assert verdicts == [Verdict.APPLY, Verdict.APPLY, Verdict.BARRIER, Verdict.APPLY]
    ledger.executed(3)
    ledger.applied_through(3)
    ledger.applied_through(2)   # a late Mark for an older index
    assert (ledger.applied_index, ledger.exec_index, ledger.writes_applied) == (3, 3, 3)


def test_a_retried_request_committed_twice_is_applied_once():
    ledger = ApplyLedger()
    assert ledger.verdict(1, rec(7)) is Verdict.APPLY
    assert ledger.verdict(9, rec(7)) is Verdict.DUPLICATE   # the client's retry, committed again
    assert ledger.writes_applied == 1
    assert duplicate_reply(b'body') == ({'ok': True, 'duplicate': True}, b'body')


def test_request_ids_survive_a_snapshot_and_only_the_newest_are_kept():
    ledger = ApplyLedger(seen_limit=3)
    for k in range(5):
        ledger.verdict(k + 1, rec(k))
    ledger.executed(5)
    meta = ledger.snapshot_meta(requested=4)   # the Executor's state already holds entry 5
    assert meta == {'index': 5, 'writes_applied': 5, 'seen': [rec(2).rid, rec(3).rid, rec(4).rid]}
    other = ApplyLedger(seen_limit=3)
    assert other.restored(meta) == 5
    assert other.verdict(6, rec(4)) is Verdict.DUPLICATE   # remembered through the snapshot
    assert other.verdict(6, rec(0)) is Verdict.APPLY       # forgotten: too old


def test_a_poison_entry_in_the_skip_list_is_passed_over_by_every_record():
    ledger = ApplyLedger(skipped={4})
    assert [ledger.verdict(4, r) for r in (rec(1), rec(2), BARRIER)] == [Verdict.SKIPPED, Verdict.SKIPPED,
                                                                         Verdict.BARRIER]
    assert ledger.verdict(5, rec(3)) is Verdict.APPLY
    assert (ledger.writes_skipped, ledger.writes_applied) == (2, 1)


def test_a_dump_naming_a_newer_snapshot_needs_one_from_a_peer():
    ledger = ApplyLedger()
    ledger.applied_through(10)
    assert not ledger.needs_snapshot_from_peer(10)
    assert ledger.needs_snapshot_from_peer(11)


# -- when to snapshot -----------------------------------------------------------------------------
@pytest.mark.parametrize('wanted, closing, applied, snapshot, due', [
    (True, False, 10, 5, True),
    (False, False, 10, 5, False),    # pysyncobj did not compact
    (True, True, 10, 5, False),      # closing: close() takes its own
    (True, False, 5, 5, False),      # nothing new since the last one
])
def test_snapshot_due(wanted, closing, applied, snapshot, due):
    ledger = ApplyLedger()
    ledger.applied_through(applied)
    ledger.snapshot_taken(snapshot)
    assert ledger.snapshot_due(wanted, closing) is due


# -- the applier's queue --------------------------------------------------------------------------
def test_apply_batches_stop_at_other_actions_and_at_the_record_limit():
    many = [rec(k) for k in range(APPLY_BATCH_RECORDS)]
    q = collections.deque([Apply(1, many), Apply(2, [rec(1)]), Mark(2), SnapshotDue(), Apply(3, []),
                           Install(0, [], 3)])
    assert [a.index for a in take_apply_batch(q)] == [1]   # the first entry alone fills a batch
    assert [a.index for a in take_apply_batch(q)] == [2]   # then up to the Mark, which runs in its turn
    assert take_apply_batch(q) == [] and isinstance(q[0], Mark)


# -- when a body is missing -----------------------------------------------------------------------
def test_where_a_body_comes_from():
    small = rec(1, origin=2, body=b'x')
    assert body_step(small, None, replica=0, waited=False) is BodyStep.INLINE
    large = rec(2, origin=2, digest='good')
    assert body_step(large, 'good', 0, False) is BodyStep.LOCAL
    assert body_step(large, 'other', 0, False) is BodyStep.REPLACE   # same id, another body: the committed one
    assert body_step(large, None, 0, False) is BodyStep.WAIT_FOR_ORIGIN
    assert body_step(large, None, 0, True) is BodyStep.FETCH
    own = rec(3, origin=0)
    assert body_step(own, None, 0, False) is BodyStep.FETCH   # ours and gone (a crash): no origin to wait for


# -- when a write is acknowledged ------------------------------------------------------------------
def test_a_write_covered_by_a_snapshot_is_acknowledged_as_such():
    assert covered_reply(None) == ({'ok': True, 'applied_via_snapshot': True}, b'')


@pytest.mark.parametrize('replicas, peers_needed', [(3, 1), (4, 2), (5, 2), (7, 3)])
def test_a_body_is_stored_on_a_majority_before_its_record_is_proposed(replicas, peers_needed):
    assert peer_acks_needed(replicas - 1) == peers_needed
    assert 1 + peers_needed > replicas / 2


# -- group commit ---------------------------------------------------------------------------------
def test_group_commit_respects_count_and_bytes_and_always_moves():
    small = [rec(k) for k in range(100)]
    assert group_size(small, 64, 1 << 20) == 64
    assert group_size(small[:5], 64, 1 << 20) == 5
    big = [rec(k, body=b'x' * 2000) for k in range(10)]
    per = record_cost(big[0])
    assert group_size(big, 64, 4 * per) == 4
    assert group_size(big, 64, 10) == 1   # one oversized record still goes
    assert group_size([], 64, 10) == 0
