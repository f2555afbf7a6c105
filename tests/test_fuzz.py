"""Fuzzing: random bytes and mutated valid messages thrown at the decoder, a real replica and a real
gateway. The decoder may raise only ProtocolError; the servers answer (a reply frame, or
INVALID_ARGUMENT), never crash or hang, and still serve a normal request afterwards."""

from __future__ import annotations

import json
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
from test_codec import Match, Person, Query, Scalars, Tensors, Unsupported, _join, _split

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
_HOSTILE_VALUES = [None, True, -1, 0, 1, 7, 2 ** 31, 2 ** 63 - 1, 2 ** 64, 10 ** 6, 1.5, 'x', '<f8', '|O',
                   [], [0, 10 ** 9], {}, {'kind': 'doc'}]


def _leaves(node: Any, path: tuple = ()) -> list:
    """Paths of every value in a JSON tree (dict keys and list indices)."""
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _leaves(v, path + (i,))
    return out


def _set(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node = tree
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return tree


@st.composite
def hostile_bodies(draw) -> bytes:
    """Random bytes, or a valid message with flipped bytes, a cut, or one header value replaced
    (counts and sizes inflated, types changed)."""
    data = draw(st.sampled_from(SAMPLES))
    how = draw(st.sampled_from(('random', 'flip', 'truncate', 'inflate', 'retype')))
    if how == 'random':
        return draw(st.sampled_from((b'', b'ONB\x01'))) + draw(st.binary(max_size=200))
    if how == 'flip':
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        return bytes(buf)
    if how == 'truncate':
        return data[:draw(st.integers(0, len(data) - 1))]
    header, body = _split(data)
    path = draw(st.sampled_from(_leaves(header)))
    if how == 'inflate':
        value = draw(st.sampled_from([10 ** 6, 2 ** 31, 2 ** 40, 2 ** 63 - 1, 2 ** 64, -1, 3, 4]))
    else:
        value = json.loads(json.dumps(draw(st.sampled_from(_HOSTILE_VALUES))))  # a fresh copy
    header = _set(header, path, value)
    if not isinstance(header, dict):
        return _join({'root': header}, body)
    return _join(header, body)


@pytest.fixture(autouse=True, scope='module')
def own_class_cache():
    """Rebuilt classes from fuzzed schemas must not fill the process-wide cache of other tests."""
    saved = dict(codec._DYNAMIC)
    yield
    codec._DYNAMIC.clear()
    codec._DYNAMIC.update(saved)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_bodies(), st.sampled_from([None, TextDoc, Query, Scalars, Tensors, Person]))
def test_decoder_raises_only_protocol_error(data, doc_type):
    try:
        decode_docs(data, doc_type)
    except ProtocolError:
        pass


@st.composite
def hostile_frames(draw) -> bytes:
    """A whole Call frame: random bytes, a good header with a hostile body, or a hostile header."""
    how = draw(st.sampled_from(('raw', 'body', 'body', 'header')))
    if how == 'raw':
        return draw(st.binary(max_size=200)) if draw(st.booleans()) else b'ON1' + draw(hostile_bodies())
    if how == 'body':
        return protocol.pack({'endpoint': '/upper', 'parameters': {}}, draw(hostile_bodies()))
    header = {'endpoint': '/upper', 'parameters': {}, 'request_id': 'r'}
    key = draw(st.sampled_from(sorted(header) + ['consistency', 'allow_partial', 'no_reduce']))
    header[key] = json.loads(json.dumps(draw(st.sampled_from(_HOSTILE_VALUES))))
    return protocol.pack(header, SAMPLES[-1])


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
            @given(hostile_frames(), st.sampled_from(sorted(targets)))
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
