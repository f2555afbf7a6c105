"""Merging documents from several shards (ALL polling) or branches (a Flow's joins).

**Reduce.** :func:`reduce_docs` merges DocLists by doc id, in order (shard order, or
``needs`` order for a join): a doc keeps the place where its id first appeared; for single
values the earliest (lowest shard's) non-None value wins; lists and nested DocLists are
concatenated in order; dicts are merged, earlier keys winning; nested docs merge recursively.
:func:`concat_docs` (``no_reduce``) concatenates without merging. :func:`merge_bodies` does
the same on encoded bodies (decode, merge, encode), which is what the gateway holds.

    >>> merged = reduce_docs([shard0_docs, shard1_docs])   # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence


def reduce_docs(results: Sequence[Any]):
    """Merge DocLists from shards (or branches) by doc id, in order; ``None`` when there are none.

    >>> merged = reduce_docs([shard0_docs, shard1_docs])  # doctest: +SKIP
    """
    from docarray import DocList
    results = [r for r in results if r is not None]
    if not results:
        return None
    doc_type = results[0].doc_type
    by_id: Dict[str, Any] = {}
    order: List[str] = []
    for docs in results:
        for doc in docs:
            if doc.id in by_id:
                _merge_into(by_id[doc.id], doc)
            else:
                by_id[doc.id] = doc
                order.append(doc.id)
    return DocList[doc_type].construct([by_id[i] for i in order])


def concat_docs(results: Sequence[Any]):
    """``no_reduce``: every result's docs, concatenated in order, unmerged.

    >>> len(concat_docs([two_docs, three_docs]))   # doctest: +SKIP
    5
    """
    from docarray import DocList
    results = [r for r in results if r is not None]
    if not results:
        return None
    return DocList[results[0].doc_type].construct([d for r in results for d in r])


def merge_bodies(bodies: Sequence[bytes], reduce: bool = True) -> bytes:
    """Encoded DocLists -> one encoded DocList, reduced by id (or concatenated: ``reduce=False``).

    >>> merge_bodies([encode_docs(a), encode_docs(b)])   # doctest: +SKIP
    b'ONB...'
    """
    from runtime.codec import decode_docs, encode_docs
    parts = [decode_docs(bytes(b)) for b in bodies]
    return encode_docs(reduce_docs(parts) if reduce else concat_docs(parts))


def merge_results(headers: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The ``results`` of several reply headers, merged (later keys win); ``None`` if none has any.

    >>> merge_results([{'results': {'a': 1}}, {'ok': True}, {'results': {'b': 2}}])
    {'a': 1, 'b': 2}
    """
    merged: Dict[str, Any] = {}
    for h in headers:
        r = h.get('results')
        if r:
            merged.update(r)
    return merged or None


def _merge_into(left, right) -> None:
    from docarray import BaseDoc, DocList
    right_fields = type(right).model_fields
    for field in type(left).model_fields:
        if field == 'id' or field not in right_fields:
            continue
        lv, rv = getattr(left, field), getattr(right, field)
        if rv is None:
            continue
        if lv is None:
            setattr(left, field, rv)
        elif isinstance(lv, DocList) and isinstance(rv, DocList):
            lv.extend(rv)
        elif isinstance(lv, list) and isinstance(rv, list):
            setattr(left, field, lv + rv)
        elif isinstance(lv, dict) and isinstance(rv, dict):
            setattr(left, field, {**rv, **lv})
        elif isinstance(lv, BaseDoc) and isinstance(rv, BaseDoc):
            _merge_into(lv, rv)
        # other single values: the earliest (lowest shard's) value wins
