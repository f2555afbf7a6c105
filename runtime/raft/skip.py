"""Skipped log entries: poison ``@write`` entries an operator told every replica to pass over.

A committed entry whose ``@write`` call kills the replica applying it would kill every
replica, forever (each restart applies it again). ``Deployment.skip_entry(index)``
writes its log index to ``<workspace>/<name>/.raft/shard-S/skip-entries.json``; every
replica of that shard reads the file when it starts and applies the entry as a no-op
(a client waiting on it gets an error saying so). The list only grows: all replicas
skip the same entries, so their states stay the same. See docs/reliability.md,
"Skipping a poison log entry".
"""
from __future__ import annotations

import json
import os
from typing import Set

from runtime.raft.common import _write_json

#: in the shard's RAFT folder (next to rep-0, rep-1, ...)
SKIP_FILE = 'skip-entries.json'


def skip_file(replica_dir: str) -> str:
    """The skip list of the shard whose replica keeps its RAFT files in ``replica_dir``."""
    return os.path.join(os.path.dirname(os.path.normpath(replica_dir)), SKIP_FILE)


def read_skipped(path: str) -> Set[int]:
    """The log indexes in the skip file at ``path`` (none when it does not exist)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as e:
        raise ValueError(f'{path}: not a skip list ({e}); expected {{"skip": [log index, ...]}}') from None
    entries = data.get('skip') if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in entries):
        raise ValueError(f'{path}: expected {{"skip": [log index, ...]}}, got {data!r}')
    return set(entries)


def add_skipped(path: str, index: int) -> Set[int]:
    """Add log ``index`` to the skip file at ``path``; returns the whole list."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise ValueError(f'index={index!r}: a RAFT log index is an integer >= 1')
    entries = read_skipped(path) | {index}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_json(path, {'skip': sorted(entries)})
    return entries
