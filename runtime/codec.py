"""Columnar wire format for docarray ``DocList``s -- the only module that knows it.

Layout of one message (all integers little-endian)::

    b'ONB' | version (1 byte) | header length (uint32) | header (UTF-8 JSON) | pad to 8 | data

The header is ``{"mode", "buffers": [[offset, nbytes], ...], "root": schema}``; buffer offsets
are relative to the data area and 8-byte aligned. A schema is ``{"doc_type": class name,
"count": n, "fields": {name: column}}`` with one column per field of the doc class (``id``
included). Every column has ``kind``, ``type`` (annotation name), ``optional`` and ``present``
(``"all"``, ``"none"`` or the buffer of a uint8 presence mask); only present values are stored:

* ``str``: the values joined by a separator that none of them contains (``sep``), or a blob
  plus int64 offsets; ``bytes``: blob plus offsets.
* ``int`` / ``float`` / ``bool``: one ``<i8`` / ``<f8`` / ``|b1`` array.
* ``tensor`` (numpy-backed): ``stacked`` -- one contiguous ``(n, *shape)`` block when every value
  shares shape and dtype -- or ``ragged``: per-value dtype code, ndim, dims and byte offsets.
* ``doclist``: int64 lengths per parent plus a ``child`` schema holding all nested docs.
* ``doc``: a ``child`` schema of the present values. ``json``: one JSON array (lists/dicts).

Values that fit no column but are JSON-able (unions, str enums) use ``json`` and are validated
on decode; anything else (tuples, sets, torch tensors, unlisted dtypes) sends the whole DocList
as one docarray ``protobuf-array`` message in buffer 0 with ``mode="protobuf"`` (not the
per-doc ``protobuf`` stream, whose uint64 doc count lets a corrupt message loop ~forever).
Decoding never unpickles: it uses only ``json``, ``np.frombuffer`` with allow-listed dtypes,
and protobuf. Before it builds anything, every count and size the header declares is checked
against the bytes present (:class:`_Bounds`); bad input raises ``ProtocolError``.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import itertools
import json
import re
import struct
import threading
import types
import typing
from operator import itemgetter
from typing import Any, Iterable, Iterator, Optional, Union, get_args, get_origin

import numpy as np
import pydantic
from docarray import BaseDoc, DocList
from docarray.base_doc.any_doc import AnyDoc
from docarray.base_doc.doc import BaseDocWithoutId
from docarray.typing.tensor.abstract_tensor import AbstractTensor

from runtime.protocol import ProtocolError

__all__ = ['encode_docs', 'decode_docs', 'decode_rows', 'wire_schema', 'register_doc_type', 'ProtocolError']

MAGIC = b'ONB'
VERSION = 1
_PREFIX = struct.Struct('<3sBI')
_MAX_DEPTH = 32
_SEPARATORS = ('\x00', '\x1f', '\x1e', '\uffff')
_DTYPE_RE = re.compile(r'^[<>|]?(b1|i1|i2|i4|i8|u1|u2|u4|u8|f2|f4|f8|c8|c16)$')
_I8 = np.dtype('<i8')
_U1 = np.dtype('|u1')

_new = object.__new__
_set_dict = pydantic.BaseModel.__dict__['__dict__'].__set__
_set_fields_set = pydantic.BaseModel.__dict__['__pydantic_fields_set__'].__set__
_set_extra = pydantic.BaseModel.__dict__['__pydantic_extra__'].__set__
_set_private = pydantic.BaseModel.__dict__['__pydantic_private__'].__set__


class _Fallback(Exception):
    """Raised while encoding when a column cannot be expressed: use protobuf instead."""


# --------------------------------------------------------------------------- type analysis

def _is_tensor_type(t: Any) -> bool:
    return isinstance(t, type) and (issubclass(t, np.ndarray) or issubclass(t, AbstractTensor))


_CLASSIFY_CACHE: dict = {}


def _classify(ann: Any) -> tuple[str, Any, bool]:
    """Map a field annotation to ``(kind, base type, optional)``; kind ``other`` = unsupported."""
    try:
        return _CLASSIFY_CACHE[ann]
    except (KeyError, TypeError):
        pass
    res = _classify_uncached(ann)
    try:
        _CLASSIFY_CACHE[ann] = res
    except TypeError:
        pass
    return res


def _classify_uncached(ann: Any) -> tuple[str, Any, bool]:
    optional = False
    origin = get_origin(ann)
    if origin is Union or origin is types.UnionType:
        args = get_args(ann)
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) == 1:
            ann = rest[0]
        elif rest and all(_is_tensor_type(a) for a in rest):
            return 'tensor', Union[tuple(rest)], optional
        else:
            return 'other', ann, optional
    dl = get_origin(ann) or ann  # DocList[X] is a typing alias of a generated DocList subclass
    if isinstance(dl, type) and issubclass(dl, DocList):
        return 'doclist', ann, optional
    if isinstance(ann, type) and issubclass(ann, BaseDocWithoutId):
        return 'doc', ann, optional
    origin = get_origin(ann)
    if ann in (list, dict) or origin in (list, dict):
        return 'json', ann, optional
    if not isinstance(ann, type) or origin is not None:
        return 'other', ann, optional
    if issubclass(ann, enum.Enum):
        return 'other', ann, optional
    if _is_tensor_type(ann):
        return 'tensor', ann, optional
    if issubclass(ann, str):
        return 'str', ann, optional
    if issubclass(ann, bytes):
        return 'bytes', ann, optional
    if ann is bool:
        return 'bool', ann, optional
    if ann is int:
        return 'int', ann, optional
    if ann is float:
        return 'float', ann, optional
    return 'other', ann, optional


def _type_name(kind: str, ann: Any) -> str:
    if kind == 'json':
        return 'dict' if (ann is dict or get_origin(ann) is dict) else 'list'
    if kind == 'doclist':
        return 'DocList'
    if isinstance(ann, type):
        return ann.__name__
    return 'AnyTensor' if kind == 'tensor' else str(ann)


_ADAPTERS: dict = {}


def _adapter(ann: Any) -> pydantic.TypeAdapter:
    try:
        return _ADAPTERS[ann]
    except (KeyError, TypeError):
        pass
    try:
        ad = pydantic.TypeAdapter(ann, config=pydantic.ConfigDict(arbitrary_types_allowed=True))
    except pydantic.PydanticUserError:  # models bring their own config
        ad = pydantic.TypeAdapter(ann)
    try:
        _ADAPTERS[ann] = ad
    except TypeError:
        pass
    return ad


def _field_annotation(finfo: Any) -> Any:
    """The field's annotation, with constraint metadata re-attached (so validation keeps it)."""
    if finfo.metadata:
        return typing.Annotated[(finfo.annotation, *finfo.metadata)]
    return finfo.annotation


# --------------------------------------------------------------------------- encoding

class _Writer:
    """Collects column buffers, 8-byte aligned, and hands out their indices."""

    def __init__(self) -> None:
        self.parts: list = []
        self.spans: list = []
        self.pos = 0

    def add(self, buf: Any) -> int:
        if isinstance(buf, np.ndarray):
            buf = np.ascontiguousarray(buf)
            n = buf.nbytes
            buf = memoryview(buf).cast('B') if n else b''
        else:
            n = len(buf)
        pad = -self.pos % 8
        if pad:
            self.parts.append(b'\0' * pad)
            self.pos += pad
        self.parts.append(buf)
        self.spans.append([self.pos, n])
        self.pos += n
        return len(self.spans) - 1


def _jsonable(v: Any, depth: int = 0) -> bool:
    t = type(v)
    if t is int or t is float or t is bool or v is None or isinstance(v, str):
        return True
    if depth > 64:
        return False
    if t is list:
        return all(_jsonable(x, depth + 1) for x in v)
    if t is dict:
        return all(isinstance(k, str) and _jsonable(x, depth + 1) for k, x in v.items())
    return False


def _pack_blob(w: _Writer, blobs: list) -> dict:
    lengths = np.fromiter(map(len, blobs), dtype=_I8, count=len(blobs))
    offsets = np.zeros(len(blobs) + 1, dtype=_I8)
    np.cumsum(lengths, out=offsets[1:])
    return {'enc': 'offsets', 'offsets': w.add(offsets), 'data': w.add(b''.join(blobs))}


def _encode_str(w: _Writer, vals: list) -> dict:
    if not vals:
        return {'enc': 'sep', 'sep': '\x00', 'data': w.add(b'')}
    for sep in _SEPARATORS:
        joined = sep.join(vals)
        if joined.count(sep) == len(vals) - 1:
            return {'enc': 'sep', 'sep': sep, 'data': w.add(joined.encode('utf-8', 'surrogatepass'))}
    return _pack_blob(w, [s.encode('utf-8', 'surrogatepass') for s in vals])


def _encode_tensor(w: _Writer, vals: list) -> dict:
    dts = {v.dtype for v in vals}
    for dt in dts:
        if not _DTYPE_RE.match(dt.str):
            raise _Fallback(f'dtype {dt} is not allowed on the wire')
    block = None
    if not vals:
        block = np.empty((0,), np.dtype('<f4'))
    elif len(dts) == 1:
        first = vals[0]
        try:
            if first.ndim == 0:
                if all(v.ndim == 0 for v in vals):
                    block = np.stack(vals)
            elif len(set(map(len, vals))) == 1:  # TypeError on a 0-d value
                # concatenate insists on equal ndim and trailing dims; equal lengths do the rest
                block = np.concatenate(vals, axis=0).reshape((len(vals),) + first.shape)
        except (TypeError, ValueError):
            block = None
    if block is not None:
        return {'layout': 'stacked', 'dtype': block.dtype.str, 'shape': list(block.shape[1:]),
                'data': w.add(block)}
    dtypes = sorted({v.dtype.str for v in vals})
    code_of = {d: i for i, d in enumerate(dtypes)}
    codes = np.array([code_of[v.dtype.str] for v in vals], dtype=_I8)
    ndims = np.array([v.ndim for v in vals], dtype=_I8)
    dims = np.array([d for v in vals for d in v.shape], dtype=_I8)
    blobs = [np.ascontiguousarray(v).tobytes() for v in vals]
    packed = _pack_blob(w, blobs)
    return {'layout': 'ragged', 'dtypes': dtypes, 'codes': w.add(codes), 'ndims': w.add(ndims),
            'dims': w.add(dims), 'offsets': packed['offsets'], 'data': packed['data']}


def _single_class(docs: list, declared: Any) -> type:
    classes = {type(d) for d in docs}
    if not classes:
        return declared if isinstance(declared, type) else AnyDoc
    if len(classes) == 1:
        return classes.pop()
    if isinstance(declared, type) and declared is not AnyDoc and \
            all(issubclass(c, declared) for c in classes):
        return declared  # subclasses in a DocList[declared]: encode the declared fields
    raise _Fallback('documents of several classes')


def _encode_column(w: _Writer, kind: str, base: Any, vals: list, depth: int) -> dict:
    """Encode the present values of one field; may switch to ``json`` or raise _Fallback."""
    tset = {type(v) for v in vals}
    if kind == 'str' and all(issubclass(t, str) for t in tset):
        return _encode_str(w, vals)
    if kind == 'bytes' and all(issubclass(t, bytes) for t in tset):
        return _pack_blob(w, vals)
    if kind in ('int', 'float', 'bool') and tset <= {base}:
        dt = {'int': _I8, 'float': np.dtype('<f8'), 'bool': np.dtype('|b1')}[kind]
        try:
            arr = np.array(vals, dtype=dt)
        except OverflowError:
            arr = None
        if arr is not None:
            return {'dtype': dt.str, 'data': w.add(arr)}
    if kind == 'tensor' and all(issubclass(t, np.ndarray) for t in tset):
        return _encode_tensor(w, vals)
    if kind == 'doclist' and all(issubclass(t, DocList) for t in tset):
        lengths = np.fromiter(map(len, vals), dtype=_I8, count=len(vals))
        children = [d for dl in vals for d in dl]
        declared = getattr(base, 'doc_type', None)
        child_cls = _single_class(children, declared)
        child = _encode_schema(w, children, child_cls, depth + 1)
        return {'lengths': w.add(lengths), 'child': child}
    if kind == 'doc' and all(issubclass(t, BaseDocWithoutId) for t in tset):
        child = _encode_schema(w, vals, _single_class(vals, base), depth + 1)
        return {'child': child}
    if all(_jsonable(v) for v in vals):
        data = json.dumps(vals, ensure_ascii=False).encode('utf-8', 'surrogatepass')
        return {'kind': 'json', 'data': w.add(data)}
    raise _Fallback(f'values of types {sorted(t.__name__ for t in tset)} do not fit a {kind} column')


_ENCODE_FIELDS: dict = {}


def _encode_fields(cls: type) -> list:
    """``(name, kind, base, optional, type name)`` of each field of ``cls``, worked out once."""
    try:
        return _ENCODE_FIELDS[cls]
    except KeyError:
        pass
    out = []
    for name, finfo in cls.model_fields.items():
        kind, base, optional = _classify(finfo.annotation)
        out.append((name, kind, base, optional, _type_name(kind, base)))
    _ENCODE_FIELDS[cls] = out
    return out


def _encode_schema(w: _Writer, docs: list, cls: type, depth: int) -> dict:
    if depth > _MAX_DEPTH:
        raise _Fallback('documents nested too deeply')
    if cls is AnyDoc and docs:
        raise _Fallback('AnyDoc has no fixed fields')
    n = len(docs)
    dicts = [d.__dict__ for d in docs]
    fields: dict = {}
    for name, kind, base, optional, type_name in _encode_fields(cls):
        try:
            vals = list(map(itemgetter(name), dicts))
        except KeyError:
            vals = [dd.get(name) for dd in dicts]
        present = [v for v in vals if v is not None]  # not list.count: arrays compare elementwise
        nulls = n - len(present)
        col: dict = {'kind': kind, 'type': type_name, 'optional': optional or nulls > 0}
        if nulls == n:  # also n == 0
            col['present'] = 'none'
        elif nulls == 0:
            col['present'] = 'all'
        else:
            mask = np.array([v is not None for v in vals], dtype=np.uint8)
            col['present'] = w.add(mask)
            vals = present
        if nulls == n:
            if kind == 'doc' or kind == 'doclist':
                col['child'] = _schema_only(base.doc_type if kind == 'doclist' else base, depth + 1)
        else:
            col.update(_encode_column(w, kind, base, vals, depth))
        fields[name] = col
    if n and not any(map(_stores_per_doc, fields.values())):
        # the decoder wants every doc count carried by bytes (docs/codec.md, Bounds): all-None
        # or empty-tensor columns only -> give the first one an explicit presence mask
        if not fields:
            raise _Fallback(f'{cls.__name__} has no fields to carry a document count')
        col = next(iter(fields.values()))
        col['present'] = w.add(np.full(n, col['present'] == 'all', dtype=np.uint8))
    return {'doc_type': cls.__name__, 'count': n, 'fields': fields}


def _stores_per_doc(col: dict) -> bool:
    """Whether an encoded column's buffers grow with the document count."""
    p = col['present']
    if p == 'none':
        return False
    if p != 'all' or col.get('layout') != 'stacked':
        return True
    return all(col['shape'])  # stacked empty tensors take no bytes


def _schema_only(cls: Any, depth: int) -> dict:
    """Schema of a class with no documents (used for all-None nested fields)."""
    if not isinstance(cls, type) or not issubclass(cls, BaseDocWithoutId):
        cls = AnyDoc
    return _encode_schema(_Writer(), [], cls, depth)


def _describe_fields(cls: type) -> dict:
    out = {}
    for name, finfo in cls.model_fields.items():
        kind, base, optional = _classify(finfo.annotation)
        out[name] = {'kind': kind, 'type': _type_name(kind, base), 'optional': optional}
    return out


def _as_list_and_class(docs: Any) -> tuple[list, type]:
    try:
        from docarray import DocVec
        if isinstance(docs, DocVec):
            docs = docs.to_doc_list()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(docs, BaseDocWithoutId):
        docs = [docs]
    declared = getattr(docs, 'doc_type', None) if isinstance(docs, DocList) else None
    docs = list(docs)
    for d in docs[:1]:
        if not isinstance(d, BaseDocWithoutId):
            raise TypeError(f'encode_docs expects docarray documents, got {type(d).__name__}')
    try:
        cls = _single_class(docs, declared)
    except _Fallback:
        raise TypeError('encode_docs expects documents of a single class') from None
    return docs, cls


def encode_docs(docs: Union[DocList, Iterable[BaseDoc]]) -> bytes:
    """Encode a DocList (or a list of docs of one class) into the columnar wire format."""
    docs, cls = _as_list_and_class(docs)
    w = _Writer()
    try:
        root = _encode_schema(w, docs, cls, 0)
        mode = 'columnar'
    except _Fallback as why:
        w = _Writer()
        dl = DocList[cls].construct(docs) if cls is not AnyDoc else DocList.construct(docs)
        try:
            w.add(dl.to_bytes(protocol='protobuf-array', compress=None))
        except Exception as e:  # noqa: BLE001 - docarray raises several types here
            raise ValueError(f'cannot encode {cls.__name__} documents: columns refused them ({why}) '
                             f'and docarray protobuf failed too ({e})') from e
        root = {'doc_type': cls.__name__, 'count': len(docs), 'fields': _describe_fields(cls)}
        mode = 'protobuf'
    header = json.dumps({'mode': mode, 'buffers': w.spans, 'root': root},
                        separators=(',', ':')).encode()
    prefix = _PREFIX.pack(MAGIC, VERSION, len(header))
    pad = -(len(prefix) + len(header)) % 8
    return b''.join([prefix, header, b'\0' * pad, *w.parts])


# --------------------------------------------------------------------------- decoding

def _bad(msg: str) -> ProtocolError:
    return ProtocolError(f'malformed orchestra-nb document message: {msg}')


def _read_header(data: Any) -> tuple[memoryview, dict, int]:
    try:
        mv = memoryview(data).cast('B')
    except TypeError as e:
        raise ValueError(f'expected bytes-like data, got {type(data).__name__}') from e
    if len(mv) < _PREFIX.size:
        raise _bad(f'truncated ({len(mv)} bytes, not even a prefix)')
    magic, version, hlen = _PREFIX.unpack_from(mv)
    if magic != MAGIC:
        raise _bad(f'wrong magic {bytes(magic)!r} (expected {MAGIC!r})')
    if version != VERSION:
        raise _bad(f'unsupported format version {version} (this build reads {VERSION})')
    end = _PREFIX.size + hlen
    if end > len(mv):
        raise _bad(f'truncated header ({len(mv) - _PREFIX.size} of {hlen} bytes)')
    try:
        header = json.loads(str(mv[_PREFIX.size:end], 'utf-8'))
    except RecursionError:
        raise _bad('header nested too deeply') from None
    except ValueError as e:
        raise _bad(f'header is not valid JSON ({e})') from None
    if not isinstance(header, dict) or not isinstance(header.get('root'), dict):
        raise _bad('header is not an object with a root schema')
    data_start = end + (-end % 8)
    return mv, header, data_start


def _int(v: Any, what: str) -> int:
    if type(v) is not int or v < 0:
        raise _bad(f'{what} must be a non-negative integer, got {v!r}')
    return v


class _Reader:
    """Bounds-checked access to the buffers of one message."""

    def __init__(self, mv: memoryview, spans: Any, start: int) -> None:
        if not isinstance(spans, list):
            raise _bad('buffer table is not a list')
        size = len(mv) - start if start <= len(mv) else -1
        self.mv = mv
        self.spans = []
        end = 0
        for i, s in enumerate(spans):
            if not (isinstance(s, list) and len(s) == 2):
                raise _bad(f'buffer {i} entry is not [offset, nbytes]')
            off, n = _int(s[0], 'buffer offset'), _int(s[1], 'buffer size')
            if off + n > size:
                raise _bad(f'truncated: buffer {i} claims bytes {off}..{off + n} of the data area, '
                           f'which holds {max(size, 0)} bytes')
            if off < end:  # overlapping buffers would let two columns claim the same bytes
                raise _bad(f'buffer {i} starts at {off}, inside the previous buffer (ends at {end}); '
                           'buffers must follow each other without overlapping')
            end = off + n
            self.spans.append((start + off, n))

    def span(self, idx: Any) -> tuple[int, int]:
        if type(idx) is not int or not 0 <= idx < len(self.spans):
            raise _bad(f'unknown buffer index {idx!r}')
        return self.spans[idx]

    def raw(self, idx: Any) -> memoryview:
        off, n = self.span(idx)
        return self.mv[off:off + n]

    def array(self, idx: Any, dtype: Any, count: int, copy: bool = False) -> np.ndarray:
        """``count`` items of ``dtype`` from a buffer that must hold exactly that many."""
        dt = _dtype(dtype)
        off, n = self.span(idx)
        if n != count * dt.itemsize:
            raise _bad(f'buffer {idx} holds {n} bytes, expected {count} x {dt.itemsize}')
        if count == 0 or dt.itemsize == 0:
            return np.empty(count, dt)
        arr = np.frombuffer(self.mv, dtype=dt, count=count, offset=off)
        return arr.copy() if copy else arr


def _dtype(s: Any) -> np.dtype:
    if isinstance(s, np.dtype):
        return s
    if not isinstance(s, str) or not _DTYPE_RE.match(s):
        raise _bad(f'dtype {s!r} is not allowed (only bool, ints, uints, floats, complex)')
    return np.dtype(s)


def _check_offsets(offsets: np.ndarray, total: int, what: str) -> list:
    """Offsets must start at 0, never decrease and end exactly at the data buffer's size."""
    if len(offsets) == 0 or offsets[0] != 0:
        raise _bad(f'{what} offsets must start at 0')
    if offsets[-1] != total:
        raise _bad(f'{what} offsets claim {int(offsets[-1])} bytes of data but the data buffer '
                   f'holds {total} bytes')
    if len(offsets) > 1 and bool((np.diff(offsets) < 0).any()):
        raise _bad(f'{what} offsets decrease (at value {int(np.argmax(np.diff(offsets) < 0))})')
    return offsets.tolist()


_MAX_TENSOR_BYTES = 1 << 62  # numpy refuses shapes whose size (zero dims aside) reaches this


def _shown(v: Any, limit: int = 60) -> str:
    t = repr(v)
    return t if len(t) <= limit else t[:limit - 3] + '...'


class _Bounds:
    """Checks every count, length and size a header declares against the bytes present.

    Runs over the whole schema tree before anything is decoded or built: each level's document
    count must be carried by a column that stores something per document (a presence mask, fixed
    width values, offsets, a separator per string...), each buffer must have exactly the size its
    column implies and may serve one column only, nested counts must add up, and nesting is at
    most ``_MAX_DEPTH`` deep. So a message makes at most about one document per byte it holds.
    """

    def __init__(self, r: _Reader) -> None:
        self.r = r
        self.used: set = set()

    def buf(self, idx: Any, what: str) -> tuple[int, int]:
        """``(offset, nbytes)`` of a buffer not used by any other column."""
        if type(idx) is not int or not 0 <= idx < len(self.r.spans):
            raise _bad(f'{what}: unknown buffer index {_shown(idx)} (the message has {len(self.r.spans)})')
        if idx in self.used:
            raise _bad(f'{what}: buffer {idx} is already used by another column')
        self.used.add(idx)
        return self.r.spans[idx]

    def exact(self, idx: Any, path: str, claim: str, nbytes: int) -> int:
        """Offset of a buffer that must hold exactly ``nbytes`` (``claim`` says what they are)."""
        off, n = self.buf(idx, path)
        if n != nbytes:
            raise _bad(f'{path} claims {claim} ({nbytes} bytes) but buffer {idx} holds {n} bytes')
        return off

    def ints(self, idx: Any, path: str, count: int, unit: str) -> np.ndarray:
        off = self.exact(idx, path, f'{count} {unit} of 8 bytes', 8 * count)
        return np.frombuffer(self.r.mv, dtype=_I8, count=count, offset=off) if count else np.empty(0, _I8)

    def level(self, schema: Any, path: str, depth: int) -> None:
        """Check one schema level (and, recursively, its nested levels)."""
        if depth > _MAX_DEPTH:
            raise _bad(f'{path}: documents nested more than {_MAX_DEPTH} levels deep')
        if not isinstance(schema, dict):
            raise _bad(f'{path}: schema is not an object')
        count = _int(schema.get('count'), f'{path}: document count')
        fields = schema.get('fields')
        if not isinstance(fields, dict):
            raise _bad(f'{path}: schema fields is not an object')
        backed = False
        for name, col in fields.items():
            cpath = f'{path}.{name}'
            if not isinstance(col, dict):
                raise _bad(f'column {cpath} is not an object')
            backed = self.column(col, count, cpath, depth) or backed
        if count and not backed:
            raise _bad(f'{path} claims {count} documents but no column stores anything per document '
                       f'(the message holds {len(self.r.mv)} bytes)')

    def column(self, col: dict, count: int, path: str, depth: int) -> bool:
        """Check one column of ``count`` documents; whether its buffers grow with ``count``."""
        p = col.get('present', 'all')
        if p == 'all':
            present = count
        elif p == 'none':
            return False
        else:
            off = self.exact(p, path, f'a presence mask of {count} documents', count)
            present = int(np.count_nonzero(np.frombuffer(self.r.mv, _U1, count, off))) if count else 0
            if present == 0:
                return True
        return self.values(col, present, path, depth) or p != 'all'

    def values(self, col: dict, n: int, path: str, depth: int) -> bool:
        """Check the storage of ``n`` present values; whether it grows with ``n``."""
        kind = col.get('kind')
        if kind == 'str' and col.get('enc') == 'sep':
            sep = col.get('sep')
            if not isinstance(sep, str) or len(sep) != 1:
                raise _bad(f'{path}: string separator must be one character, got {_shown(sep)}')
            _, nbytes = self.buf(col.get('data'), f'{path} strings')
            width = len(sep.encode('utf-8', 'surrogatepass'))
            if n > 1 and nbytes < (n - 1) * width:
                raise _bad(f'{path} claims {n} strings ({n - 1} {width}-byte separators) but its '
                           f'buffer holds {nbytes} bytes (room for {nbytes // width + 1} strings at most)')
        elif kind in ('str', 'bytes'):
            self.ints(col.get('offsets'), path, n + 1, f'offsets ({n} values)')
            self.buf(col.get('data'), f'{path} data')
        elif kind in ('int', 'float', 'bool'):
            dt = _dtype(col.get('dtype'))
            if dt.kind not in {'int': 'iu', 'float': 'f', 'bool': 'b'}[kind]:
                raise _bad(f'{path}: {kind} column with dtype {dt}')
            self.exact(col.get('data'), path, f'{n} {kind} values of {dt.itemsize} bytes', n * dt.itemsize)
        elif kind == 'json':
            _, nbytes = self.buf(col.get('data'), f'{path} JSON')
            least = 2 * n + 1 if n else 2  # '[' + n values of >= 1 byte + n - 1 commas + ']'
            if nbytes < least:
                raise _bad(f'{path} claims {n} JSON values but its buffer holds {nbytes} bytes '
                           f'(at least {least} needed)')
        elif kind == 'tensor':
            return self.tensor(col, n, path)
        elif kind == 'doclist':
            lengths = self.ints(col.get('lengths'), path, n, 'nested DocList lengths')
            child = col.get('child')
            if not isinstance(child, dict):
                raise _bad(f'{path}: nested DocList has no child schema')
            total = _int(child.get('count'), f'{path}: nested document count')
            if n and (int(lengths.min()) < 0 or int(lengths.max()) > total):
                raise _bad(f'{path}: nested DocList lengths must lie in 0..{total} (the child count), '
                           f'got {int(lengths.min())}..{int(lengths.max())}')
            claimed = int(lengths.sum()) if n else 0  # no overflow: n and each length are bounded
            if claimed != total:
                raise _bad(f'{path}: nested DocList lengths add up to {claimed} documents but the '
                           f'child schema claims {total}')
            self.level(child, path, depth + 1)
        elif kind == 'doc':
            child = col.get('child')
            if not isinstance(child, dict):
                raise _bad(f'{path}: nested doc has no child schema')
            if child.get('count') != n:
                raise _bad(f'{path}: nested doc schema claims {_shown(child.get("count"))} documents '
                           f'but {n} values are present')
            self.level(child, path, depth + 1)
        else:
            raise _bad(f'{path}: unknown column kind {_shown(kind)}')
        return True

    def tensor(self, col: dict, n: int, path: str) -> bool:
        layout = col.get('layout')
        if layout == 'stacked':
            shape = col.get('shape')
            if not isinstance(shape, list) or len(shape) > 32:
                raise _bad(f'{path}: tensor shape must be a list of at most 32 dimensions, got {_shown(shape)}')
            shape = [_int(s, f'{path}: tensor dimension') for s in shape]
            dt = _dtype(col.get('dtype'))
            per, nonzero = 1, dt.itemsize
            for s in shape:
                per *= s
                nonzero *= max(s, 1)
            if nonzero >= _MAX_TENSOR_BYTES:
                raise _bad(f'{path}: tensor shape {shape} is too large')
            self.exact(col.get('data'), path, f'{n} tensors of shape {shape} and dtype {dt.str}',
                       n * per * dt.itemsize)
            return per > 0 or n == 0
        if layout == 'ragged':
            dtypes = col.get('dtypes')
            if not isinstance(dtypes, list) or not dtypes and n:
                raise _bad(f'{path}: ragged tensor dtypes must be a non-empty list, got {_shown(dtypes)}')
            for d in dtypes:
                _dtype(d)
            self.ints(col.get('codes'), path, n, 'ragged tensor dtype codes')
            ndims = self.ints(col.get('ndims'), path, n, 'ragged tensor ndims')
            if n and not (0 <= int(ndims.min()) and int(ndims.max()) <= 32):
                raise _bad(f'{path}: ragged tensor ndims must lie in 0..32, '
                           f'got {int(ndims.min())}..{int(ndims.max())}')
            self.ints(col.get('dims'), path, int(ndims.sum()) if n else 0, 'ragged tensor dims')
            self.ints(col.get('offsets'), path, n + 1, f'offsets ({n} tensors)')
            self.buf(col.get('data'), f'{path} data')
            return True
        raise _bad(f'{path}: unknown tensor layout {_shown(layout)}')


def _read_blobs(r: _Reader, col: dict, count: int, what: str) -> list:
    offsets = r.array(col['offsets'], _I8, count + 1)
    o = _check_offsets(offsets, r.span(col['data'])[1], what)  # before copying anything
    blob = bytes(r.raw(col['data']))
    return [blob[a:b] for a, b in zip(o, o[1:])]


def _decode_values(r: _Reader, col: dict, count: int, depth: int, target: Any) -> list:
    """Decode the ``count`` present values of a column; ``target`` guides nested/tensor types."""
    kind = col['kind']
    if kind == 'str':
        if col.get('enc') == 'sep':
            sep = col['sep']
            if not isinstance(sep, str) or len(sep) != 1:
                raise _bad('string separator must be one character')
            if count == 0:
                return []
            vals = str(r.raw(col['data']), 'utf-8', 'surrogatepass').split(sep)
            if len(vals) != count:
                raise _bad(f'string column holds {len(vals)} values, expected {count}')
            return vals
        return [b.decode('utf-8', 'surrogatepass') for b in _read_blobs(r, col, count, 'string')]
    if kind == 'bytes':
        return _read_blobs(r, col, count, 'bytes')
    if kind in ('int', 'float', 'bool'):
        dt = _dtype(col['dtype'])
        if dt.kind not in {'int': 'iu', 'float': 'f', 'bool': 'b'}[kind]:
            raise _bad(f'{kind} column with dtype {dt}')
        return r.array(col['data'], dt, count).tolist()
    if kind == 'json':
        try:
            vals = json.loads(str(r.raw(col['data']), 'utf-8', 'surrogatepass'))
        except RecursionError:
            raise _bad('JSON column nested too deeply') from None
        if not isinstance(vals, list) or len(vals) != count:
            raise _bad(f'JSON column does not hold {count} values')
        return vals
    if kind == 'tensor':
        return _decode_tensor(r, col, count, target)
    if kind == 'doclist':
        lengths = r.array(col['lengths'], _I8, count)
        if count and int(lengths.min()) < 0:
            raise _bad('negative nested DocList length')
        total = int(lengths.sum())
        child_schema = col['child']
        if not isinstance(child_schema, dict) or child_schema.get('count') != total:
            raise _bad('nested DocList lengths do not match the child count')
        child_target = getattr(target, 'doc_type', None) if target is not None else None
        if child_target is AnyDoc:
            child_target = None
        child_cls, children = _decode_schema(r, child_schema, child_target, depth + 1)
        dl_cls = target if target is not None and getattr(target, 'doc_type', AnyDoc) is not AnyDoc \
            else _doclist_of(child_cls)
        bounds = [0]
        bounds.extend(np.cumsum(lengths).tolist())
        construct = dl_cls.construct
        return [construct(children[a:b]) for a, b in zip(bounds, bounds[1:])]
    if kind == 'doc':
        child_schema = col['child']
        if not isinstance(child_schema, dict) or child_schema.get('count') != count:
            raise _bad('nested doc count does not match its presence mask')
        return _decode_schema(r, child_schema, target, depth + 1)[1]
    raise _bad(f'unknown column kind {kind!r}')


_TENSOR_CLS_CACHE: dict = {}


def _tensor_class(target: Any, sample: np.ndarray) -> Optional[type]:
    """The class validation gives ``sample`` for annotation ``target`` if it keeps the data as is."""
    if target is None:
        from docarray.typing import NdArray
        return NdArray
    key = (target, sample.dtype.str, sample.shape)
    try:
        return _TENSOR_CLS_CACHE[key]
    except KeyError:
        pass
    except TypeError:
        key = None
    try:
        v = _adapter(target).validate_python(sample)
        ok = isinstance(v, np.ndarray) and v.shape == sample.shape and v.dtype == sample.dtype
        cls = type(v) if ok else None
    except Exception:  # noqa: BLE001 - validation refused: the slow path will report it
        cls = None
    if key is not None and len(_TENSOR_CLS_CACHE) < 4096:
        _TENSOR_CLS_CACHE[key] = cls
    return cls


class _Unconverted(list):
    """Tensor values that validation of the target field would change: validate them."""


def _rows(block: np.ndarray, cls: type) -> list:
    view = block.view(cls)
    if block.ndim == 1:
        return [view[i, ...] for i in range(len(view))]
    return list(view)


def _decode_tensor(r: _Reader, col: dict, count: int, target: Any) -> list:
    layout = col.get('layout')
    if layout == 'stacked':
        shape = col['shape']
        if not isinstance(shape, list):
            raise _bad('tensor shape is not a list')
        shape = tuple(_int(s, 'tensor dimension') for s in shape)
        if len(shape) > 32:
            raise _bad('tensor has too many dimensions')
        per = 1
        for s in shape:
            per *= s
        block = r.array(col['data'], col['dtype'], count * per, copy=True).reshape((count,) + shape)
        if count == 0:
            return []
        cls = _tensor_class(target, block[0, ...])
        if cls is None:
            return _Unconverted(block)  # coerced (and checked) by validation later
        return _rows(block, cls)
    if layout == 'ragged':
        dtypes = col['dtypes']
        if not isinstance(dtypes, list):
            raise _bad('ragged tensor dtypes is not a list')
        dts = [_dtype(d) for d in dtypes]
        codes = r.array(col['codes'], _I8, count).tolist()
        ndims = r.array(col['ndims'], _I8, count).tolist()
        if any(not 0 <= c < len(dts) for c in codes) or any(not 0 <= k <= 32 for k in ndims):
            raise _bad('ragged tensor codes or ndims out of range')
        dims = r.array(col['dims'], _I8, sum(ndims))
        if len(dims) and int(dims.min()) < 0:
            raise _bad('negative tensor dimension')
        dims = dims.tolist()
        blobs_off = r.array(col['offsets'], _I8, count + 1)
        off0, nbytes = r.span(col['data'])
        o = _check_offsets(blobs_off, nbytes, 'tensor')
        out = []
        pos = 0
        cache: dict = {}
        unconverted = False
        for i in range(count):
            shape = tuple(dims[pos:pos + ndims[i]])
            pos += ndims[i]
            dt = dts[codes[i]]
            n = 1
            for s in shape:
                n *= s
            if n * dt.itemsize != o[i + 1] - o[i]:
                raise _bad(f'ragged tensor {i} size does not match its shape {shape}')
            if n:
                a = np.frombuffer(r.mv, dtype=dt, count=n, offset=off0 + o[i]).reshape(shape).copy()
            else:
                a = np.empty(shape, dt)
            k = (dt.str, shape)
            cls = cache[k] if k in cache else cache.setdefault(k, _tensor_class(target, a))
            if cls is None:
                unconverted = True
            out.append(a.view(cls) if cls is not None else a)
        return _Unconverted(out) if unconverted else out
    raise _bad(f'unknown tensor layout {layout!r}')


def _expand(r: _Reader, col: dict, count: int) -> tuple[Optional[list], int]:
    """Presence mask of a column as a list of bools (None = all present) and the present count."""
    p = col.get('present', 'all')
    if p == 'all':
        return None, count
    if p == 'none':
        return [False] * count, 0
    mask = r.array(p, _U1, count).astype(bool)
    return mask.tolist(), int(mask.sum())


def _fill(mask: Optional[list], vals: list) -> list:
    if mask is None:
        return vals
    it = iter(vals)
    return [next(it) if m else None for m in mask]


_DOCLISTS: dict = {}


def _doclist_of(cls: type) -> type:
    """``DocList[cls]``, looked up once per class (docarray's own lookup walks typing machinery)."""
    try:
        return _DOCLISTS[cls]
    except KeyError:
        return _DOCLISTS.setdefault(cls, DocList[cls])


_BUILDERS: dict = {}


def _builder(nfields: int):
    """A compiled loop making ``nfields``-field docs without validation (code has no wire data)."""
    try:
        return _BUILDERS[nfields]
    except KeyError:
        pass
    args = ''.join(f'a{i}, ' for i in range(nfields))
    keys = ''.join(f'k{i}, ' for i in range(nfields))
    items = ', '.join(f'k{i}: a{i}' for i in range(nfields))
    src = (
        f'def build(cls, keys, cols, fields_set):\n'
        f'    ({keys}) = keys\n'
        f'    out = []\n'
        f'    ap = out.append\n'
        f'    for ({args}) in zip(*cols):\n'
        f'        d = new(cls)\n'
        f'        set_dict(d, {{{items}}})\n'
        f'        set_fs(d, set(fields_set))\n'
        f'        set_extra(d, None)\n'
        f'        set_private(d, None)\n'
        f'        ap(d)\n'
        f'    return out\n'
    )
    ns = {'new': _new, 'set_dict': _set_dict, 'set_fs': _set_fields_set,
          'set_extra': _set_extra, 'set_private': _set_private}
    exec(compile(src, f'<codec builder {nfields}>', 'exec'), ns)  # noqa: S102 - fixed template
    _BUILDERS[nfields] = ns['build']
    return ns['build']


def _make_docs(cls: type, names: list, cols: list, n: int, fields_set: frozenset) -> list:
    if not names:
        out = []
        for _ in range(n):
            d = _new(cls)
            _set_dict(d, {})
            _set_fields_set(d, set())
            _set_extra(d, None)
            _set_private(d, None)
            out.append(d)
        return out
    return _builder(len(names))(cls, names, cols, fields_set)


def _convert_fast(kind: str, base: Any, vals: list) -> list:
    """Turn decoded values into the type validation of a same-kind field would give."""
    if kind in ('str', 'bytes') and base is not str and base is not bytes:
        return list(map(base, vals))
    return vals


_PLAIN_JSON = {list, dict, typing.List, typing.Dict, typing.List[Any], typing.Dict[str, Any],
               list[Any], dict[str, Any]}


def _plain_json(ann: Any) -> bool:
    try:
        return ann in _PLAIN_JSON
    except TypeError:
        return False


_DECODE_FIELDS: dict = {}


def _decode_fields(cls: type) -> list:
    """What decoding needs of each field of ``cls``, worked out once: ``(name, field info, kind,
    base, optional, has constraint metadata, a plain JSON field, the type name on the wire)``."""
    try:
        return _DECODE_FIELDS[cls]
    except KeyError:
        pass
    out = []
    for name, finfo in cls.model_fields.items():
        tkind, tbase, toptional = _classify(finfo.annotation)
        out.append((name, finfo, tkind, tbase, toptional, bool(finfo.metadata),
                    tkind == 'json' and _plain_json(tbase), _type_name(tkind, tbase)))
    _DECODE_FIELDS[cls] = out
    return out


def _decode_schema(r: _Reader, schema: dict, target: Optional[type], depth: int) -> tuple[type, list]:
    """Decode one schema level into a list of docs of ``target`` (or a class from the schema)."""
    if depth > _MAX_DEPTH:
        raise _bad('documents nested too deeply')
    if not isinstance(schema, dict):
        raise _bad('schema is not an object')
    count = _int(schema.get('count'), 'document count')
    fields = schema.get('fields')
    if not isinstance(fields, dict):
        raise _bad('schema fields is not an object')
    cls = target if target is not None else _class_for_schema(schema)
    names, cols, fields_set = [], [], set()
    for name, finfo, tkind, tbase, toptional, metadata, plain_json, tname in _decode_fields(cls):
        col = fields.get(name)
        names.append(name)
        if col is None:
            if finfo.is_required():
                raise ProtocolError(f'field {name!r} required by {cls.__name__} is not in the message')
            if finfo.default_factory is None and not _is_mutable(finfo.default):
                cols.append(itertools.repeat(finfo.default, count))
            else:
                cols.append([finfo.get_default(call_default_factory=True) for _ in range(count)])
            continue
        if not isinstance(col, dict):
            raise _bad(f'column {name!r} is not an object')
        fields_set.add(name)
        wkind = col.get('kind')
        mask, present = _expand(r, col, count)
        fast = (tkind == wkind and not metadata and (toptional or mask is None)
                and (tkind != 'json' or (plain_json and col.get('type') == tname)))
        if mask is not None and present == 0:
            cols.append(itertools.repeat(None, count) if (toptional or tkind == 'other')
                        else _validate_all(finfo, name, [None] * count))
            continue
        hint = tbase if tkind == wkind and tkind in ('tensor', 'doclist', 'doc') else None
        vals = _decode_values(r, col, present, depth, hint)
        if fast and not isinstance(vals, _Unconverted):
            cols.append(_fill(mask, _convert_fast(tkind, tbase, vals)))
        else:
            cols.append(_validate_all(finfo, name, _fill(mask, vals)))
    if _has_own_validators(cls):  # the class may normalise or derive values: let it run
        ad = _validate_docs_slowly(cls)
        return cls, [ad(dict(zip(names, row))) for row in zip(*cols)] if names else \
            [ad({}) for _ in range(count)]
    return cls, _make_docs(cls, names, cols, count, frozenset(fields_set))


_OWN_VALIDATORS: dict = {}


def _has_own_validators(cls: type) -> bool:
    """Whether ``cls`` has validators beyond docarray's own (those must see every decoded doc)."""
    try:
        return _OWN_VALIDATORS[cls]
    except KeyError:
        pass
    dec = cls.__pydantic_decorators__
    funcs = [d.func for group in (dec.validators, dec.field_validators, dec.root_validators,
                                  dec.model_validators) for d in group.values()]
    own = any(not getattr(f, '__module__', '').startswith('docarray.') for f in funcs)
    _OWN_VALIDATORS[cls] = own
    return own


def _validate_docs_slowly(cls: type):
    def validate(values: dict) -> Any:
        try:
            return cls.model_validate(values)
        except pydantic.ValidationError as e:
            raise ProtocolError(f'{cls.__name__}: values on the wire do not validate: {e}') from None
    return validate


def _is_mutable(v: Any) -> bool:
    return not (v is None or isinstance(v, (str, bytes, int, float, bool, tuple, frozenset)))


def _validate_all(finfo: Any, name: str, vals: list) -> list:
    """Slow path: validate every value against the field annotation (types differ on the wire)."""
    ad = _adapter(_field_annotation(finfo))
    try:
        return [ad.validate_python(v) for v in vals]
    except pydantic.ValidationError as e:
        raise ProtocolError(f'field {name!r}: values on the wire do not validate: {e}') from None


# --------------------------------------------------------------------------- doc classes from schemas

_KNOWN: dict = {}
_DYNAMIC: dict = {}


def register_doc_type(cls: type) -> type:
    """Let ``decode_docs(data)`` (no doc_type) rebuild ``cls`` when name and fields match."""
    _KNOWN.setdefault(cls.__name__, []).insert(0, cls)
    return cls


def _register_docarray_documents() -> None:
    import docarray.documents as documents
    for name in ('TextDoc', 'ImageDoc', 'AudioDoc', 'VideoDoc', 'Mesh3D', 'PointCloud3D',
                 'PointsAndColors', 'VerticesAndFaces'):
        c = getattr(documents, name, None)
        if isinstance(c, type):
            register_doc_type(c)


_register_docarray_documents()


def _named_types() -> dict:
    import docarray.typing as dt
    out: dict = {'str': str, 'bytes': bytes, 'int': int, 'float': float, 'bool': bool,
                 'dict': dict, 'list': list, 'ndarray': np.ndarray}
    for name in ('ID', 'AnyUrl', 'TextUrl', 'ImageUrl', 'AudioUrl', 'VideoUrl', 'Mesh3DUrl',
                 'PointCloud3DUrl', 'ImageBytes', 'AudioBytes', 'VideoBytes', 'NdArray',
                 'NdArrayEmbedding', 'AnyTensor', 'AnyEmbedding', 'ImageTensor', 'ImageNdArray',
                 'AudioTensor', 'AudioNdArray', 'VideoTensor', 'VideoNdArray'):
        t = getattr(dt, name, None)
        if t is not None:
            out[name] = t
    return out


_NAMED = _named_types()
_KIND_DEFAULT = {'str': str, 'bytes': bytes, 'int': int, 'float': float, 'bool': bool,
                 'json': Any, 'tensor': _NAMED['NdArray'], 'other': Any}


def _type_only(schema: dict, depth: int = 0) -> Any:
    """The schema without buffer indices: the cache key of the class it describes."""
    if depth > _MAX_DEPTH:
        raise _bad('documents nested too deeply')
    if not isinstance(schema.get('fields'), dict):
        raise _bad('schema fields is not an object')
    return {'doc_type': schema.get('doc_type'),
            'fields': {k: {'kind': c.get('kind'), 'type': c.get('type'),
                           'optional': bool(c.get('optional')),
                           **({'child': _type_only(c['child'], depth + 1)}
                              if isinstance(c.get('child'), dict) else {})}
                       for k, c in schema['fields'].items() if isinstance(c, dict)}}


_MAX_DYNAMIC = 1024


def _class_for_schema(schema: dict, depth: int = 0) -> type:
    """A registered class matching the schema's name and fields, else a cached rebuilt one."""
    if depth > _MAX_DEPTH:
        raise _bad('documents nested too deeply')
    name = schema.get('doc_type')
    fields = schema.get('fields')
    if not isinstance(fields, dict):
        raise _bad('schema fields is not an object')
    for cls in _KNOWN.get(name, ()):
        if set(cls.model_fields) == set(fields):
            return cls
    key = json.dumps(_type_only(schema), sort_keys=True)
    cls = _DYNAMIC.get(key)
    if cls is not None:
        return cls
    if len(_DYNAMIC) >= _MAX_DYNAMIC:  # classes are never freed (docarray caches DocList[cls])
        raise ProtocolError(f'{_MAX_DYNAMIC} document schemas rebuilt already; pass doc_type to decode_docs')
    defs: dict = {}
    for fname, col in fields.items():
        if fname == 'id':
            continue
        if not isinstance(col, dict) or not isinstance(fname, str) or not fname.isidentifier() \
                or fname.startswith('_') or hasattr(BaseDoc, fname):
            raise _bad(f'field name {fname!r} cannot be rebuilt into a doc class')
        kind = col.get('kind')
        if kind in ('doclist', 'doc'):
            if not isinstance(col.get('child'), dict):
                raise _bad(f'nested field {fname!r} has no child schema')
            child = _class_for_schema(col['child'], depth + 1)
            t = DocList[child] if kind == 'doclist' else child
        elif kind in _KIND_DEFAULT:
            t = _NAMED.get(col.get('type'), _KIND_DEFAULT[kind])
            if kind == 'json' and t not in (dict, list):
                t = Any
            if kind == 'tensor' and not _is_tensor_type(t):
                t = _NAMED['NdArray']
        else:
            raise _bad(f'unknown column kind {kind!r}')
        defs[fname] = (Optional[t], None) if col.get('optional', True) else (t, ...)
    base = BaseDoc if 'id' in fields else BaseDocWithoutId
    cname = name if isinstance(name, str) and name.isidentifier() else 'WireDoc'
    try:
        cls = pydantic.create_model(cname, __base__=base, **defs)
    except Exception as e:  # noqa: BLE001
        raise _bad(f'cannot rebuild doc class {cname}: {e}') from None
    _DYNAMIC[key] = cls
    return cls


# --------------------------------------------------------------------------- public decode API

#: messages from this size on are decoded with the cyclic GC paused (:func:`_gc_paused`)
_GC_PAUSE_FROM = 16384
_GC_LOCK = threading.Lock()
_GC_PAUSED = [0, False]  # active decodes, whether the collector was on before the first


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many docs (it otherwise costs up to 5x the decode).

    Objects made meanwhile are collected as usual once it is back on: it is restored when the
    last concurrent decode ends, and left alone if it was already off.
    """
    with _GC_LOCK:
        if _GC_PAUSED[0] == 0:
            _GC_PAUSED[1] = gc.isenabled()
            gc.disable()
        _GC_PAUSED[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_PAUSED[0] -= 1
            if _GC_PAUSED[0] == 0 and _GC_PAUSED[1]:
                gc.enable()


def decode_docs(data: bytes, doc_type: Optional[type] = None) -> DocList:
    """Decode a message from :func:`encode_docs` into ``DocList[doc_type]``.

    With ``doc_type=None`` the class is rebuilt from the wire schema (a known docarray class
    when name and fields match). Wire fields the class lacks are dropped; class fields the
    wire lacks get their defaults. Malformed input, or input that does not fit ``doc_type``,
    raises :class:`ProtocolError` (a ValueError) before anything is built: every count and size
    the header declares is checked against the bytes present first (see docs/codec.md, Bounds).
    """
    if doc_type is not None and not isinstance(doc_type, type) or isinstance(doc_type, type) and \
            issubclass(doc_type, DocList):
        doc_type = getattr(doc_type, 'doc_type', doc_type)  # DocList[X] -> X
    if doc_type is not None and not (isinstance(doc_type, type) and issubclass(doc_type, BaseDocWithoutId)):
        raise TypeError(f'doc_type must be a docarray document class, got {doc_type!r}')
    if doc_type is AnyDoc:
        doc_type = None
    mv, header, start = _read_header(data)
    try:
        r = _Reader(mv, header.get('buffers'), start)
        mode = header.get('mode')
        root = header['root']
        if mode == 'protobuf':
            return _decode_protobuf(r, root, doc_type)
        if mode != 'columnar':
            raise _bad(f'unknown mode {_shown(mode)}')
        name = root.get('doc_type')
        _Bounds(r).level(root, name if isinstance(name, str) and len(name) <= 60 else 'root', 0)
        if len(mv) < _GC_PAUSE_FROM:   # few objects to build: pausing costs more than it saves
            cls, docs = _decode_schema(r, root, doc_type, 0)
        else:
            with _gc_paused():
                cls, docs = _decode_schema(r, root, doc_type, 0)
        return _doclist_of(cls).construct(docs)
    except ProtocolError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError,
            RecursionError) as e:
        raise _bad(f'{type(e).__name__}: {e}') from None


def _rows_of_schema(r: _Reader, schema: dict, depth: int) -> list:
    """One schema level as plain dicts (no document built); nested docs and DocLists recursively."""
    if depth > _MAX_DEPTH:
        raise _bad('documents nested too deeply')
    count = _int(schema.get('count'), 'document count')
    fields = schema.get('fields')
    if not isinstance(fields, dict):
        raise _bad('schema fields is not an object')
    rows: list = [{} for _ in range(count)]
    for name, col in fields.items():
        if not isinstance(col, dict):
            raise _bad(f'column {name!r} is not an object')
        mask, present = _expand(r, col, count)
        kind = col.get('kind')
        if mask is not None and present == 0:   # nothing stored (as _decode_schema skips it)
            vals: list = []
        elif kind == 'doclist':
            lengths = r.array(col['lengths'], _I8, present)
            child = col['child']
            if not isinstance(child, dict) or child.get('count') != int(lengths.sum()):
                raise _bad('nested DocList lengths do not match the child count')
            children = _rows_of_schema(r, child, depth + 1)
            bounds = [0] + np.cumsum(lengths).tolist()
            vals = [children[a:b] for a, b in zip(bounds, bounds[1:])]
        elif kind == 'doc':
            child = col['child']
            if not isinstance(child, dict) or child.get('count') != present:
                raise _bad('nested doc count does not match its presence mask')
            vals = _rows_of_schema(r, child, depth + 1)
        elif kind == 'tensor':
            vals = _decode_tensor(r, col, present, None)
        else:
            vals = _decode_values(r, col, present, depth, None)
        for row, v in zip(rows, _fill(mask, vals)):
            row[name] = v
    return rows


def decode_rows(data: bytes) -> list:
    """A message from :func:`encode_docs` as plain dicts, one per doc, without building documents
    (for writing JSON: the HTTP door). Values: str, bytes, int, float, bool, JSON values, numpy
    arrays for tensors, lists of dicts for nested DocLists, a dict for a nested doc, None when absent.
    The same bounds checks as :func:`decode_docs` run first.

    >>> decode_rows(encode_docs(DocList[TextDoc]([TextDoc(id='a', text='hi')])))[0]['text']   # doctest: +SKIP
    'hi'
    """
    mv, header, start = _read_header(data)
    try:
        r = _Reader(mv, header.get('buffers'), start)
        root = header['root']
        if header.get('mode') == 'protobuf':
            return [d.model_dump(warnings=False) for d in _decode_protobuf(r, root, None)]
        if header.get('mode') != 'columnar':
            raise _bad(f'unknown mode {_shown(header.get("mode"))}')
        name = root.get('doc_type')
        _Bounds(r).level(root, name if isinstance(name, str) and len(name) <= 60 else 'root', 0)
        return _rows_of_schema(r, root, 0)
    except ProtocolError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError,
            RecursionError) as e:
        raise _bad(f'{type(e).__name__}: {e}') from None


def _decode_protobuf(r: _Reader, root: dict, doc_type: Optional[type]) -> DocList:
    if doc_type is None:
        if not isinstance(root, dict) or not isinstance(root.get('fields'), dict):
            raise _bad('protobuf message without a schema')
        doc_type = _class_for_schema(root)
    payload = bytes(r.raw(0))
    try:
        docs = DocList[doc_type].from_bytes(payload, protocol='protobuf-array', compress=None)
    except Exception as e:  # noqa: BLE001 - protobuf/docarray raise many types on bad input
        raise _bad(f'protobuf payload does not decode: {type(e).__name__}: {e}') from None
    if isinstance(root, dict) and root.get('count') not in (None, len(docs)):
        raise _bad('protobuf payload document count does not match the header')
    return docs


def _public_schema(schema: dict, depth: int = 0) -> dict:
    if depth > _MAX_DEPTH:
        raise _bad('documents nested too deeply')
    if not isinstance(schema, dict) or not isinstance(schema.get('fields'), dict):
        raise _bad('schema is not an object with fields')
    fields = {}
    for name, col in schema['fields'].items():
        if not isinstance(col, dict):
            raise _bad(f'column {name!r} is not an object')
        d = {'kind': col.get('kind'), 'type': col.get('type'), 'optional': bool(col.get('optional'))}
        if isinstance(col.get('child'), dict):
            d['child'] = _public_schema(col['child'], depth + 1)
        fields[name] = d
    return {'doc_type': schema.get('doc_type'), 'count': schema.get('count'), 'fields': fields}


def wire_schema(data: bytes) -> dict:
    """Peek at a message's header: ``{'doc_type', 'count', 'fields', 'encoding'}`` (no decoding)."""
    _, header, _ = _read_header(data)
    out = _public_schema(header['root'])
    out['encoding'] = header.get('mode')
    return out
