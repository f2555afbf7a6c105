"""Small pieces the RAFT modules share: ``RaftNotReady`` and two file helpers.

Relies on the standard library only.
"""
from __future__ import annotations

import json
import os
from typing import Any


class RaftNotReady(RuntimeError):
    """The replica's RAFT node is not (yet) able to serve this request."""


def _write_json(path: str, obj: Any) -> None:
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
