"""pysyncobj's compaction dump, our way: ``CompactionDump`` -- the records since the latest snapshot.

When pysyncobj compacts its log it asks for a dump of the state machine. Ours is small: it
names the latest Executor snapshot (its log index) and lists the records committed since,
so compaction never blocks RAFT's thread on the Executor's state; the snapshot itself is
taken afterwards on the Executor's thread (``SnapshotDue``). A replica restarting, or one
too far behind the leader, loads a dump and is told to install its snapshot (``Install``).

A part of ``Consensus`` with its own state (the records by log index, under a lock: written
on pysyncobj's thread, pruned on the loop's). It reads the snapshot index from the
:class:`~runtime.raft.decisions.ApplyLedger` and posts ``SnapshotDue``/``Install`` through the
function it is given. Relies on :mod:`runtime.raft.records` and :mod:`runtime.raft.durable`.
"""
from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence, Tuple

from runtime.raft.decisions import Action, Install, SnapshotDue
from runtime.raft.durable import fsync_dir, fsync_file
from runtime.raft.records import Record, _entry_from_json, _entry_to_json, _record_from_json, _record_to_json

if TYPE_CHECKING:
    from runtime.raft.decisions import ApplyLedger

#: the ``format`` field of our dumps
DUMP_FORMAT = 'orchestra-raft-dump/1'


class CompactionDump:
    """The records committed since the latest snapshot, and pysyncobj's serializer/deserializer.

    >>> dump = CompactionDump('kv/rep-0', ledger, post=print, durable=True)   # doctest: +SKIP
    >>> SyncObjConf(serializer=dump.serialize, deserializer=dump.deserialize)  # doctest: +SKIP
    """

    def __init__(self, name: str, ledger: 'ApplyLedger', post: Callable[[Action], None], durable: bool):
        self.name = name
        self._ledger, self._post, self._durable = ledger, post, durable
        self._records: Dict[int, List[Record]] = {}   # log index -> its records
        self._lock = threading.Lock()

    def committed(self, index: int, records: Sequence[Record]) -> None:
        """Entry ``index`` committed (pysyncobj's thread): keep its records until a snapshot covers them."""
        if index > self._ledger.snapshot_index:
            with self._lock:
                self._records[index] = list(records)

    def covered(self, index: int) -> None:
        """A snapshot covers the log up to ``index``: the dump need not list those records."""
        with self._lock:
            for i in [i for i in self._records if i <= index]:
                del self._records[i]

    def serialize(self, path: str, data: Tuple[Any, Any, Any]) -> None:
        """pysyncobj's log compaction: a small dump naming our latest snapshot and the records since."""
        last, prev, cluster = data
        with self._lock:
            snap = self._ledger.snapshot_index
            recs = sorted((i, r) for i, r in self._records.items() if snap < i <= last[1])
        doc = {'format': DUMP_FORMAT, 'last': _entry_to_json(last), 'prev': _entry_to_json(prev),
               'cluster': sorted(getattr(n, 'address', str(n)) for n in cluster),
               'snapshot_index': snap, 'origin': self.name,
               'records': [[i, [_record_to_json(x) for x in r]] for i, r in recs]}
        with open(path, 'w') as f:
            json.dump(doc, f, separators=(',', ':'))
            if self._durable:   # pysyncobj renames it, then cuts the journal (RaftLog.make_durable)
                f.flush()
                os.fsync(f.fileno())
        self._post(SnapshotDue())

    def deserialize(self, path: str) -> Tuple[Any, Any, Any]:
        """A dump (ours at restart, or the leader's when we are too far behind) -> pysyncobj's tuple."""
        with open(path) as f:
            doc = json.load(f)
        if self._durable:   # a dump received from the leader replaces our journal: on disk first
            fsync_file(path)
            fsync_dir(os.path.dirname(os.path.abspath(path)))
        if doc.get('format') != DUMP_FORMAT:
            raise ValueError(f'{path} is not an orchestra-nb RAFT dump')
        records = [(int(i), [_record_from_json(x) for x in r]) for i, r in doc['records']]
        with self._lock:
            for i, r in records:
                if i > self._ledger.snapshot_index:
                    self._records[i] = r
        last = _entry_from_json(doc['last'])
        self._post(Install(int(doc['snapshot_index']), records, last[1]))
        return last, _entry_from_json(doc['prev']), list(doc.get('cluster') or [])
