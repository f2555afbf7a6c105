"""Round trips and hostile input for runtime.codec (the columnar document wire format)."""

from __future__ import annotations

import json
import pickle
import struct
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import numpy as np
import pytest
from docarray import BaseDoc, DocList
from docarray.documents import ImageDoc, TextDoc
from docarray.typing import ID, ImageBytes, ImageNdArray, NdArray, NdArrayEmbedding, TextUrl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field
from typing_extensions import Annotated

from mutations import join_message as _join
from mutations import split_message as _split
from runtime.codec import decode_docs, encode_docs, register_doc_type, wire_schema


# --------------------------------------------------------------------------- doc classes

class Match(BaseDoc):
    text: Optional[str] = None
    embedding: Optional[NdArray] = None
    score: float = 0.0
    rank: int = 0


class Query(BaseDoc):
    text: str = ''
    embedding: Optional[NdArrayEmbedding] = None
    matches: DocList[Match] = DocList[Match]()
    text_matches: DocList[TextDoc] = DocList[TextDoc]()
    scores: List[float] = []


class Person(BaseDoc):
    name: str
    age: Optional[int] = None


class Scalars(BaseDoc):
    i: int = 0
    f: float = 0.0
    b: bool = False
    oi: Optional[int] = None
    of: Optional[float] = None
    ob: Optional[bool] = None
    tags: Dict[str, Any] = {}
    plain: dict = {}
    names: List[str] = []
    blob: Optional[bytes] = None
    author: Optional[Person] = None


class Unsupported(BaseDoc):
    """Tuples and sets are not JSON-able as-is: the whole list goes through protobuf."""
    text: Optional[str] = None
    pair: Tuple[int, int] = (0, 0)
    labels: Set[str] = set()


class Narrow(BaseDoc):
    text: str = ''
    extra: int = 7
    matches: DocList[TextDoc] = DocList[TextDoc]()


class Tensors(BaseDoc):
    t: Optional[NdArray] = None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True))
    if isinstance(a, BaseDoc):
        return type(a) is type(b) and all(_same(getattr(a, f), getattr(b, f)) for f in type(a).model_fields)
    if isinstance(a, (list, DocList)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _assert_same_docs(a: DocList, b: DocList) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert _same(x, y), (x, y)


def _roundtrip(docs: DocList, doc_type: Any = 'same') -> DocList:
    data = encode_docs(docs)
    assert isinstance(data, bytes)
    out = decode_docs(data, docs.doc_type if doc_type == 'same' else doc_type)
    assert isinstance(out, DocList)
    return out


# --------------------------------------------------------------------------- round trips

def test_textdoc_with_embeddings():
    docs = DocList[TextDoc]([TextDoc(text=f'doc {i}', embedding=np.random.rand(16).astype(np.float32))
                             for i in range(50)])
    out = _roundtrip(docs)
    assert out.doc_type is TextDoc
    _assert_same_docs(docs, out)
    d = out[3]
    assert type(d.embedding) is type(TextDoc(embedding=np.zeros(3)).embedding) is NdArrayEmbedding
    assert type(d.id) is ID and d.id == docs[3].id
    assert d.embedding.dtype == np.float32 and d.embedding.flags.writeable
    assert out.text == [f'doc {i}' for i in range(50)]
    assert wire_schema(encode_docs(docs))['fields']['embedding']['kind'] == 'tensor'


def test_textdoc_without_embeddings_and_other_str_types():
    docs = DocList[TextDoc]([TextDoc(text='a'), TextDoc(text=None, url='http://x.org/a.txt'),
                             TextDoc(text='ü€😀', bytes_=b'\x00\xff')])
    out = _roundtrip(docs)
    _assert_same_docs(docs, out)
    assert out[0].embedding is None and out[1].text is None
    assert type(out[1].url) is TextUrl and out[2].bytes_ == b'\x00\xff'


def test_imagedoc_types_match_validation():
    docs = DocList[ImageDoc]([ImageDoc(tensor=np.zeros((4, 4, 3), np.uint8), bytes_=b'png', url='a.png')
                              for _ in range(3)])
    out = _roundtrip(docs)
    _assert_same_docs(docs, out)
    assert type(out[0].tensor) is ImageNdArray and type(out[0].bytes_) is ImageBytes
    assert out[0].tensor.shape == (4, 4, 3)


def test_nested_matches_with_embeddings_and_scores():
    rng = np.random.default_rng(0)
    qs = []
    for i in range(6):
        matches = DocList[Match]([Match(text=f'm{i}.{j}', embedding=rng.random(8), score=j / 3, rank=j)
                                  for j in range(i)])
        tm = DocList[TextDoc]([TextDoc(text=f't{j}', embedding=rng.random(4).astype(np.float32))
                               for j in range(i % 3)])
        qs.append(Query(text=f'q{i}', embedding=rng.random(8), matches=matches, text_matches=tm,
                        scores=[m.score for m in matches]))
    docs = DocList[Query](qs)
    out = _roundtrip(docs)
    _assert_same_docs(docs, out)
    assert len(out[0].matches) == 0 and len(out[5].matches) == 5
    m = out[4].matches
    assert isinstance(m, DocList) and m.doc_type is Match
    assert type(m[0].embedding) is NdArray and isinstance(m[1].score, float)
    assert [x.rank for x in m] == [0, 1, 2, 3]
    assert type(out[2].text_matches[1].embedding) is NdArrayEmbedding
    schema = wire_schema(encode_docs(docs))
    assert schema['fields']['matches']['kind'] == 'doclist'
    assert schema['fields']['matches']['child']['count'] == sum(range(6))


def test_optional_fields_none():
    docs = DocList[Scalars]([Scalars(oi=1, of=None, ob=True), Scalars(oi=None, of=2.5, ob=None),
                             Scalars(), Scalars(oi=None)])
    out = _roundtrip(docs)
    _assert_same_docs(docs, out)
    assert [d.oi for d in out] == [1, None, None, None]
    assert [d.ob for d in out] == [True, None, None, None]


def test_empty_doclist():
    data = encode_docs(DocList[TextDoc]())
    schema = wire_schema(data)
    assert schema['count'] == 0 and schema['doc_type'] == 'TextDoc'
    out = decode_docs(data)
    assert len(out) == 0 and out.doc_type is TextDoc
    assert len(decode_docs(data, TextDoc)) == 0
    assert decode_docs(data, DocList[TextDoc]).doc_type is TextDoc  # DocList[X] accepted too
    assert len(decode_docs(encode_docs(DocList[Query]()), Query)) == 0
    assert len(decode_docs(encode_docs([]))) == 0


def test_plain_list_input_and_arbitrary_ids():
    ids = ['', 'a b', 'x\x00y', 'ü', '\x1f', '\uffff', '1' * 500]
    docs = [TextDoc(id=i, text=i) for i in ids]
    out = decode_docs(encode_docs(docs))
    assert out.doc_type is TextDoc
    assert [d.id for d in out] == ids and [d.text for d in out] == ids


def test_strings_containing_every_separator_use_offsets():
    texts = ['a\x00b', 'c\x1fd', 'e\x1ef', 'g\uffffh', '', 'z']
    docs = DocList[TextDoc]([TextDoc(text=t) for t in texts])
    assert _roundtrip(docs).text == texts


def test_lone_surrogates_survive():
    docs = DocList[TextDoc]([TextDoc(text='a\ud800b'), TextDoc(text='\udfff')])
    assert _roundtrip(docs).text == ['a\ud800b', '\udfff']


def test_mixed_embedding_shapes_and_dtypes():
    docs = DocList[Tensors]([Tensors(t=np.arange(3, dtype=np.float32)), Tensors(t=None),
                             Tensors(t=np.ones((2, 5))), Tensors(t=np.array(7, dtype=np.int8)),
                             Tensors(t=np.zeros((0, 4), np.uint16)),
                             Tensors(t=np.array([1 + 2j], np.complex64)),
                             Tensors(t=np.arange(6, dtype='>i4').reshape(2, 3))])
    out = _roundtrip(docs)
    _assert_same_docs(docs, out)
    assert all(type(d.t) is NdArray for d in out if d.t is not None)
    assert out[2].t.shape == (2, 5) and out[3].t.shape == ()


def test_stacked_tensor_edge_shapes():
    for arrays in ([np.array(i, np.float64) for i in range(4)],
                   [np.zeros((0, 3)) for _ in range(3)],
                   [np.arange(24).reshape(2, 3, 4) + i for i in range(3)],
                   [np.asfortranarray(np.arange(6.0).reshape(2, 3)) for _ in range(2)],
                   [np.arange(10.0)[::2] for _ in range(2)]):
        docs = DocList[Tensors]([Tensors(t=a) for a in arrays])
        _assert_same_docs(docs, _roundtrip(docs))


def test_int_float_bool_dict_list_bytes_and_nested_doc():
    docs = DocList[Scalars]([
        Scalars(i=-3, f=1.5, b=True, tags={'a': 1, 'b': [1, 2, {'c': None}], 'd': 'x'}, plain={'k': 2.0},
                names=['x', 'y'], blob=b'\x00\x01', author=Person(name='ann', age=3)),
        Scalars(i=2 ** 62, f=float('inf'), b=False, tags={}, names=[], blob=b'', author=None),
        Scalars(i=0, f=-0.0, tags={'nan': float('nan')}, author=Person(name='bob')),
    ])
    out = _roundtrip(docs)
    _assert_same_docs(docs[:2], out[:2])
    assert np.isnan(out[2].tags['nan'])
    assert out[0].author.name == 'ann' and type(out[0].author) is Person and out[1].author is None
    assert out[2].author.age is None
    fields = wire_schema(encode_docs(docs))['fields']
    assert (fields['i']['kind'], fields['tags']['kind'], fields['author']['kind']) == ('int', 'json', 'doc')


def test_int_beyond_int64_goes_to_json_column():
    docs = DocList[Scalars]([Scalars(i=2 ** 80), Scalars(i=-1)])
    data = encode_docs(docs)
    assert wire_schema(data)['fields']['i']['kind'] == 'json'
    assert [d.i for d in decode_docs(data, Scalars)] == [2 ** 80, -1]


def test_union_field_uses_json_column_and_validates():
    class U(BaseDoc):
        v: Union[int, str] = 0

    docs = DocList[U]([U(v=1), U(v='1'), U(v='x')])
    data = encode_docs(docs)
    assert wire_schema(data)['encoding'] == 'columnar'
    assert [d.v for d in decode_docs(data, U)] == [1, '1', 'x']


def test_protobuf_fallback_for_unsupported_fields(monkeypatch):
    docs = DocList[Unsupported]([Unsupported(text='a', pair=(1, 2), labels={'x', 'y'}),
                                 Unsupported(pair=(3, 4))])
    data = encode_docs(docs)
    schema = wire_schema(data)
    assert schema['encoding'] == 'protobuf' and schema['count'] == 2
    assert schema['fields']['pair']['kind'] == 'other'

    def no_unpickling(*a, **k):
        raise AssertionError('decode must never unpickle')
    monkeypatch.setattr(pickle, 'loads', no_unpickling)
    monkeypatch.setattr(pickle, 'load', no_unpickling)
    out = decode_docs(data, Unsupported)
    assert out[0].pair == (1, 2) and out[0].labels == {'x', 'y'} and out[1].text is None
    assert out[0].id == docs[0].id
    rebuilt = decode_docs(data)  # class rebuilt from the schema
    assert rebuilt[0].pair == (1, 2) and rebuilt.doc_type.__name__ == 'Unsupported'


def test_tensor_with_unlisted_dtype_falls_back_to_protobuf():
    docs = DocList[Tensors]([Tensors(t=np.array(['2020-01-01'], dtype='datetime64[D]'))])
    data = encode_docs(docs)
    assert wire_schema(data)['encoding'] == 'protobuf'
    assert decode_docs(data, Tensors)[0].t.dtype == np.dtype('datetime64[D]')


def test_never_unpickles_columnar(monkeypatch):
    docs = DocList[Query]([Query(text='q', matches=DocList[Match]([Match(text='m', embedding=np.ones(2))]))])
    data = encode_docs(docs)
    monkeypatch.setattr(pickle, 'loads', lambda *a, **k: pytest.fail('unpickled'))
    monkeypatch.setattr(pickle, 'load', lambda *a, **k: pytest.fail('unpickled'))
    _assert_same_docs(docs, decode_docs(data, Query))


def test_decode_without_doc_type_known_and_dynamic():
    docs = DocList[TextDoc]([TextDoc(text='x', embedding=np.ones(3, np.float32))])
    assert decode_docs(encode_docs(docs)).doc_type is TextDoc

    qdocs = DocList[Query]([Query(text='q', embedding=np.ones(2), scores=[0.5],
                                  matches=DocList[Match]([Match(text='m', score=0.5,
                                                                embedding=np.ones(2))]))])
    out = decode_docs(encode_docs(qdocs))
    cls = out.doc_type
    assert cls is not Query and cls.__name__ == 'Query'
    assert set(cls.model_fields) == set(Query.model_fields)
    d = out[0]
    assert d.text == 'q' and d.id == qdocs[0].id and d.scores == [0.5]
    assert d.matches[0].score == 0.5 and isinstance(d.matches[0].embedding, np.ndarray)
    assert np.array_equal(d.embedding, np.ones(2))
    d.text = 'changed'
    assert decode_docs(encode_docs(out))[0].text == 'changed'
    # the rebuilt class is cached
    assert decode_docs(encode_docs(qdocs)).doc_type is cls
    # a registered class is used as is
    register_doc_type(Query)
    assert decode_docs(encode_docs(qdocs)).doc_type is Query


def test_decode_into_narrower_class_and_defaults():
    docs = DocList[Query]([Query(text='q', embedding=np.ones(2),
                                 text_matches=DocList[TextDoc]([TextDoc(text='t')]))])

    class Narrow2(BaseDoc):
        text: str = ''
        extra: int = 7
        missing: Optional[str] = None
        lst: List[int] = []

    out = decode_docs(encode_docs(docs), Narrow2)
    assert out.doc_type is Narrow2
    d = out[0]
    assert d.text == 'q' and d.extra == 7 and d.missing is None and d.id == docs[0].id
    d.lst.append(1)
    assert out[0].lst == [1] and Narrow2().lst == []  # mutable defaults are not shared
    assert not hasattr(d, 'embedding')


def test_decode_renamed_nested_class():
    tm = DocList[TextDoc]([TextDoc(text='a'), TextDoc(text='b')])
    docs = DocList[Query]([Query(text='q', text_matches=tm)])
    out = decode_docs(encode_docs(docs), Narrow)
    # Query.text_matches is not Narrow.matches: Narrow gets its default
    assert len(out[0].matches) == 0


def test_missing_required_field_raises():
    class NeedsX(BaseDoc):
        x: int

    with pytest.raises(ValueError, match='required'):
        decode_docs(encode_docs(DocList[TextDoc]([TextDoc(text='a')])), NeedsX)


def test_wire_types_are_coerced_or_rejected():
    class AsFloat(BaseDoc):
        i: float = 0.0

    class AsStr(BaseDoc):
        i: str = ''

    data = encode_docs(DocList[Scalars]([Scalars(i=3)]))
    out = decode_docs(data, AsFloat)
    assert out[0].i == 3.0 and type(out[0].i) is float
    with pytest.raises(ValueError, match="field 'i'"):
        decode_docs(data, AsStr)


def test_constraints_of_the_target_class_are_checked():
    class Short(BaseDoc):
        text: Annotated[str, Field(max_length=2)] = ''

    assert decode_docs(encode_docs(DocList[TextDoc]([TextDoc(text='ab')])), Short)[0].text == 'ab'
    with pytest.raises(ValueError):
        decode_docs(encode_docs(DocList[TextDoc]([TextDoc(text='abc')])), Short)


def test_none_into_non_optional_field_raises():
    class Req(BaseDoc):
        text: str = ''

    with pytest.raises(ValueError):
        decode_docs(encode_docs(DocList[TextDoc]([TextDoc(text='a'), TextDoc(text=None)])), Req)


def test_decoded_docs_are_mutable_and_reencodable():
    docs = DocList[Query]([Query(text=f'q{i}', embedding=np.zeros(4),
                                 matches=DocList[Match]([Match(text='m')])) for i in range(3)])
    out = decode_docs(encode_docs(docs), Query)
    out[0].embedding[0] = 5.0  # in place: must not touch other docs
    assert out[1].embedding[0] == 0.0 and out[0].embedding[0] == 5.0
    out[1].embedding = np.ones(4)
    assert type(out[1].embedding) is NdArrayEmbedding
    out[2].text = 'new'
    out[2].matches.append(Match(text='added', score=2.0))
    out[0].matches[0].score = 9.5
    with pytest.raises((ValueError, AttributeError)):
        out[0].score_that_does_not_exist = 1
    assert 'text' in out[2].model_fields_set
    again = decode_docs(encode_docs(out), Query)
    _assert_same_docs(out, again)
    assert again[0].embedding[0] == 5.0 and again[2].matches[1].text == 'added'
    assert again[0].matches[0].score == 9.5
    assert out == again
    out.append(Query(text='appended'))
    assert out.text[-1] == 'appended'
    assert out[0].model_dump()['text'] == 'q0'
    assert 'q1' in repr(out[1])


def test_wire_schema_is_cheap_and_describes_fields():
    data = encode_docs(DocList[TextDoc]([TextDoc(text='a')]))
    s = wire_schema(data)
    assert s['doc_type'] == 'TextDoc' and s['count'] == 1 and s['encoding'] == 'columnar'
    assert s['fields']['id'] == {'kind': 'str', 'type': 'ID', 'optional': True}


def test_memoryview_and_bytearray_input():
    docs = DocList[TextDoc]([TextDoc(text='a', embedding=np.ones(2))])
    data = encode_docs(docs)
    for buf in (bytearray(data), memoryview(data), memoryview(b'xx' + data)[2:]):
        out = decode_docs(buf, TextDoc)
        assert out[0].text == 'a' and np.array_equal(out[0].embedding, np.ones(2))


def test_mixed_doc_classes_rejected():
    with pytest.raises(TypeError):
        encode_docs([TextDoc(text='a'), ImageDoc()])


# --------------------------------------------------------------------------- malformed input

@pytest.fixture(scope='module')
def sample() -> bytes:
    docs = DocList[Query]([Query(text='q', embedding=np.ones(3), scores=[1.0],
                                 matches=DocList[Match]([Match(text='m', embedding=np.ones(2))]))
                           for _ in range(3)])
    return encode_docs(docs)


def test_truncated_input_raises_value_error(sample):
    for n in list(range(0, 64)) + list(range(64, len(sample), 7)):
        with pytest.raises(ValueError):
            decode_docs(sample[:n], Query)


def test_wrong_magic_and_version(sample):
    with pytest.raises(ValueError, match='magic'):
        decode_docs(b'XYZ' + sample[3:])
    with pytest.raises(ValueError, match='version'):
        decode_docs(sample[:3] + b'\x09' + sample[4:])
    with pytest.raises(ValueError):
        decode_docs(b'')
    with pytest.raises(ValueError):
        wire_schema(b'garbage!garbage!')


def test_object_dtype_in_header_rejected():
    data = encode_docs(DocList[Tensors]([Tensors(t=np.ones(2)), Tensors(t=np.ones(2))]))
    header, body = _split(data)
    col = header['root']['fields']['t']
    assert col['layout'] == 'stacked'
    for bad in ('|O', 'O', '<U4', 'V8', '<M8[D]', 'object', 17):
        col['dtype'] = bad
        with pytest.raises(ValueError, match='dtype'):
            decode_docs(_join(header, body), Tensors)


def test_inconsistent_headers_rejected(sample):
    header, body = _split(sample)

    def bad(mutate):
        h = json.loads(json.dumps(header))
        mutate(h)
        with pytest.raises(ValueError):
            decode_docs(_join(h, body), Query)
        with pytest.raises(ValueError):
            decode_docs(_join(h, body))

    bad(lambda h: h['root'].update(count=4))
    bad(lambda h: h['root'].update(count=-1))
    bad(lambda h: h['root'].update(count=10 ** 12))
    bad(lambda h: h['root'].update(count='3'))
    bad(lambda h: h['buffers'][0].__setitem__(1, 10 ** 9))
    bad(lambda h: h['buffers'].__setitem__(0, 'x'))
    bad(lambda h: h.update(buffers={}))
    bad(lambda h: h.update(mode='pickle'))
    bad(lambda h: h['root']['fields']['text'].update(kind='nope'))
    bad(lambda h: h['root']['fields']['text'].update(data=999))
    bad(lambda h: h['root']['fields']['text'].update(sep='ab'))
    bad(lambda h: h['root']['fields']['scores'].update(data=0))
    bad(lambda h: h['root']['fields']['embedding'].update(shape=[4]))
    bad(lambda h: h['root']['fields']['embedding'].update(shape=[-3]))
    bad(lambda h: h['root']['fields']['embedding'].update(layout='sparse'))
    bad(lambda h: h['root']['fields']['matches']['child'].update(count=2))
    bad(lambda h: h['root']['fields']['matches'].update(child=None))
    bad(lambda h: h['root'].update(fields=[]))
    bad(lambda h: h.update(root=[]))


def test_bad_offsets_rejected():
    data = encode_docs(DocList[TextDoc]([TextDoc(text='a\x00', bytes_=b'xy'),
                                         TextDoc(text='\x1f\x1e\uffff')]))
    header, body = _split(data)
    col = header['root']['fields']['bytes_']
    off_idx = col['offsets']
    start, n = header['buffers'][off_idx]
    offsets = np.frombuffer(body[start:start + n], '<i8').copy()
    offsets[1] = 99
    body2 = body[:start] + offsets.tobytes() + body[start + n:]
    with pytest.raises(ValueError, match='offsets'):
        decode_docs(_join(header, body2), TextDoc)


def test_bad_json_and_non_bytes():
    with pytest.raises(ValueError, match='JSON'):
        decode_docs(struct.pack('<3sBI', b'ONB', 1, 5) + b'{nope')
    with pytest.raises(ValueError):
        decode_docs(struct.pack('<3sBI', b'ONB', 1, 4) + b'[1] ')
    deep = '[' * 100000 + ']' * 100000
    with pytest.raises(ValueError):
        decode_docs(struct.pack('<3sBI', b'ONB', 1, len(deep)) + deep.encode())
    with pytest.raises(ValueError):
        decode_docs('a string')


def test_bad_protobuf_payload():
    data = encode_docs(DocList[Unsupported]([Unsupported(pair=(1, 2))]))
    header, body = _split(data)
    body = bytes(len(body) * [0xFF])
    with pytest.raises(ValueError, match='protobuf'):
        decode_docs(_join(header, body), Unsupported)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_corrupted_bytes_only_raise_value_error(sample, data):
    buf = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    try:
        decode_docs(bytes(buf), Query)
        decode_docs(bytes(buf))
    except ValueError:
        pass


# --------------------------------------------------------------------------- property test

_embedding = st.one_of(
    st.none(),
    st.integers(0, 6).flatmap(lambda n: st.lists(st.floats(allow_nan=False, width=32), min_size=n, max_size=n)
                              .map(lambda xs: np.array(xs, dtype=np.float32))),
)
_text_doc = st.builds(
    lambda id_, text, emb, url: TextDoc(id=id_, text=text, embedding=emb, url=url),
    st.text(min_size=0, max_size=12), st.one_of(st.none(), st.text(max_size=30)), _embedding,
    st.one_of(st.none(), st.just('http://example.com/a.txt')),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_text_doc, max_size=25))
def test_property_textdoc_roundtrip(docs):
    dl = DocList[TextDoc](docs)
    out = decode_docs(encode_docs(dl), TextDoc)
    _assert_same_docs(dl, out)
    again = decode_docs(encode_docs(out))
    _assert_same_docs(dl, again)


def test_deeply_nested_schema_rejected():
    data = encode_docs(DocList[TextDoc]([TextDoc(text='a')]))
    header, body = _split(data)
    schema = header['root']
    for _ in range(60):
        schema = {'doc_type': 'X', 'count': 1, 'fields': {'inner': {'kind': 'doc', 'present': 'all',
                                                                     'child': schema}}}
    header['root'] = schema
    with pytest.raises(ValueError, match='deep'):
        decode_docs(_join(header, body))
    with pytest.raises(ValueError, match='deep'):
        wire_schema(_join(header, body))


def test_hostile_field_names_rejected():
    data = encode_docs(DocList[TextDoc]([TextDoc(text='a')]))
    header, body = _split(data)
    for bad_name in ('__class__', 'model_dump', 'not an identifier', '_private'):
        h = json.loads(json.dumps(header))
        h['root']['doc_type'] = 'Other'
        h['root']['fields'][bad_name] = h['root']['fields'].pop('text')
        with pytest.raises(ValueError):
            decode_docs(_join(h, body))


def test_target_class_validators_run_on_decode():
    from pydantic import field_validator

    class Upper(BaseDoc):
        text: str = ''
        n: int = 0

        @field_validator('text')
        @classmethod
        def upper(cls, v: str) -> str:
            if v == 'forbidden':
                raise ValueError('no')
            return v.upper()

    out = decode_docs(encode_docs(DocList[TextDoc]([TextDoc(text='abc'), TextDoc(text='x')])), Upper)
    assert out.text == ['ABC', 'X'] and out[0].n == 0 and type(out[0]) is Upper
    with pytest.raises(ValueError):
        decode_docs(encode_docs(DocList[TextDoc]([TextDoc(text='forbidden')])), Upper)


class _RowsInner(BaseDoc):
    x: int = 0


class _RowsDoc(BaseDoc):
    text: str = ''
    emb: Optional[NdArray[3]] = None
    tags: Dict[str, int] = {}
    items: DocList[_RowsInner] = DocList[_RowsInner]()
    one: Optional[_RowsInner] = None
    floats: List[float] = []
    blob: Optional[bytes] = None


def test_decode_rows_gives_plain_values_without_building_documents():
    """``decode_rows`` (the HTTP door writes JSON from it): the values ``decode_docs`` would hold, as dicts."""
    from runtime.codec import decode_rows
    from runtime.protocol import ProtocolError
    docs = DocList[_RowsDoc]([_RowsDoc(id='1', text='a', emb=np.arange(3.0), tags={'k': 1},
                                       items=[_RowsInner(id='i', x=2)], one=_RowsInner(id='o', x=3), floats=[1.5],
                                       blob=b'xy'), _RowsDoc(id='2')])
    data = encode_docs(docs)
    rows = decode_rows(data)
    want = [d.model_dump() for d in decode_docs(data, _RowsDoc)]
    assert [r.keys() == w.keys() for r, w in zip(rows, want)] == [True, True]
    assert rows[0]['emb'].tolist() == [0.0, 1.0, 2.0] and rows[1]['emb'] is None
    for r, w in zip(rows, want):
        assert {k: v for k, v in r.items() if k != 'emb'} == {k: v for k, v in w.items() if k != 'emb'}
    with pytest.raises(ProtocolError):
        decode_rows(data[:len(data) // 2])
