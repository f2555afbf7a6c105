"""JSON requests and replies of the HTTP and WebSocket doors, in the shapes Jina's HTTP gateway uses.

Request: ``{"data": [{...doc...}, ...] | {...doc...}, "parameters": {...}, "header": {"requestId": ...,
"targetExecutor": ...}}``. Reply: ``{"data": [...], "parameters": {...}, "header": {"requestId",
"execEndpoint", "status": {"code": 0, "description": ""}}}``; what Executors returned as a dict is
under ``parameters["__results__"]`` (Jina's key). A failure is :class:`DoorError` with the HTTP
status and a message naming the bad field or the failed Executor (docs/http.md).

    >>> frame, rid = request_frame('/x', docs, {}, None)                  # doctest: +SKIP
    >>> reply_json(await route(frame), {}, '/x', rid)            # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import functools
import json
import uuid
from typing import Any, Dict, List, Optional, Tuple

from runtime import protocol
from runtime.doors.schemas import EndpointSchema, doc_class, endpoint_schemas, inferred_doc_class

#: how an error reply's ``type`` becomes an HTTP status; anything else is an Executor failure: 499, as Jina
_STATUS_OF = {'ProtocolError': 400, 'UnknownEndpointError': 404, 'NoReplicaAvailable': 503,
              'ConnectionError': 503, 'TimeoutError': 504}
EXECUTOR_FAILED = 499


class DoorError(Exception):
    """A request a door answers with ``status`` (4xx/5xx) and ``detail`` (what was wrong, naming it)."""

    def __init__(self, status: int, detail: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Catalog:
    """What the gateway's graph serves, learned from the replicas' ``Info`` (their endpoint schemas)."""

    def __init__(self, gateway: Any):
        self.gateway = gateway

    def _served(self) -> Tuple[List[Optional[Dict[str, Any]]], bool]:
        served, complete = [], True
        graph = self.gateway.graph
        for name in graph.order:
            stage = self.gateway.stages[name]
            if stage.is_join or name in graph.floating:   # a join serves nothing; a floating stage's reply goes nowhere
                continue
            eps = stage.shards[0].endpoints
            complete = complete and eps is not None
            served.append(eps)
        return served, complete

    def snapshot(self) -> Tuple[Dict[str, EndpointSchema], Optional[EndpointSchema], bool]:
        """-> (endpoint -> schema, the schema of any other endpoint (a bare ``@requests``) or None,
        every stage reported)."""
        served, complete = self._served()
        endpoints, default = endpoint_schemas(served)
        return endpoints, default, complete

    async def wait(self, timeout: float = 5.0) -> Tuple[Dict[str, EndpointSchema], Optional[EndpointSchema], bool]:
        """:meth:`snapshot`, waiting up to ``timeout`` s for every stage to have reported."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            snap = self.snapshot()
            if snap[2] or loop.time() > deadline:
                return snap
            await asyncio.sleep(0.05)


def validation_detail(error: Any, prefix: Tuple[Any, ...] = ()) -> List[Dict[str, Any]]:
    """A pydantic ValidationError -> FastAPI-style ``[{'loc': [...], 'msg': ..., 'type': ...}]``."""
    return [{'loc': list(prefix) + list(e.get('loc', ())), 'msg': e.get('msg', ''), 'type': e.get('type', '')}
            for e in error.errors()]


def input_class(schema: Optional[EndpointSchema], rows: List[Any]) -> type:
    """The doc class requests of an endpoint are validated with (inferred from ``rows`` when untyped)."""
    if schema is not None and schema.input_schema is not None:
        return doc_class(schema.input_schema)
    return inferred_doc_class(r for r in rows if isinstance(r, dict))


def as_rows(data: Any) -> List[Any]:
    """``data`` as Jina accepts it: one doc or a list of docs (``None``: no docs)."""
    if data is None:
        return []
    if isinstance(data, list):
        return data
    return [data]


def build_docs(cls: type, rows: List[Any]) -> Any:
    """JSON objects (or docs already validated by FastAPI) -> a ``DocList[cls]``; a bad one is a 422
    naming ``data``, its index and the field."""
    import pydantic
    from docarray import BaseDoc
    docs = []
    for i, row in enumerate(rows):
        if isinstance(row, BaseDoc):
            row = row.model_dump(warnings=False) if type(row) is not cls else row
        if not isinstance(row, (dict, BaseDoc)):
            raise DoorError(422, [{'loc': ['body', 'data', i], 'msg': f'a document is a JSON object, got '
                                   f'{type(row).__name__}', 'type': 'model_type'}])
        try:
            doc = row if isinstance(row, cls) else cls.model_validate(row)
        except pydantic.ValidationError as e:
            raise DoorError(422, validation_detail(e, ('body', 'data', i))) from None
        if getattr(doc, 'id', '') is None:   # a class built from a schema has no id factory
            doc.id = uuid.uuid4().hex
        docs.append(doc)
    return _doclist_of(cls)(docs)


@functools.lru_cache(maxsize=256)
def _doclist_of(cls: type) -> type:
    from docarray import DocList
    return DocList[cls]


def request_frame(endpoint: str, docs: Any, parameters: Optional[Dict[str, Any]],
                  header: Optional[Dict[str, Any]]) -> Tuple[bytes, str]:
    """The gRPC request frame of a JSON request -> (frame, request id)."""
    from runtime.codec import encode_docs
    if parameters is not None and not isinstance(parameters, dict):
        raise DoorError(422, [{'loc': ['body', 'parameters'], 'msg': 'parameters must be a JSON object',
                               'type': 'dict_type'}])
    header = header or {}
    request_id = header.get('requestId') or header.get('request_id') or uuid.uuid4().hex
    h: Dict[str, Any] = {'endpoint': endpoint, 'parameters': parameters or {}, 'request_id': str(request_id)}
    target = header.get('targetExecutor') or header.get('target_executor')
    if target:
        h['target_executor'] = target
    return protocol.pack(h, encode_docs(docs)), str(request_id)


def _json_default(value: Any) -> Any:
    """What ``json`` cannot write by itself: tensors (lists), bytes (UTF-8 text, as pydantic writes them)."""
    if hasattr(value, 'tolist'):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode('utf-8', errors='replace')
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def json_bytes(payload: Any) -> bytes:
    """A reply as compact JSON bytes; tensors become lists, bytes UTF-8 text (as pydantic writes them)."""
    return json.dumps(payload, separators=(',', ':'), default=_json_default).encode()


def reply_json(reply: bytes, parameters: Optional[Dict[str, Any]], endpoint: str,
               request_id: str) -> Dict[str, Any]:
    """A reply frame -> Jina's JSON reply (documents as the replica encoded them, with its output
    class's fields: :func:`runtime.codec.decode_rows`); an error reply raises :class:`DoorError`."""
    from runtime.codec import decode_rows
    h, body = protocol.unpack(reply)
    if not h.get('ok'):
        err = h.get('error') or {}
        status = _STATUS_OF.get(err.get('type', ''), EXECUTOR_FAILED)
        where = err.get('where', '')
        raise DoorError(status, f'{where}: {err.get("type", "Error")}: {err.get("message", "")}'.lstrip(': '))
    try:
        rows = decode_rows(bytes(body))
    except protocol.ProtocolError as e:   # the replica's answer, not the caller's input
        raise DoorError(502, f'the gateway could not read the reply of {h.get("replica", "the Executor")}: {e}') \
            from None
    params = dict(parameters or {})
    if h.get('results'):
        params['__results__'] = h['results']
    return {'data': rows, 'parameters': params,
            'header': {'requestId': request_id, 'execEndpoint': endpoint,
                       'status': {'code': 0, 'description': ''}}}
