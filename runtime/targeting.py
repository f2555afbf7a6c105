"""``post(target_executor=REGEX)``: which Executors of a graph run a request (Jina's meaning).

An Executor runs the request when ``re.match(pattern, name)`` (so ``'enc'`` matches ``encoder``
too, as in Jina); the others pass the docs on unchanged. Unlike Jina, a pattern that matches no
Executor at all is an error naming the Executors (Jina silently returns the docs untouched).

    >>> runs({'target_executor': 'enc'}, 'encoder'), runs({'target_executor': 'enc'}, 'indexer')
    (True, False)
    >>> unmatched('idx', ['encoder', 'indexer'])
    "target_executor='idx' matches no Executor (re.match on the names: 'encoder', 'indexer')"
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Dict, Iterable, Optional


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> 're.Pattern[str]':
    return re.compile(pattern)


def runs(header: Dict[str, Any], name: str) -> bool:
    """Whether the Executor ``name`` runs a request with this header (no ``target_executor``: all run)."""
    pattern = header.get('target_executor')
    return pattern is None or _compiled(pattern).match(name) is not None


def unmatched(pattern: Optional[str], names: Iterable[str]) -> Optional[str]:
    """The error message when ``pattern`` matches none of ``names``; None when one matches (or no pattern)."""
    if pattern is None:
        return None
    names = list(names)
    try:
        regex = _compiled(pattern)
    except (re.error, TypeError) as e:
        return f'target_executor={pattern!r} is not a valid regular expression ({e})'
    if any(regex.match(n) for n in names):
        return None
    return (f'target_executor={pattern!r} matches no Executor (re.match on the names: '
            f'{", ".join(repr(n) for n in names)})')
