"""Which RAFT log entry a stateful replica is applying: a small file the replica writes before each
call and its owner reads when the replica dies (:mod:`runtime.supervision` names a poison entry by it).

It was a line on the status pipe per entry: JSON on both sides and a thread in the owner -- often a
notebook's kernel -- parsing three lines per write (one per replica), ~60 us of the owner's CPU per
write (py-spy, 4,000 single-doc writes). A write into a shared mapping costs the replica ~1 us, and
the file says exactly what was being applied when the process died (a pipe's reader may lag behind).

Layout (:data:`SIZE` bytes): the log index as a little-endian int64 (0: nothing being applied), then
the endpoint, UTF-8, NUL-padded.

>>> mark = ApplyingMark(path)          # doctest: +SKIP   (the replica, at start)
>>> mark.set(12, '/index'); read_applying(path)          # doctest: +SKIP
{'index': 12, 'endpoint': '/index'}
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Any, Dict, Optional

#: bytes of the file: the index, then the endpoint (cut to fit)
SIZE = 256
_INDEX = struct.Struct('<q')


class ApplyingMark:
    """The replica's side: ``set`` before an entry's call, ``clear`` once a batch is applied."""

    def __init__(self, path: str):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            self._map: Optional[mmap.mmap] = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self.path = path

    def set(self, index: int, endpoint: Optional[str]) -> None:
        if self._map is not None:
            name = (endpoint or '').encode('utf-8', 'replace')[:SIZE - _INDEX.size]
            self._map[:] = _INDEX.pack(index) + name + bytes(SIZE - _INDEX.size - len(name))

    def clear(self) -> None:
        if self._map is not None:
            self._map[:_INDEX.size] = _INDEX.pack(0)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def read_applying(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """The owner's side: ``{'index', 'endpoint'}`` of the entry being applied, None if none (or no file)."""
    if not path:
        return None
    try:
        with open(path, 'rb') as f:
            data = f.read(SIZE)
    except OSError:
        return None
    if len(data) < _INDEX.size:
        return None
    (index,) = _INDEX.unpack_from(data)
    if index <= 0:
        return None
    return {'index': index, 'endpoint': data[_INDEX.size:].rstrip(b'\0').decode('utf-8', 'replace')}
