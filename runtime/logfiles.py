"""Reading the processes' log files (one file per replica or gateway; see runtime.processes).

    >>> tail('/tmp/orchestra-nb/up-123-abc/up/rep-0.log', 5)   # doctest: +SKIP
"""
from __future__ import annotations

import os


def tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors='replace')
    except OSError:
        return ''
    return '\n'.join(data.splitlines()[-lines:])
