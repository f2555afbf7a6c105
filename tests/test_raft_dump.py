"""pysyncobj's compaction dump, our way (runtime/raft/dump.py), in process."""
import json

import pytest

from runtime.raft.decisions import ApplyLedger, Install, SnapshotDue
from runtime.raft.dump import CompactionDump
from runtime.raft.records import Record


def rec(n, body=None):
    return Record(f'{n:032x}', '/index', '{}', 3, 'd', 0, body)


def test_the_dump_lists_the_records_a_snapshot_does_not_cover_and_loads_back(tmp_path):
    posted = []
    ledger = ApplyLedger()
    dump = CompactionDump('kv/rep-0', ledger, posted.append, durable=True)
    for i in range(1, 6):
        dump.committed(i, [rec(i, b'abc' if i % 2 else None)])
    ledger.snapshot_taken(2)
    dump.covered(2)               # a snapshot at index 2: records 1-2 are in it
    path = str(tmp_path / 'dump.json')
    dump.serialize(path, ((b'cmd', 4, 1), (b'cmd', 3, 1), []))   # pysyncobj's (last, prev, cluster) entries
    assert posted == [SnapshotDue()]
    with open(path) as f:
        doc = json.load(f)
    assert doc['snapshot_index'] == 2 and [i for i, _ in doc['records']] == [3, 4]   # up to the dump's last entry

    loaded = []
    other = CompactionDump('kv/rep-1', ApplyLedger(), loaded.append, durable=False)
    last, prev, cluster = other.deserialize(path)
    assert (last[1], prev[1], cluster) == (4, 3, [])
    assert loaded == [Install(2, [(3, [rec(3, b'abc')]), (4, [rec(4)])], 4)]   # install snapshot >= 2, then these


def test_a_file_that_is_not_our_dump_is_refused(tmp_path):
    path = tmp_path / 'dump.json'
    path.write_text(json.dumps({'format': 'something else'}))
    with pytest.raises(ValueError, match='not an orchestra-nb RAFT dump'):
        CompactionDump('kv/rep-0', ApplyLedger(), [].append, durable=False).deserialize(str(path))
