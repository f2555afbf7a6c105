"""Every count and size a message declares is checked against the bytes present before anything is
built (docs/codec.md, Bounds); bad request headers are refused; servers answer INVALID_ARGUMENT."""

from __future__ import annotations

import json
import struct
import time
from typing import Optional

import grpc
import numpy as np
import pytest
from docarray import DocList
from docarray.base_doc.doc import BaseDocWithoutId
from docarray.documents import TextDoc
from docarray.typing import NdArray

from runtime import protocol
from runtime.codec import ProtocolError, decode_docs, encode_docs, wire_schema
from mutations import join_message as _join
from mutations import split_message as _split
from test_codec import Match, Query

BAD = 'malformed orchestra-nb document message: '


def _sample() -> bytes:
    docs = DocList[Query]([Query(text='q', embedding=np.ones(3), scores=[1.0],
                                 matches=DocList[Match]([Match(text='m', embedding=np.ones(2))]))
                           for _ in range(3)])
    return encode_docs(docs)


def refused(header: dict, body: bytes, doc_type=Query) -> str:
    """The ProtocolError message decoding (header, body) raises, typed and untyped."""
    data = _join(header, body)
    with pytest.raises(ProtocolError) as info:
        decode_docs(data, doc_type)
    with pytest.raises(ProtocolError) as untyped:
        decode_docs(data)
    assert str(untyped.value) == str(info.value)
    return str(info.value)


def mutated(mutate, data: Optional[bytes] = None) -> tuple:
    header, body = _split(data or _sample())
    mutate(header)
    return header, body


def million_doc_body() -> bytes:
    """The reported attack: a tiny body claiming a million TextDocs and storing none of them."""
    h = json.dumps({'mode': 'columnar', 'buffers': [],
                    'root': {'doc_type': 'TextDoc', 'count': 1000000, 'fields': {}}},
                   separators=(',', ':')).encode()
    return struct.pack('<3sBI', b'ONB', 1, len(h)) + h


def million_doc_frame(endpoint: str = '/upper') -> bytes:
    return protocol.pack({'endpoint': endpoint, 'parameters': {}}, million_doc_body())


# --------------------------------------------------------------------------- codec bounds

def test_million_docs_claimed_by_98_bytes_refused_before_building():
    body = million_doc_body()
    t0 = time.perf_counter()
    with pytest.raises(ProtocolError) as info:
        decode_docs(body, TextDoc)
    assert time.perf_counter() - t0 < 0.5
    assert str(info.value) == (BAD + 'TextDoc claims 1000000 documents but no column stores anything '
                               'per document (the message holds 98 bytes)')
    assert len(million_doc_frame('/')) < 140


def test_doc_count_larger_than_columns_hold():
    msg = refused(*mutated(lambda h: h['root'].update(count=1000000)))
    assert msg == BAD + ('Query.id claims 1000000 strings (999999 1-byte separators) but its buffer '
                         'holds 98 bytes (room for 99 strings at most)')
    msg = refused(*mutated(lambda h: h['root'].update(count=4)))   # a small lie is caught as well
    assert msg.startswith(BAD + 'Query.embedding claims 4 tensors of shape [3]')

    class Ints(BaseDocWithoutId):
        i: int = 0
    header, body = _split(encode_docs(DocList[Ints]([Ints(i=k) for k in range(3)])))
    header['root']['count'] = 5
    assert refused(header, body, Ints) == (BAD + 'Ints.i claims 5 int values of 8 bytes (40 bytes) '
                                           'but buffer 0 holds 24 bytes')


def test_only_absent_or_none_columns_cannot_carry_a_count():
    docs = DocList[TextDoc]([TextDoc(text='a'), TextDoc(text='b')])
    header, body = _split(encode_docs(docs))
    for name in ('id', 'text'):
        header['root']['fields'][name]['present'] = 'none'
    header['root']['count'] = 10 ** 6
    assert refused(header, body, TextDoc) == BAD + (
        f'TextDoc claims 1000000 documents but no column stores anything per document '
        f'(the message holds {len(_join(header, body))} bytes)')


def test_presence_mask_must_match_the_count():
    docs = DocList[TextDoc]([TextDoc(text='a'), TextDoc(), TextDoc(text='c')])
    header, body = _split(encode_docs(docs))
    mask = header['root']['fields']['text']['present']
    assert isinstance(mask, int)
    header['root']['count'] = 4
    header['root']['fields']['id']['present'] = 'none'
    assert refused(header, body, TextDoc) == BAD + (
        f'TextDoc.text claims a presence mask of 4 documents (4 bytes) but buffer {mask} holds 3 bytes')


def test_truncated_strings():
    # separator encoding: fewer bytes than the separators alone need
    header, body = _split(_sample())
    header['buffers'][1][1] = 1                 # Query.text: 'q\0q\0q' -> 'q'
    assert refused(header, body) == BAD + ('Query.text claims 3 strings (2 1-byte separators) but its '
                                           'buffer holds 1 bytes (room for 2 strings at most)')
    header['buffers'][1][1] = 3                 # 'q\0q': room for the separators, one value short
    assert refused(header, body) == BAD + 'string column holds 2 values, expected 3'
    # offsets encoding (the values contain every separator): offsets point past the data
    docs = DocList[TextDoc]([TextDoc(text='a\x00\x1f\x1e\uffff'), TextDoc(text='bc')])
    header, body = _split(encode_docs(docs))
    col = header['root']['fields']['text']
    assert col['enc'] == 'offsets'
    size = header['buffers'][col['data']][1]
    header['buffers'][col['data']][1] = size - 2
    assert refused(header, body, TextDoc) == BAD + (
        f'string offsets claim {size} bytes of data but the data buffer holds {size - 2} bytes')


def test_tensor_buffer_shorter_than_its_shape():
    msg = refused(*mutated(lambda h: h['root']['fields']['embedding'].update(shape=[300])))
    assert msg == BAD + ('Query.embedding claims 3 tensors of shape [300] and dtype <f8 (7200 bytes) '
                         'but buffer 2 holds 72 bytes')
    msg = refused(*mutated(lambda h: h['root']['fields']['embedding'].update(shape=[2 ** 40, 2 ** 40])))
    assert msg == BAD + f'Query.embedding: tensor shape {[2 ** 40, 2 ** 40]} is too large'

    class T(BaseDocWithoutId):
        t: Optional[NdArray] = None
    header, body = _split(encode_docs(DocList[T]([T(t=np.ones(2)), T(t=np.ones((2, 3)))])))
    col = header['root']['fields']['t']
    assert col['layout'] == 'ragged'
    ndims = header['buffers'][col['ndims']]
    body = bytearray(body)
    body[ndims[0]:ndims[0] + 8] = struct.pack('<q', 3)      # first tensor claims 3 dims: dims buffer too short
    assert refused(header, bytes(body), T) == BAD + (
        f'T.t claims 5 ragged tensor dims of 8 bytes (40 bytes) but buffer {col["dims"]} holds 24 bytes')


def test_nested_counts_must_add_up():
    msg = refused(*mutated(lambda h: h['root']['fields']['matches']['child'].update(count=1000)))
    assert msg == BAD + 'Query.matches: nested DocList lengths add up to 3 documents but the child schema claims 1000'
    header, body = _split(_sample())
    start = header['buffers'][header['root']['fields']['matches']['lengths']][0]
    body = body[:start] + np.array([1, 10 ** 6, 1], '<i8').tobytes() + body[start + 24:]
    assert refused(header, body) == BAD + ('Query.matches: nested DocList lengths must lie in 0..3 '
                                           '(the child count), got 1..1000000')

    class Inner(BaseDocWithoutId):
        x: int = 0

    class Outer(BaseDocWithoutId):
        inner: Optional[Inner] = None
    header, body = _split(encode_docs(DocList[Outer]([Outer(inner=Inner(x=1)), Outer(inner=Inner(x=2))])))
    header['root']['fields']['inner']['child']['count'] = 10 ** 6
    assert refused(header, body, Outer) == (BAD + 'Outer.inner: nested doc schema claims 1000000 documents '
                                            'but 2 values are present')


def test_deep_nesting_refused():
    header, body = _split(encode_docs(DocList[TextDoc]([TextDoc(text='a')])))
    schema = header['root']
    for _ in range(40):
        schema = {'doc_type': 'X', 'count': 1, 'fields': {'inner': {'kind': 'doc', 'present': 'all',
                                                                     'child': schema}}}
    header['root'] = schema
    path = 'X' + '.inner' * 33
    assert refused(header, body, None) == BAD + f'{path}: documents nested more than 32 levels deep'


def test_buffers_serve_one_column_and_never_overlap():
    msg = refused(*mutated(lambda h: h['root']['fields']['text'].update(data=0)))
    assert msg == BAD + 'Query.text strings: buffer 0 is already used by another column'
    msg = refused(*mutated(lambda h: h['buffers'][1].__setitem__(0, 8)))
    assert msg == BAD + ('buffer 1 starts at 8, inside the previous buffer (ends at 98); '
                         'buffers must follow each other without overlapping')


def test_json_column_needs_a_byte_per_value():
    header, body = _split(_sample())
    col = header['root']['fields']['scores']
    header['root']['fields']['embedding'] = {'kind': 'tensor', 'present': 'none'}
    header['root']['count'] = 3
    header['buffers'][col['data']][1] = 4
    assert refused(header, body).startswith(BAD + 'Query.scores claims 3 JSON values but its buffer holds 4 bytes')


def test_encoder_gives_every_count_bytes_to_stand_on():
    class Opt(BaseDocWithoutId):
        a: Optional[int] = None
        b: Optional[str] = None

    class Empty(BaseDocWithoutId):
        pass

    class Hollow(BaseDocWithoutId):
        t: NdArray

    class Outer(BaseDocWithoutId):
        inner: Optional[Opt] = None
        many: DocList[Opt] = DocList[Opt]()
    cases = [[Opt() for _ in range(5)], [Hollow(t=np.zeros((0, 4))) for _ in range(4)],
             [Outer(inner=Opt(), many=DocList[Opt]([Opt(), Opt()])) for _ in range(3)], [Outer()] * 2]
    for docs in cases:
        cls = type(docs[0])
        data = encode_docs(DocList[cls](docs))
        assert wire_schema(data)['encoding'] == 'columnar'
        assert len(decode_docs(data, cls)) == len(decode_docs(data)) == len(docs)
    data = encode_docs(DocList[Empty]([Empty() for _ in range(3)]))
    assert wire_schema(data)['encoding'] == 'protobuf' and len(decode_docs(data, Empty)) == 3


def test_documents_that_do_not_fit_the_class_are_a_protocol_error():
    from test_codec import Person
    with pytest.raises(ProtocolError, match="field 'name' required by Person is not in the message"):
        decode_docs(encode_docs(DocList[TextDoc]([TextDoc(text='a')])), Person)


# --------------------------------------------------------------------------- request headers

@pytest.mark.parametrize('header, message', [
    ({'endpoint': 123}, "request header field 'endpoint' is 123 (int); allowed: a string starting with '/'"),
    ({'endpoint': None}, "request header field 'endpoint' is None (NoneType); allowed: a string starting with '/'"),
    ({'endpoint': 'upper'}, "request header field 'endpoint' is 'upper' (str); allowed: a string starting with '/'"),
    ({'endpoint': '/x', 'parameters': 'x'}, "request header field 'parameters' is 'x' (str); allowed: a JSON object"),
    ({'parameters': [1]}, "request header field 'parameters' is [1] (list); allowed: a JSON object"),
    ({'request_id': 7}, "request header field 'request_id' is 7 (int); allowed: a string"),
    ({'consistency': 'sometimes'},
     "request header field 'consistency' is 'sometimes' (str); allowed: 'eventual' or 'strong'"),
    ({'allow_partial': 'yes'}, "request header field 'allow_partial' is 'yes' (str); allowed: true or false"),
    ({'no_reduce': 1}, "request header field 'no_reduce' is 1 (int); allowed: true or false"),
    ({'endpoint': 'x' * 200}, "request header field 'endpoint' is '" + 'x' * 76 + "... (str); "
                               "allowed: a string starting with '/'"),
])
def test_request_header_types_refused(header, message):
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.check_request_header(header)
    assert str(info.value) == message


def test_request_header_good_values_pass():
    for header in ({}, {'endpoint': '/'}, {'endpoint': '/x', 'parameters': {'k': [1]}, 'request_id': 'r',
                                           'consistency': 'strong', 'allow_partial': True, 'no_reduce': False},
                   {'parameters': None, 'consistency': None, 'something_new': object()}):
        assert protocol.check_request_header(header) is header


# --------------------------------------------------------------------------- real servers

def call_raw(address: str, frame: bytes, timeout: float = 10.0) -> bytes:
    """One raw ``Call`` over gRPC (a plain channel: what any client on the network can send)."""
    with grpc.insecure_channel(address, options=protocol.GRPC_OPTIONS) as channel:
        return channel.unary_unary(protocol.CALL)(frame, timeout=timeout)


def good_frame(text: str = 'hi') -> bytes:
    return protocol.pack({'endpoint': '/upper', 'parameters': {}},
                         encode_docs(DocList[TextDoc]([TextDoc(text=text)])))


def assert_serves(address: str, text: str = 'still here') -> None:
    header, body = protocol.unpack(call_raw(address, good_frame(text)))
    assert header['ok'], header
    assert decode_docs(bytes(body), TextDoc).text == [text.upper()]


def assert_refused(address: str, frame: bytes, *fragments: str) -> float:
    """The call ends with INVALID_ARGUMENT whose message holds ``fragments``; -> seconds taken."""
    t0 = time.perf_counter()
    with pytest.raises(grpc.RpcError) as info:
        call_raw(address, frame)
    took = time.perf_counter() - t0
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    for f in fragments:
        assert f in info.value.details(), info.value.details()
    return took


def test_replica_and_gateway_refuse_hostile_requests_and_keep_serving():
    from orchestra_nb import Deployment
    with Deployment(name='bounds', uses='sample_executors:Upper') as dep:
        replica = dep.status()['replicas'][0]
        address, gateway = replica['address'], f'127.0.0.1:{dep.port}'
        assert_serves(address)
        took = assert_refused(address, million_doc_frame(), 'TextDoc claims 1000000 documents')
        assert took < 2.0                                   # was 17 s and a 46 MB reply
        assert_serves(address)
        for target in (address, gateway):
            assert_refused(target, protocol.pack({'endpoint': 123, 'parameters': {}}, b''),
                           "request header field 'endpoint' is 123 (int)")
            assert_refused(target, protocol.pack({'endpoint': '/upper', 'parameters': 'x'}, b''),
                           "'parameters' is 'x' (str); allowed: a JSON object")
            assert_refused(target, b'not a frame at all', 'not an orchestra-nb frame')
            assert_serves(target)
        # through the gateway the replica's refusal comes back as an error reply naming it
        header, _ = protocol.unpack(call_raw(gateway, million_doc_frame()))
        assert not header['ok'] and 'INVALID_ARGUMENT' in header['error']['message']
        assert 'claims 1000000 documents' in header['error']['message']
        assert dep.post('/upper', TextDoc(text='after')).text == ['AFTER']
        after = dep.status()['replicas'][0]
        assert after['pid'] == replica['pid'] and after['state'] == 'ready'


def test_request_frames_add_a_request_id_to_a_header_encoded_once():
    frames = protocol.RequestFrames({'endpoint': '/x', 'parameters': {'k': 'v"'}})
    header, body = protocol.unpack(frames.pack('ab12' * 8, b'docs'))
    assert header == {'endpoint': '/x', 'parameters': {'k': 'v"'}, 'request_id': 'ab12' * 8}
    assert bytes(body) == b'docs'
    assert protocol.unpack(protocol.RequestFrames({}).pack('0', b''))[0] == {'request_id': '0'}
    with pytest.raises(ValueError, match='must be hex digits'):
        frames.pack('"}, "x": "', b'')
    with pytest.raises(ValueError, match='must not have one'):
        protocol.RequestFrames({'request_id': 'x'})
