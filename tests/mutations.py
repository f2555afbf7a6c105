"""Malformed messages for the fuzz tests and benchmarks/faults.py: one source of hostile input.

Plain ``random.Random`` driven (hypothesis draws one with ``st.randoms()``), no pytest import, so a
benchmark can use it too.

    >>> frame = hostile_frame(random.Random(0), [encode_docs(docs)])   # doctest: +SKIP
"""
from __future__ import annotations

import json
import random
import struct
from typing import Any, List, Sequence, Tuple

from runtime import protocol

#: values a header field is replaced with: wrong types, huge or negative numbers, odd dtypes
HOSTILE_VALUES: List[Any] = [None, True, -1, 0, 1, 7, 2 ** 31, 2 ** 63 - 1, 2 ** 64, 10 ** 6, 1.5, 'x', '<f8',
                             '|O', [], [0, 10 ** 9], {}, {'kind': 'doc'}]
#: counts and sizes a message may claim
INFLATED = [10 ** 6, 2 ** 31, 2 ** 40, 2 ** 63 - 1, 2 ** 64, -1, 3, 4]


def split_message(data: bytes) -> Tuple[dict, bytes]:
    """Header dict and data area of an encoded DocList (to craft malformed ones)."""
    _magic, _ver, hlen = struct.unpack_from('<3sBI', data)
    end = 8 + hlen
    return json.loads(data[8:end]), data[end + (-end % 8):]


def join_message(header: dict, body: bytes, magic: bytes = b'ONB', version: int = 1) -> bytes:
    """The inverse of :func:`split_message` (any header, even one the codec would refuse)."""
    h = json.dumps(header).encode()
    pad = -(8 + len(h)) % 8
    return struct.pack('<3sBI', magic, version, len(h)) + h + b'\0' * pad + body


def leaves(node: Any, path: tuple = ()) -> list:
    """Paths of every value in a JSON tree (dict keys and list indices)."""
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += leaves(v, path + (i,))
    return out


def set_path(tree: Any, path: tuple, value: Any) -> Any:
    """``tree`` with the value at ``path`` replaced (the empty path: ``value`` itself)."""
    if not path:
        return value
    node = tree
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return tree


def hostile_body(rng: random.Random, samples: Sequence[bytes]) -> bytes:
    """Random bytes, or a valid encoded DocList from ``samples`` with flipped bytes, a cut, or one
    header value replaced (counts and sizes inflated, types changed)."""
    data = rng.choice(samples)
    how = rng.choice(('random', 'flip', 'truncate', 'inflate', 'retype'))
    if how == 'random':
        return rng.choice((b'', b'ONB\x01')) + rng.randbytes(rng.randint(0, 200))
    if how == 'flip':
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf)
    if how == 'truncate':
        return data[:rng.randrange(len(data))]
    header, body = split_message(data)
    path = rng.choice(leaves(header))
    value = rng.choice(INFLATED) if how == 'inflate' else json.loads(json.dumps(rng.choice(HOSTILE_VALUES)))
    header = set_path(header, path, value)
    return join_message(header if isinstance(header, dict) else {'root': header}, body)


def hostile_frame(rng: random.Random, samples: Sequence[bytes]) -> bytes:
    """A whole Call frame: random bytes, a good header with a hostile body, or a hostile header
    (``samples[-1]`` is the body of the last kind)."""
    how = rng.choice(('raw', 'body', 'body', 'header'))
    if how == 'raw':
        return rng.randbytes(rng.randint(0, 200)) if rng.random() < 0.5 else b'ON1' + hostile_body(rng, samples)
    if how == 'body':
        return protocol.pack({'endpoint': '/upper', 'parameters': {}}, hostile_body(rng, samples))
    header = {'endpoint': '/upper', 'parameters': {}, 'request_id': 'r'}
    key = rng.choice(sorted(header) + ['consistency', 'allow_partial', 'no_reduce'])
    header[key] = json.loads(json.dumps(rng.choice(HOSTILE_VALUES)))
    return protocol.pack(header, samples[-1])
