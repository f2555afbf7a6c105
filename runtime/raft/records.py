"""The RAFT record (``Record``): one ``@write`` request (or a barrier) as it travels through the log.

Bodies up to ``INLINE_PAYLOAD_BYTES`` ride inside the record. pysyncobj's log and journal
hold records as *plain tuples* (``Record.to_wire``: ``(rid, endpoint, parameters, size,
digest, origin[, body])``, the form every version wrote), never as ``Record`` objects: a
pickled ``NamedTuple`` names its class, and journals must stay readable by any version.
``Record.from_wire`` converts back where entries are committed. The JSON forms here write
records and log entries into pysyncobj's compaction dump. Relies on the standard library only.
"""
from __future__ import annotations

import base64
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple


#: request bodies up to this size ride inside the RAFT record (pysyncobj carries ~1 KB entries
#: at thousands per second); larger ones move between replicas over gRPC
INLINE_PAYLOAD_BYTES = 2048

#: the fields a record has without its optional inline body
RECORD_FIELDS = 6


class Record(NamedTuple):
    """One request ordered through the log; ``endpoint`` None marks a barrier."""

    rid: str                        # request id (32 hex digits): the payload's key, and for deduplication
    endpoint: Optional[str]         # the ``@write`` endpoint; None: a barrier (applied as a no-op)
    parameters: str                 # the request's parameters as compact JSON ('' for a barrier)
    size: int                       # the body's length in bytes
    digest: str                     # the body's digest (``payloads._digest``)
    origin: int                     # the replica number that received the request
    body: Optional[bytes] = None    # the body itself when small (inline); else it is in the payload stores

    @property
    def is_barrier(self) -> bool:
        return self.endpoint is None

    def to_wire(self) -> tuple:
        """The plain tuple pysyncobj's log holds (6 fields, 7 with an inline body)."""
        return tuple(self) if self.body is not None else tuple(self)[:RECORD_FIELDS]

    @classmethod
    def from_wire(cls, t: Sequence[Any]) -> 'Record':
        """A log entry's tuple (any version's) -> ``Record``."""
        return cls(*t)


def _record_to_json(rec: Record) -> List[Any]:
    out: List[Any] = list(rec.to_wire()[:RECORD_FIELDS])
    if rec.body is not None:
        out.append(base64.b64encode(rec.body).decode())
    return out


def _record_from_json(obj: List[Any]) -> Record:
    rec = Record(*obj[:RECORD_FIELDS])
    return rec._replace(body=base64.b64decode(obj[6])) if len(obj) > RECORD_FIELDS and obj[6] is not None else rec


def _entry_to_json(entry: Tuple[bytes, int, int]) -> List[Any]:
    return [base64.b64encode(bytes(entry[0])).decode(), int(entry[1]), int(entry[2])]


def _entry_from_json(obj: List[Any]) -> Tuple[bytes, int, int]:
    return (base64.b64decode(obj[0]), int(obj[1]), int(obj[2]))
