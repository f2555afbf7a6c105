"""Small pieces the RAFT modules share: ``RaftNotReady``, proposal outcomes, error text, file helpers.

Relies on the standard library only.
"""
from __future__ import annotations

import json
import os
from enum import IntEnum
from typing import Any


class RaftNotReady(RuntimeError):
    """The replica's RAFT node is not (yet) able to serve this request."""


class Outcome(IntEnum):
    """What became of a proposal: pysyncobj's ``FAIL_REASON`` codes (0..7) and ours (< 0).

    An ``int``: it travels as a plain number in peers' ``put_payloads`` replies.
    """

    COMMITTED = 0         # pysyncobj SUCCESS
    QUEUE_FULL = 1
    NO_LEADER = 2         # pysyncobj MISSING_LEADER
    DISCARDED = 3
    NOT_LEADER = 4        # also: a peer that does not lead declines to propose a record for us
    LEADER_CHANGED = 5
    DENIED = 6            # pysyncobj REQUEST_DENIED
    UNKNOWN = 7           # pysyncobj UNKNOWN_OUTCOME
    NO_ANSWER = -1        # ours: pysyncobj did not call back within the proposal timeout
    REFUSED = -2          # ours: pysyncobj raised, or a peer refused to propose

    @classmethod
    def of(cls, code: Any) -> 'Outcome':
        """A code from pysyncobj or a peer's reply -> an ``Outcome`` (``UNKNOWN`` if not one)."""
        try:
            return cls(code)
        except (ValueError, TypeError):
            return cls.UNKNOWN

    @property
    def label(self) -> str:
        """A few words for logs and traces: 'committed', 'not leader', ..."""
        return _LABELS[self]


_LABELS = {Outcome.COMMITTED: 'committed', Outcome.QUEUE_FULL: 'queue full', Outcome.NO_LEADER: 'no leader',
           Outcome.DISCARDED: 'discarded', Outcome.NOT_LEADER: 'not leader',
           Outcome.LEADER_CHANGED: 'leader changed', Outcome.DENIED: 'denied',
           Outcome.UNKNOWN: 'unknown outcome', Outcome.NO_ANSWER: 'no answer', Outcome.REFUSED: 'refused'}


def _short(e: BaseException) -> str:
    """An exception in one line; a gRPC error as its status code and details."""
    details = getattr(e, 'details', None)
    if callable(details):
        try:
            return f'{e.code().name}: {details()}'
        except Exception:
            pass
    return f'{type(e).__name__}: {e}'


def _write_json(path: str, obj: Any) -> None:
    """``obj`` as JSON in ``path`` (atomically; mode 0600: workspace files are private)."""
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w') as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
