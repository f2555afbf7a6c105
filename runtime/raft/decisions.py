"""The write path's decisions, without I/O: what to apply next, what a body's absence means,
when to snapshot, what a poison entry does, when a write is acknowledged, what goes in one entry.

``ApplyLedger`` is the applier's state machine: it owns what has been applied (log indexes,
request ids seen, counts, the operator's skip list) and answers, for each committed record,
what to do with it (:class:`Verdict`). The messages pysyncobj's thread posts to the applier
(``Apply``, ``Mark``, ``SnapshotDue``, ``Install``) are declared here. Everything in this module
is plain data and functions: ``tests/test_raft_decisions.py`` drives it in process, with no
sockets, threads or child processes. Relies on :mod:`runtime.raft.records` and
:mod:`runtime.raft.common` (``Outcome``) only.
"""
from __future__ import annotations

import collections
import enum
import json
from typing import Any, Deque, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

from runtime.raft.common import Outcome
from runtime.raft.records import INLINE_PAYLOAD_BYTES, Record


# -- what pysyncobj's thread posts to the applier (the loop thread), in log order -----------------
class Apply(NamedTuple):
    """Entry ``index`` committed, holding ``records``: apply them."""
    index: int
    records: List[Record]


class Mark(NamedTuple):
    """pysyncobj applied everything up to ``index`` (entries without records included)."""
    index: int


class SnapshotDue(NamedTuple):
    """pysyncobj compacted its log: take a snapshot of the Executor soon."""


class Install(NamedTuple):
    """pysyncobj loaded a compaction dump: the state is a snapshot at ``snapshot_index`` or later,
    then ``records`` (index, records) up to log index ``last``."""
    snapshot_index: int
    records: List[Tuple[int, List[Record]]]
    last: int


Action = Union[Apply, Mark, SnapshotDue, Install]

#: records the applier hands to the Executor's thread in one go (one thread hop per batch)
APPLY_BATCH_RECORDS = 256


def take_apply_batch(actions: Deque[Action], max_records: int = APPLY_BATCH_RECORDS) -> List[Apply]:
    """Pop the ``Apply`` actions at the head of ``actions`` (at most ~``max_records`` records,
    at least one action); stops at any other action, which must run in its turn.

    >>> q = collections.deque([Apply(1, []), Apply(2, []), Mark(2), Apply(3, [])])
    >>> [a.index for a in take_apply_batch(q)], len(q)
    ([1, 2], 2)
    """
    batch: List[Apply] = []
    n = 0
    while actions and isinstance(actions[0], Apply) and (not batch or n < max_records):
        a = actions.popleft()
        batch.append(a)   # type: ignore[arg-type]
        n += len(a.records)   # type: ignore[union-attr]
    return batch


class Verdict(enum.Enum):
    """What the applier does with one committed record."""

    BARRIER = 'barrier'       # a barrier: nothing to call; its waiter is answered
    DUPLICATE = 'duplicate'   # its request id was applied before (a retried request committed twice)
    SKIPPED = 'skipped'       # its entry is in the operator's skip list (a poison entry): not called
    APPLY = 'apply'           # call the @write endpoint


class ApplyLedger:
    """What one replica has applied, and the decisions that follow from it.

    ``applied_index``: the log index applied to the Executor or covered by a snapshot;
    ``snapshot_index``: the latest snapshot's; ``exec_index``: what the Executor's state holds
    (the index a snapshot taken now covers). Request ids applied are remembered (the newest
    ``seen_limit``), so a request retried by the client and committed twice is applied once.
    Indexes in ``skipped`` (the operator's skip list) are applied as no-ops by every replica.

    The applier calls :meth:`verdict` on the Executor's thread while the loop waits for it,
    everything else on the loop: one thread at a time.

    >>> ledger = ApplyLedger(skipped={3})
    >>> r = Record('a' * 32, '/index', '{}', 0, '', 0)
    >>> ledger.verdict(2, r), ledger.verdict(3, r._replace(rid='b' * 32)), ledger.verdict(4, r)
    (<Verdict.APPLY: 'apply'>, <Verdict.SKIPPED: 'skipped'>, <Verdict.DUPLICATE: 'duplicate'>)
    """

    SEEN_LIMIT = 50_000

    def __init__(self, skipped: Iterable[int] = (), seen_limit: int = SEEN_LIMIT):
        self.applied_index = 0
        self.snapshot_index = 0
        self.exec_index = 0
        self.writes_applied = 0    # @write requests applied, since the first start (kept in snapshots)
        self.writes_skipped = 0    # records of skipped entries passed over, since this start
        self.skipped: Set[int] = set(skipped)
        self.seen_limit = seen_limit
        self._seen: Deque[str] = collections.deque()
        self._seen_set: Set[str] = set()

    # -- what to apply next ---------------------------------------------------------------
    def split(self, entries: Sequence[Tuple[int, Sequence[Record]]]
              ) -> Tuple[List[Record], List[Tuple[int, Record]]]:
        """Committed entries -> (records a snapshot already covers, (index, record) to apply in order)."""
        covered = [rec for i, recs in entries if i <= self.applied_index for rec in recs]
        todo = [(i, rec) for i, recs in entries if i > self.applied_index for rec in recs]
        return covered, todo

    def verdict(self, index: int, rec: Record) -> Verdict:
        """Decide what to do with ``rec`` (entry ``index``) and record the decision."""
        if rec.is_barrier:
            return Verdict.BARRIER
        if rec.rid in self._seen_set:
            return Verdict.DUPLICATE
        self._remember(rec.rid)
        if index in self.skipped:
            self.writes_skipped += 1
            return Verdict.SKIPPED
        self.writes_applied += 1   # counted once called, whether the call succeeds or raises
        return Verdict.APPLY

    def executed(self, last: int) -> None:
        """The Executor's thread finished a batch up to entry ``last``."""
        self.exec_index = max(self.exec_index, last)

    def applied_through(self, index: int) -> None:
        """Everything up to ``index`` is applied (a batch, a no-op entry, an installed dump)."""
        self.applied_index = max(self.applied_index, index)

    def needs_snapshot_from_peer(self, snapshot_index: int) -> bool:
        """A dump names a snapshot this replica's state does not reach: install a peer's."""
        return self.applied_index < snapshot_index

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot_due(self, wanted: bool, closing: bool) -> bool:
        """pysyncobj compacted (``wanted``) and something was applied since the last snapshot."""
        return wanted and not closing and self.applied_index > self.snapshot_index

    def snapshot_meta(self, requested: int) -> Dict[str, Any]:
        """What a snapshot taken now stores next to the Executor's state (its ``meta.json``)."""
        return {'index': max(requested, self.exec_index), 'writes_applied': self.writes_applied,
                'seen': list(self._seen)}

    def restored(self, meta: Dict[str, Any]) -> int:
        """The Executor's state was restored from a snapshot with ``meta``; -> its index."""
        index = int(meta['index'])
        self._seen = collections.deque(meta.get('seen') or [])
        self._seen_set = set(self._seen)
        self.writes_applied = int(meta.get('writes_applied', 0))
        self.exec_index = index
        self.applied_index = self.snapshot_index = index
        return index

    def snapshot_taken(self, index: int) -> None:
        self.snapshot_index = max(self.snapshot_index, index)

    def _remember(self, rid: str) -> None:
        self._seen.append(rid)
        self._seen_set.add(rid)
        while len(self._seen) > self.seen_limit:
            self._seen_set.discard(self._seen.popleft())


# -- when a body is missing ----------------------------------------------------------------------
class BodyStep(enum.Enum):
    """Where the applier gets a committed record's body from."""

    INLINE = 'inline'                    # the record carries it
    LOCAL = 'local'                      # our store holds it, with the committed digest
    REPLACE = 'replace'                  # our store holds another body under that id: drop it, fetch
    WAIT_FOR_ORIGIN = 'wait for origin'  # not here yet; the origin's push is usually a moment away
    FETCH = 'fetch'                      # ask the peers (the origin first); none has it: a snapshot


def body_step(rec: Record, local_digest: Optional[str], replica: int, waited: bool) -> BodyStep:
    """The next step to find ``rec``'s body: ``local_digest`` is the digest of the body our store
    holds under its request id (None: none), ``waited`` whether we waited for the origin already.

    >>> rec = Record('a' * 32, '/index', '{}', 9, 'd1', origin=1)
    >>> [body_step(rec, d, 0, w).name for d, w in (('d1', False), ('d2', False), (None, False), (None, True))]
    ['LOCAL', 'REPLACE', 'WAIT_FOR_ORIGIN', 'FETCH']
    """
    if rec.body is not None:
        return BodyStep.INLINE
    if local_digest is not None:
        return BodyStep.LOCAL if local_digest == rec.digest else BodyStep.REPLACE
    if rec.origin != replica and not waited:
        return BodyStep.WAIT_FOR_ORIGIN
    return BodyStep.FETCH


# -- how a write is ordered (runtime.raft.writes) -------------------------------------------------
#: a write's parameters travel in its record (JSON); documents are for data
MAX_WRITE_PARAMETERS_BYTES = 32 * 1024


class WriteRoute(enum.Enum):
    """How a ``@write`` request reaches the log, from the replica that received it."""
    INLINE = 'inline'        # a small body rides in the record (journaled by pysyncobj): we propose it
    DELEGATE = 'delegate'    # a peer leads: the body stored here, then pushed; the push to the leader
                             # carries the record and the leader proposes it (R + leader: a majority)
    MAJORITY = 'majority'    # we lead, or no leader is known: the body stored here and on a majority
                             # of peers, then we propose it


def write_route(body_bytes: int, peer_leads: bool) -> WriteRoute:
    """:class:`WriteRoute` of a write whose body is ``body_bytes`` long; ``peer_leads``: our node
    sees another replica as the leader.

    >>> write_route(100, True).name, write_route(50_000, True).name, write_route(50_000, False).name
    ('INLINE', 'DELEGATE', 'MAJORITY')
    """
    if body_bytes <= INLINE_PAYLOAD_BYTES:
        return WriteRoute.INLINE
    return WriteRoute.DELEGATE if peer_leads else WriteRoute.MAJORITY


def write_parameters(endpoint: str, parameters: Optional[Dict[str, Any]]) -> str:
    """A write's parameters as the record carries them (sorted, compact JSON); raises ValueError
    naming the endpoint when they exceed :data:`MAX_WRITE_PARAMETERS_BYTES`.

    >>> write_parameters('/index', {'b': 1, 'a': [2]})
    '{"a":[2],"b":1}'
    """
    params = json.dumps(parameters or {}, sort_keys=True, separators=(',', ':'))
    if len(params) > MAX_WRITE_PARAMETERS_BYTES:
        raise ValueError(f'parameters of a write to {endpoint!r} are {len(params)} bytes as JSON; stateful writes '
                         f'accept up to {MAX_WRITE_PARAMETERS_BYTES // 1024} KB of parameters (send data as documents)')
    return params


class CommitStep(enum.Enum):
    """What a write does after a proposal of its record (ours, or the leader's for us) ended."""
    AWAIT_APPLY = 'await apply'   # committed: the applier is about to apply it here; the write waits for that
    PROPOSE = 'propose'           # not committed (no leader, leader changed, refused, no answer): propose it
                                  # ourselves, after :func:`retry_delay` (a record id is applied once)


def commit_step(outcome: Outcome) -> CommitStep:
    """The step after a proposal ended with ``outcome``.

    >>> commit_step(Outcome.COMMITTED).name, commit_step(Outcome.NOT_LEADER).name
    ('AWAIT_APPLY', 'PROPOSE')
    """
    return CommitStep.AWAIT_APPLY if outcome == Outcome.COMMITTED else CommitStep.PROPOSE


def retry_delay(attempt: int) -> float:
    """Seconds before proposing again after ``attempt`` proposals that did not commit: a growing
    pause (an election takes 0.4-1.4 s), at most 0.25 s.

    >>> retry_delay(1), retry_delay(10), retry_delay(1000)
    (0.01, 0.1, 0.25)
    """
    return min(0.01 * attempt, 0.25)


def retry_logged(attempt: int) -> bool:
    """Whether the ``attempt``-th retry is worth a log line (the 5th, the 20th, then every 100th)."""
    return attempt in (5, 20) or attempt % 100 == 0


# -- when a write is acknowledged ----------------------------------------------------------------
def covered_reply(body: Optional[bytes]) -> Tuple[Dict[str, Any], bytes]:
    """The reply to a write whose entry a snapshot covered (installed rather than applied here)."""
    return {'ok': True, 'applied_via_snapshot': True}, body or b''


def duplicate_reply(body: Optional[bytes]) -> Tuple[Dict[str, Any], bytes]:
    """The reply to a retried write whose first copy was applied already (not applied again)."""
    return {'ok': True, 'duplicate': True}, body or b''


def peer_acks_needed(peers: int) -> int:
    """Peers that must hold a body (besides us) before its record may be proposed: a majority.

    >>> peer_acks_needed(2), peer_acks_needed(4)
    (1, 2)
    """
    return (peers + 1) // 2


# -- what goes in one log entry (group commit) ---------------------------------------------------
def record_cost(rec: Record) -> int:
    """A record's approximate bytes in a log entry."""
    return 96 + len(rec.parameters or '') + len(rec.endpoint or '') + len(rec.body or b'')


def group_size(records: Sequence[Record], max_batch: int, max_bytes: int) -> int:
    """How many records from the head of ``records`` go in the next log entry: at most
    ``max_batch`` and about ``max_bytes``, but at least one.

    >>> r = Record('a' * 32, '/i', '', 0, '', 0, b'x' * 1000)
    >>> group_size([r] * 10, 64, 4096), group_size([r] * 10, 3, 1 << 20), group_size([r], 64, 10)
    (3, 3, 1)
    """
    size = 0
    for k, rec in enumerate(records[:max_batch]):
        size += record_cost(rec)
        if k and size > max_bytes:
            return k
    return min(len(records), max_batch)
