"""The messages that travel between client, gateway and replicas.

gRPC carries raw bytes (no generated protobuf code): every call is
``/orchestra.Node/<Method>`` with a frame of

    b'ON1' | header length (uint32, little endian) | header (UTF-8 JSON) | body

The header holds small metadata (endpoint, parameters, errors); the body holds
documents in the columnar encoding of :mod:`runtime.codec`. Both ends parse
only JSON and that encoding: nothing received is ever unpickled.

Methods:
- ``Call``: run an endpoint. Request header ``{'endpoint', 'parameters'}`` (optional
  ``request_id``, ``consistency``, ``allow_partial``, ``no_reduce``; types checked by
  :func:`check_request_header`); reply header ``{'ok': True}`` or ``{'ok': False, 'error': {...}}``.
  An invalid frame or header (at a replica, also an invalid body) ends the call with
  ``INVALID_ARGUMENT``; a gateway passes a replica's refusal back as an error reply.
- ``Info``: readiness and status as JSON (no body).
- ``Control``: small JSON commands between the parts of one Deployment
  (e.g. RAFT payload transfer); not for clients: it needs the Deployment's secret in the
  call's metadata, and the gateway serves it on its loopback port only (docs/security.md).
"""
from __future__ import annotations

import json
import re
import struct
from typing import Any, Dict, Tuple

SERVICE = 'orchestra.Node'
CALL = f'/{SERVICE}/Call'
INFO = f'/{SERVICE}/Info'
CONTROL = f'/{SERVICE}/Control'

MAGIC = b'ON1'
_LEN = struct.Struct('<I')

#: gRPC message limit in both directions: 100k docs with 128-d embeddings are ~60 MB.
MAX_MESSAGE_BYTES = 1024 * 1024 * 1024 - 1

GRPC_OPTIONS = [
    ('grpc.max_send_message_length', MAX_MESSAGE_BYTES),
    ('grpc.max_receive_message_length', MAX_MESSAGE_BYTES),
    ('grpc.so_reuseport', 0),
]

#: channels to a gateway or a replica: reconnect within a second of a restarted server
#: answering again (gRPC's default backoff grows to 120 s; docs/reliability.md)
CHANNEL_OPTIONS = GRPC_OPTIONS + [
    ('grpc.initial_reconnect_backoff_ms', 100),
    ('grpc.min_reconnect_backoff_ms', 100),
    ('grpc.max_reconnect_backoff_ms', 1000),
]


class ProtocolError(ValueError):
    """Bytes from the network that are not a valid orchestra-nb message (frame, header or body).

    Raised before anything is built from them; servers answer it with gRPC status
    ``INVALID_ARGUMENT`` and keep serving.
    """


def pack(header: Dict[str, Any], body: bytes = b'') -> bytes:
    """``pack({'endpoint': '/x'}, b'...')`` -> one frame."""
    h = json.dumps(header, separators=(',', ':')).encode()
    return b''.join((MAGIC, _LEN.pack(len(h)), h, body))


class RequestFrames:
    """The request frames of one ``post``: the header is encoded once, each frame adds its own
    ``request_id`` (hex digits, so nothing in it needs escaping).

    >>> frames = RequestFrames({'endpoint': '/x', 'parameters': {}})
    >>> unpack(frames.pack('0f' * 16, b'body'))[0]['request_id'] == '0f' * 16
    True
    """

    def __init__(self, header: Dict[str, Any]):
        if 'request_id' in header:
            raise ValueError('RequestFrames adds request_id itself; the header must not have one')
        h = json.dumps(header, separators=(',', ':')).encode()
        self._open = h[:-1] + (b',"request_id":"' if header else b'"request_id":"')

    def pack(self, request_id: str, body: bytes) -> bytes:
        if not _HEX.fullmatch(request_id):
            raise ValueError(f'request_id={request_id!r}: must be hex digits')
        h = b'%s%s"}' % (self._open, request_id.encode())
        return b''.join((MAGIC, _LEN.pack(len(h)), h, body))


_HEX = re.compile(r'[0-9a-f]{1,64}')


def unpack(frame: bytes) -> Tuple[Dict[str, Any], memoryview]:
    """One frame -> (header dict, body as a memoryview, no copy)."""
    if len(frame) < 7 or frame[:3] != MAGIC:
        raise ProtocolError(f'not an orchestra-nb frame (starts with {bytes(frame[:8])!r})')
    (n,) = _LEN.unpack_from(frame, 3)
    if 7 + n > len(frame):
        raise ProtocolError(f'truncated frame: header says {n} bytes, {len(frame) - 7} present')
    try:
        header = json.loads(bytes(frame[7:7 + n]))
    except ValueError as e:
        raise ProtocolError(f'frame header is not JSON: {e}') from None
    if not isinstance(header, dict):
        raise ProtocolError('frame header is not a JSON object')
    return header, memoryview(frame)[7 + n:]


def _endpoint_ok(v: Any) -> bool:
    return isinstance(v, str) and v.startswith('/')


# request header field -> (check, what is allowed); ``null`` counts as absent except for endpoint
_REQUEST_FIELDS = {
    'endpoint': (_endpoint_ok, "a string starting with '/'"),
    'parameters': (lambda v: v is None or isinstance(v, dict), 'a JSON object'),
    'request_id': (lambda v: v is None or isinstance(v, str), 'a string'),
    'consistency': (lambda v: v is None or v in ('eventual', 'strong'), "'eventual' or 'strong'"),
    'allow_partial': (lambda v: v is None or isinstance(v, bool), 'true or false'),
    'no_reduce': (lambda v: v is None or isinstance(v, bool), 'true or false'),
    'target_executor': (lambda v: v is None or isinstance(v, str), 'a regular expression (a string)'),
}


def check_request_header(header: Dict[str, Any]) -> Dict[str, Any]:
    """Refuse a ``Call`` header whose known fields have the wrong type (unknown keys pass).

    ``{'endpoint': 123}`` raises :class:`ProtocolError` naming the field, the value and what
    is allowed, rather than being served by the default endpoint. Returns ``header``.
    """
    for key, (ok, allowed) in _REQUEST_FIELDS.items():
        if key in header and not ok(header[key]):
            shown = repr(header[key])
            shown = shown if len(shown) <= 80 else shown[:77] + '...'
            raise ProtocolError(f'request header field {key!r} is {shown} '
                                f'({type(header[key]).__name__}); allowed: {allowed}')
    return header


async def refuse_invalid(context: Any, exc: BaseException) -> None:
    """End the RPC with ``INVALID_ARGUMENT`` and ``exc``'s message if ``exc`` is a ProtocolError.

    Call it in a handler's ``except`` block; anything else (and a call without a gRPC context,
    as in in-process tests) returns and is handled as before.
    """
    if isinstance(exc, ProtocolError) and context is not None:
        import grpc
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def error_header(exc: BaseException, where: str, tb: str = '') -> Dict[str, Any]:
    return {'ok': False, 'error': {'type': type(exc).__name__, 'message': str(exc),
                                   'traceback': tb, 'where': where}}
