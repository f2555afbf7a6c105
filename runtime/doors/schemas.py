"""Doc classes for the HTTP and WebSocket doors, built from the JSON schemas replicas report.

A replica's ``Info`` lists, per endpoint, its input and output doc classes as JSON schemas
(``input_schema``/``output_schema``, :meth:`runtime.executor.EndpointTable.describe`); the
gateway never receives a pickled class. From them the doors build pydantic/docarray classes
(docarray's own ``create_base_doc_from_schema``, as Jina's gateway does) that validate JSON
bodies (a mismatch is a 422 naming the field) and encode them with :mod:`runtime.codec`.

    >>> cls = doc_class({'title': 'Q', 'type': 'object', 'properties': {'text': {'type': 'string'}}})
    >>> cls(text='hi').text
    'hi'

An untyped endpoint (``docs`` without ``DocList[X]``) takes any JSON objects: their class is
inferred from the values (:func:`inferred_doc_class`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Tuple

DEFAULT_ENDPOINT = '__default__'


@dataclass(frozen=True)
class EndpointSchema:
    """One endpoint as the doors serve it: JSON schemas of what goes in and what comes out (None: untyped)."""
    name: str
    input_schema: Optional[Dict[str, Any]]
    output_schema: Optional[Dict[str, Any]]


def _known_class(schema: Dict[str, Any]) -> Optional[type]:
    """docarray's own document class of that name when its schema is exactly ``schema`` (TextDoc, ImageDoc...):
    the real class validates as the replica does and takes the codec's fast paths on both ends."""
    import docarray.documents
    cls = getattr(docarray.documents, str(schema.get('title')), None)
    try:
        return cls if isinstance(cls, type) and cls.model_json_schema() == schema else None
    except Exception:
        return None


@lru_cache(maxsize=256)
def _doc_class_cached(text: str) -> type:
    from docarray.utils.create_dynamic_doc_class import create_base_doc_from_schema
    schema = json.loads(text)
    return _known_class(schema) or create_base_doc_from_schema(schema, str(schema.get('title') or 'Doc'), {})


#: id(schema dict) -> (that dict, its class): the same dict (a replica's report) costs one lookup
_BY_IDENTITY: Dict[int, Tuple[Dict[str, Any], type]] = {}


def doc_class(schema: Dict[str, Any]) -> type:
    """A docarray class validating what ``schema`` (a doc class's JSON schema) describes; cached."""
    hit = _BY_IDENTITY.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    cls = _doc_class_cached(json.dumps(schema, sort_keys=True))
    if len(_BY_IDENTITY) > 1024:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[id(schema)] = (schema, cls)
    return cls


def _value_type(values: List[Any]) -> Any:
    from typing import Dict as D, List as L
    from docarray.typing import NdArray
    present = [v for v in values if v is not None]
    if not present:
        return Any
    if all(isinstance(v, bool) for v in present):
        return bool
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return int
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return float
    if all(isinstance(v, str) for v in present):
        return str
    if all(isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
           for v in present):
        return NdArray      # a list of numbers: a tensor (embedding), as docarray's JSON writes one
    if all(isinstance(v, dict) for v in present):
        return D[str, Any]
    return L[Any] if all(isinstance(v, list) for v in present) else Any


@lru_cache(maxsize=256)
def _inferred(fields: Tuple[Tuple[str, Any], ...]) -> type:
    import pydantic
    from docarray import BaseDoc
    return pydantic.create_model('JsonDoc', __base__=BaseDoc,
                                 **{name: (Optional[t], None) for name, t in fields})


def inferred_doc_class(rows: Iterable[Dict[str, Any]]) -> type:
    """A docarray class with one optional field per key of ``rows`` (JSON objects), typed from the values.

    >>> inferred_doc_class([{'text': 'a', 'n': 1}]).model_fields['n'].annotation
    typing.Optional[int]
    """
    rows = list(rows)
    keys: Dict[str, List[Any]] = {}
    for row in rows:
        for k, v in row.items():
            if k != 'id':
                keys.setdefault(k, []).append(v)
    return _inferred(tuple((k, _value_type(vs)) for k, vs in sorted(keys.items())))


def endpoint_schemas(served: List[Optional[Dict[str, Dict[str, Any]]]]
                     ) -> Tuple[Dict[str, EndpointSchema], Optional[EndpointSchema]]:
    """What a graph serves, from each node's ``endpoints`` record (in the order requests pass them).

    -> (endpoint -> :class:`EndpointSchema`, the schema of every other endpoint when some stage
    has a bare ``@requests``, else None). In a Flow, an endpoint takes the input of the first
    stage serving it and returns the output of the last one.

    >>> endpoint_schemas([{'/a': {'input_schema': None, 'output_schema': None}}])[0]['/a'].name
    '/a'
    """
    names: List[str] = []
    for eps in served:
        for name in eps or {}:
            if name != DEFAULT_ENDPOINT and name not in names:
                names.append(name)

    def schema_of(name: str) -> Optional[EndpointSchema]:
        chain = [eps.get(name) or eps.get(DEFAULT_ENDPOINT) for eps in served if eps]
        chain = [c for c in chain if c is not None]
        return EndpointSchema(name, chain[0].get('input_schema'), chain[-1].get('output_schema')) if chain else None

    default = schema_of(DEFAULT_ENDPOINT) if any(DEFAULT_ENDPOINT in (eps or {}) for eps in served) else None
    return {name: schema_of(name) for name in names}, default
