"""RAFT internals a user never calls but relies on: the user's process stays unpatched by
pysyncobj, the journal holds plain data only, records and outcomes keep their wire form."""
import _socket
import io
import os
import pickle
import shutil
import socket

import psutil
import pytest
from docarray import DocList
from docarray.documents import TextDoc

from conftest import wait_until
from orchestra_nb import Deployment
from runtime.raft.common import Outcome
from runtime.raft.records import INLINE_PAYLOAD_BYTES, Record, _record_from_json, _record_to_json
from sample_executors import KV


class _PlainOnly(pickle.Unpickler):
    """Unpickles builtin data only: any class reference (a NamedTuple's included) is refused.

    pysyncobj pickles with protocol 2, which writes ``bytes`` as a call of ``_codecs.encode``."""

    def find_class(self, module, name):
        if (module, name) == ('_codecs', 'encode'):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'the journal names a class: {module}.{name}')


def _journal_records(path):
    """Every record in a pysyncobj journal (a copy of it is read), as the plain tuples stored."""
    from runtime.raft import syncobj  # noqa: F401  (imports pysyncobj, undoing its socket patch)
    from pysyncobj.journal import FileJournal
    copy = f'{path}.copy'
    shutil.copy(path, copy)
    if os.path.exists(path + '.meta'):
        shutil.copy(path + '.meta', copy + '.meta')
    journal = FileJournal(copy)
    try:
        commands = [journal[k][0] for k in range(len(journal))]
    finally:
        journal._destroy()   # closes the file (pysyncobj has no public close)
    out = []
    for command in commands:
        if command[:1] != b'\x00':   # not a regular command (a no-op, a version change)
            continue
        _, args = _PlainOnly(io.BytesIO(command[1:])).load()   # (method id, (records,))
        out.extend(args[0])
    return out


def test_stateful_deployment_leaves_socket_unpatched_and_journals_plain_tuples(tmp_path):
    listener = socket.socket()   # a connection of ours that net_connections() must decode
    listener.bind(('127.0.0.1', 0))
    listener.listen()
    try:
        dep = Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=str(tmp_path))
        assert socket.inet_ntop is _socket.inet_ntop, 'building a stateful Deployment patched socket.inet_ntop'
        docs = [TextDoc(id=f'd{i}', text=f'text {i}' + ('.' * 3000 if i % 2 else '')) for i in range(6)]
        with dep:
            assert socket.inet_ntop is _socket.inet_ntop, 'starting a stateful Deployment patched socket.inet_ntop'
            conns = psutil.Process().net_connections(kind='inet')   # pysyncobj's shim raises here
            assert ('127.0.0.1', listener.getsockname()[1]) in [tuple(c.laddr) for c in conns]
            dep.post('/index', DocList[TextDoc](docs), request_size=1)   # small (inline) and large bodies
            wait_until(lambda: all((r.get('raft') or {}).get('writes_applied') == 6
                                   for r in dep.status()['replicas']), 30, 'every replica to apply 6 writes')
    finally:
        listener.close()
    journal = os.path.join(tmp_path, 'kv', '.raft', 'shard-0', 'rep-0', 'journal.bin')
    stored = _journal_records(journal)
    writes = [t for t in stored if t[1] is not None]
    assert all(type(t) is tuple and len(t) in (6, 7) for t in stored), stored
    assert sorted(len(t) for t in writes) == [6, 6, 6, 7, 7, 7]   # large bodies are not in the log
    recs = [Record.from_wire(t) for t in writes]
    assert all(r.endpoint == '/index' and r.origin in (0, 1, 2) and len(r.rid) == 32 for r in recs)
    assert all((r.body is not None) == (r.size <= INLINE_PAYLOAD_BYTES) for r in recs)


def test_record_wire_and_json_forms():
    small = Record('a' * 32, '/index', '{}', 3, 'd', 1, b'abc')
    large = Record('b' * 32, '/index', '{"k":1}', 5000, 'e', 2)
    barrier = Record('c' * 32, None, '', 0, '', 0)
    assert small.to_wire() == ('a' * 32, '/index', '{}', 3, 'd', 1, b'abc')
    assert large.to_wire() == ('b' * 32, '/index', '{"k":1}', 5000, 'e', 2)
    for rec in (small, large, barrier):
        assert type(rec.to_wire()) is tuple
        assert Record.from_wire(rec.to_wire()) == rec
        assert _record_from_json(_record_to_json(rec)) == rec
    assert barrier.is_barrier and not large.is_barrier
    # what earlier versions wrote: a 7th field of None means no inline body
    assert Record.from_wire(('a' * 32, '/x', '', 0, '', 0, None)).body is None


def test_outcomes_are_pysyncobjs_codes():
    from runtime.raft.syncobj import FAIL_REASON
    pairs = {'SUCCESS': Outcome.COMMITTED, 'QUEUE_FULL': Outcome.QUEUE_FULL, 'MISSING_LEADER': Outcome.NO_LEADER,
             'DISCARDED': Outcome.DISCARDED, 'NOT_LEADER': Outcome.NOT_LEADER,
             'LEADER_CHANGED': Outcome.LEADER_CHANGED, 'REQUEST_DENIED': Outcome.DENIED,
             'UNKNOWN_OUTCOME': Outcome.UNKNOWN}
    for name, ours in pairs.items():
        assert getattr(FAIL_REASON, name) == ours
    assert Outcome.of(4) is Outcome.NOT_LEADER
    assert Outcome.of('x') is Outcome.UNKNOWN and Outcome.of(99) is Outcome.UNKNOWN
    assert Outcome.REFUSED.label == 'refused' and int(Outcome.NO_ANSWER) == -1


@pytest.mark.parametrize('code', list(Outcome))
def test_outcome_travels_as_a_plain_int(code):
    import json
    assert json.loads(json.dumps({'outcomes': [code]})) == {'outcomes': [int(code)]}


def test_shrink_journal_gives_back_the_space_compaction_freed(tmp_path):
    """pysyncobj's journal file only grows; cut to its entries at start, it reads the same."""
    from runtime.raft.syncobj import shrink_journal
    from pysyncobj.journal import FileJournal
    path = str(tmp_path / 'journal.bin')
    journal = FileJournal(path)
    for k in range(1, 401):
        journal.add(b'\x00' + bytes(2000), k, 1)
    journal.deleteEntriesTo(397)   # log compaction: 3 entries left
    journal._destroy()
    grown = os.path.getsize(path)
    assert grown > 800_000
    assert shrink_journal(path, durable=True) > 0
    assert os.path.getsize(path) < 10_000
    assert shrink_journal(path) == 0   # nothing more to give back
    journal = FileJournal(path)
    try:
        assert [journal[k][1] for k in range(len(journal))] == [398, 399, 400]
        journal.add(b'\x00' + bytes(5000), 401, 1)   # and it grows again
        assert journal[-1][1] == 401
    finally:
        journal._destroy()
    assert shrink_journal(str(tmp_path / 'missing.bin')) == 0


@pytest.mark.parametrize('size', [0, 1, 1000, 0xFFFF, 0xFFFF + 1, 200_000])
def test_messages_travel_as_stored_zlib_streams_any_zlib_reads(size):
    """pysyncobj's peers decompress with zlib: the stored form must be a valid zlib stream."""
    import zlib
    from runtime.raft.syncobj import stored_zlib
    data = os.urandom(size)
    packed = stored_zlib(data, 3)
    assert zlib.decompress(packed) == data
    assert len(packed) <= size + 6 + 5 * (size // 0xFFFF + 1)
    with pytest.raises(zlib.error):   # corrupted: refused (pysyncobj then drops the connection)
        zlib.decompress(packed[:-1] + bytes([packed[-1] ^ 1]))


def test_replicas_send_pysyncobj_messages_uncompressed(monkeypatch):
    from pysyncobj import tcp_connection
    from runtime.raft.syncobj import _send_messages_stored, _StoredZlib
    monkeypatch.setattr(tcp_connection, 'zlib', tcp_connection.zlib)   # put back after the test
    _send_messages_stored()   # what building a RaftLog does (replicas only)
    assert tcp_connection.zlib is _StoredZlib
