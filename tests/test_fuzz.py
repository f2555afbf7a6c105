"""Fuzzing: random bytes and mutated valid messages thrown at the decoder, a real replica and a real
gateway. The decoder may raise only ProtocolError; the servers answer (a reply frame, or
INVALID_ARGUMENT), never crash or hang, and still serve a normal request afterwards."""

from __future__ import annotations

from typing import Any, List

import grpc
import numpy as np
import pytest
from docarray import DocList
from docarray.documents import TextDoc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import codec, protocol
from runtime.codec import ProtocolError, decode_docs, encode_docs
from test_bounds import assert_serves
from mutations import HOSTILE_VALUES, hostile_body, hostile_frame
from test_codec import Match, Person, Query, Scalars, Tensors, Unsupported

pytestmark = pytest.mark.slow


def _samples() -> List[bytes]:
    rng = np.random.default_rng(0)
    return [
        encode_docs(DocList[Query]([Query(text=f'q{i}', embedding=rng.random(3), scores=[1.0, 2.5],
                                          matches=DocList[Match]([Match(text='m', embedding=np.ones(2), rank=i)] * i))
                                    for i in range(3)])),
        encode_docs(DocList[TextDoc]([TextDoc(text='a\x00\x1f\x1e\uffff', bytes_=b'xy'), TextDoc(),
                                      TextDoc(text='c', url='http://example.com/a.txt')])),
        encode_docs(DocList[Scalars]([Scalars(i=1, oi=2, tags={'k': [1]}, names=['n'], blob=b'b',
                                              author=Person(name='p', age=3)), Scalars(f=1.5)])),
        encode_docs(DocList[Tensors]([Tensors(t=np.ones((2, 3), np.float32)), Tensors(t=np.arange(4)),
                                      Tensors()])),
        encode_docs(DocList[Unsupported]([Unsupported(pair=(1, 2), labels={'x'})])),
        encode_docs(DocList[TextDoc]([TextDoc(text='hello')])),
    ]


SAMPLES = _samples()
# hypothesis draws the random.Random that drives tests/mutations.py (and shrinks through it)
_rngs = st.randoms(use_true_random=False)
hostile_bodies = _rngs.map(lambda rng: hostile_body(rng, SAMPLES))   # a valid message mutated, or random bytes
hostile_frames = _rngs.map(lambda rng: hostile_frame(rng, SAMPLES))  # a whole Call frame


@pytest.fixture(autouse=True, scope='module')
def own_class_cache():
    """Rebuilt classes from fuzzed schemas must not fill the process-wide cache of other tests."""
    saved = dict(codec._DYNAMIC)
    yield
    codec._DYNAMIC.clear()
    codec._DYNAMIC.update(saved)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_bodies, st.sampled_from([None, TextDoc, Query, Scalars, Tensors, Person]))
def test_decoder_raises_only_protocol_error(data, doc_type):
    try:
        decode_docs(data, doc_type)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_bodies)
def test_decode_rows_raises_only_protocol_error(data):
    """The HTTP door's reader of replies (runtime.codec.decode_rows) has the decoder's bounds."""
    from runtime.codec import decode_rows
    try:
        decode_rows(data)
    except ProtocolError:
        pass


def test_replica_and_gateway_survive_hostile_frames():
    from orchestra_nb import Deployment
    with Deployment(name='fuzz', uses='sample_executors:Upper') as dep:
        replica = dep.status()['replicas'][0]
        targets = {'replica': replica['address'], 'gateway': f'127.0.0.1:{dep.port}'}
        channels = {name: grpc.insecure_channel(addr, options=protocol.GRPC_OPTIONS)
                    for name, addr in targets.items()}
        try:
            calls = {name: ch.unary_unary(protocol.CALL) for name, ch in channels.items()}
            seen = {'reply': 0, 'INVALID_ARGUMENT': 0}

            @settings(max_examples=100, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(hostile_frames, st.sampled_from(sorted(targets)))
            def fuzz(frame: bytes, target: str) -> None:
                try:
                    reply = calls[target](frame, timeout=10)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (target, e.code(), e.details())
                    seen['INVALID_ARGUMENT'] += 1
                else:
                    header, _ = protocol.unpack(reply)   # a well-formed reply, ok or an error
                    assert isinstance(header.get('ok'), bool)
                    seen['reply'] += 1

            fuzz()
            print('hostile frames:', seen)
            assert seen['INVALID_ARGUMENT'] > 0 and sum(seen.values()) >= 50, seen
        finally:
            for ch in channels.values():
                ch.close()
        for addr in targets.values():
            assert_serves(addr)
        after = dep.status()['replicas'][0]
        assert after['pid'] == replica['pid'] and after['state'] == 'ready'


# ----------------------------------------------------------------------------- a RAFT (pysyncobj) port

_RAFT_TYPES = ['append_entries', 'request_vote', 'response_vote', 'next_node_idx', 'apply_command',
               'apply_command_response', 'timeout_now', 'bogus']
_RAFT_FIELDS = ['term', 'commit_index', 'prevLogIdx', 'prevLogTerm', 'entries', 'last_log_index', 'last_log_term',
                'next_node_idx', 'reset', 'success', 'request_id', 'command', 'transmission', 'data',
                'serialized', 'log_idx', 'log_term', 'error']


@st.composite
def raft_messages(draw) -> Any:
    """What pysyncobj unpickles from a peer: a dict with a message type and hostile field values."""
    kind = draw(st.integers(0, 5))
    if kind == 0:   # not a dict at all
        return draw(st.sampled_from([None, 7, 'x', b'y', [], ['status'], ('a', 1), {'no': 'type'}]))
    if kind == 1:   # well-formed: a vote request or a leader's heartbeat with a higher term (forces an
        term = draw(st.integers(2, 10 ** 6))   # election; entries and commit indexes are left out: without
        if draw(st.booleans()):               # raft_password a peer port trusts its peers, docs/raft.md)
            return {'type': 'request_vote', 'term': term, 'last_log_index': draw(st.integers(0, 10 ** 6)),
                    'last_log_term': draw(st.integers(0, term))}
        return {'type': 'append_entries', 'term': term, 'commit_index': 0}
    msg = {'type': draw(st.sampled_from(_RAFT_TYPES))}
    for key in draw(st.lists(st.sampled_from(_RAFT_FIELDS), max_size=6, unique=True)):
        msg[key] = draw(st.sampled_from(HOSTILE_VALUES + [[(b'x', 1, 1)], [('cmd', 'i', 't')], 'start']))
    return msg


@st.composite
def raft_streams(draw) -> bytes:
    """Bytes for one TCP connection to a RAFT port: random, broken framing, broken zlib or pickle,
    or a handshake (a node id) followed by well-framed pysyncobj messages."""
    import pickle
    import struct
    import zlib

    def frame(payload: bytes) -> bytes:
        return struct.pack('i', len(payload)) + payload

    how = draw(st.sampled_from(('random', 'length', 'zlib', 'pickle', 'messages', 'messages')))
    if how == 'random':
        return draw(st.binary(max_size=300))
    if how == 'length':   # a length prefix (negative, huge, short) and junk
        return struct.pack('i', draw(st.sampled_from([-1, 0, 3, 2 ** 31 - 1]))) + draw(st.binary(max_size=100))
    if how == 'zlib':     # framed, not zlib
        return frame(draw(st.binary(max_size=200)))
    if how == 'pickle':   # framed zlib, not a pickle
        return frame(zlib.compress(draw(st.binary(max_size=200))))
    hello = draw(st.sampled_from(['readonly', 'readonly', '127.0.0.1:1', 'nobody', 12, None, ['status']]))
    out = frame(zlib.compress(pickle.dumps(hello)))
    for msg in draw(st.lists(raft_messages(), min_size=1, max_size=4)):
        out += frame(zlib.compress(pickle.dumps(msg)))
    return out


def test_raft_port_survives_hostile_bytes_and_frames(tmp_path):
    """Random bytes and pysyncobj-shaped frames at one replica's RAFT port; the cluster then
    still accepts writes and every replica applies them."""
    import socket
    import time

    from conftest import wait_until
    from orchestra_nb import Client, Deployment
    from sample_executors import KV

    with Deployment(name='kvfuzz', uses=KV, replicas=3, stateful=True, workspace=str(tmp_path)) as dep:
        dep.post('/index', DocList[TextDoc]([TextDoc(id='before', text='b')]))
        target = ('127.0.0.1', dep.peer_ports_used[0][0])
        sent = {'connections': 0, 'bytes': 0}

        conns: List[socket.socket] = []   # kept open until the end: pysyncobj drops what it has not
        # parsed when the peer hangs up, so closing at once would test little

        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(raft_streams())
        def fuzz(stream: bytes) -> None:
            s = socket.create_connection(target, timeout=5)
            conns.append(s)
            try:
                s.sendall(stream)
            except OSError:   # it hung up on us: fine
                pass
            sent['connections'] += 1
            sent['bytes'] += len(stream)

        try:
            fuzz()
            time.sleep(1.0)   # let the node read every stream
        finally:
            for s in conns:
                s.close()
        terms = [(r.get('raft') or {}).get('term') for r in dep.status()['replicas']]
        print('RAFT port fuzz:', sent, 'terms after:', terms)
        assert sent['connections'] >= 50, sent
        ids = [f'after-{i}' for i in range(10)]
        deadline = time.monotonic() + 60
        while True:   # a hostile term may have forced an election: writes resume once it is over
            try:
                dep.post('/index', DocList[TextDoc]([TextDoc(id=i, text=i) for i in ids]), request_size=2,
                         timeout=20)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

        def held(i: int) -> set:
            host, port = dep.stages[0].replicas[i].address.rsplit(':', 1)
            c = Client(host=host, port=int(port))
            try:
                return set(c.post('/ids').id)
            finally:
                c.close()

        for i in range(3):
            wait_until(lambda i=i: {'before', *ids} <= held(i), 30, f'replica {i} to apply the writes after the fuzz')
