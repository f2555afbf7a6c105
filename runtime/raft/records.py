"""The RAFT record: ``(request id, endpoint, parameters, size, digest, origin replica[, body])``.

Bodies up to ``INLINE_PAYLOAD_BYTES`` ride inside the record; the JSON forms here write
records and log entries into pysyncobj's compaction dump. A record with endpoint ``None``
is a barrier. Relies on the standard library only.
"""
from __future__ import annotations

import base64
from typing import Any, List, Optional, Sequence, Tuple


#: request bodies up to this size ride inside the RAFT record (pysyncobj carries ~1 KB entries
#: at thousands per second); larger ones move between replicas over gRPC
INLINE_PAYLOAD_BYTES = 2048


def _inline(rec: Sequence[Any]) -> Optional[bytes]:
    """The body a record carries itself (small writes), or None."""
    return rec[6] if len(rec) > 6 and rec[6] is not None else None


def _record_to_json(rec: Sequence[Any]) -> List[Any]:
    out = list(rec[:6])
    if _inline(rec) is not None:
        out.append(base64.b64encode(rec[6]).decode())
    return out


def _record_from_json(obj: List[Any]) -> tuple:
    rec = tuple(obj[:6])
    return rec + (base64.b64decode(obj[6]),) if len(obj) > 6 and obj[6] is not None else rec


def _entry_to_json(entry: Tuple[bytes, int, int]) -> List[Any]:
    return [base64.b64encode(bytes(entry[0])).decode(), int(entry[1]), int(entry[2])]


def _entry_from_json(obj: List[Any]) -> Tuple[bytes, int, int]:
    return (base64.b64decode(obj[0]), int(obj[1]), int(obj[2]))
