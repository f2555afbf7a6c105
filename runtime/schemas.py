"""Docarray schemas of chained Executors: checked when a Flow starts, as Jina does.

Each replica reports, per endpoint, the fields of the doc type it takes and the one it returns
(:func:`schema_fields`: name -> JSON-schema type, from the endpoint's annotations or
``request_schema``/``response_schema``). For every edge ``a -> b`` of a Flow and every endpoint
of ``a``, the fields ``a`` returns must be the fields ``b`` takes for that endpoint (or for its
default endpoint): the same names with the same types -- Jina's check. An endpoint whose types
are not declared on either side is not checked.

    >>> schema_errors({'b': ['a']}, {'a': {'/x': {'output_fields': {'text': 'string'}}},
    ...                              'b': {'/x': {'input_fields': {'text': 'integer'}}}})
    ["'a' -> 'b' on '/x': 'a' returns {text: string}, 'b' takes {text: integer}"]
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

DEFAULT_ENDPOINT = '__default__'   # runtime.executor.DEFAULT_ENDPOINT (this module imports nothing of ours)


def schema_fields(doc_type: Any) -> Optional[Dict[str, Optional[str]]]:
    """A doc class -> ``{field: JSON-schema type}``; None for no class (not declared)."""
    if doc_type is None:
        return None
    try:
        props = doc_type.model_json_schema().get('properties', {})
    except Exception:   # a field type pydantic cannot describe: not checked
        return None
    return {name: p.get('type') for name, p in sorted(props.items())}


def _show(fields: Dict[str, Any]) -> str:
    return '{' + ', '.join(f'{k}: {v or "any"}' for k, v in fields.items()) + '}'


def schema_errors(needs: Dict[str, List[str]], endpoints: Dict[str, Dict[str, Dict[str, Any]]]) -> List[str]:
    """One message per edge and endpoint whose schemas differ.

    ``needs``: node -> the nodes it reads from; ``endpoints``: node -> endpoint -> the replica's
    description (``input_fields``/``output_fields``). Nodes missing from ``endpoints`` (the
    gateway, joins, external Executors that did not say) are not checked.
    """
    errors = []
    for b, sources in needs.items():
        for a in sources:
            if a not in endpoints or b not in endpoints:
                continue
            for endpoint, out in sorted(endpoints[a].items()):
                target = endpoints[b].get(endpoint) or endpoints[b].get(DEFAULT_ENDPOINT)
                produced = out.get('output_fields')
                taken = (target or {}).get('input_fields')
                if produced is None or taken is None or produced == taken:
                    continue
                errors.append(f'{a!r} -> {b!r} on {endpoint!r}: {a!r} returns {_show(produced)}, '
                              f'{b!r} takes {_show(taken)}')
    return errors
