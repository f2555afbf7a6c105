"""The runtime's notes in a notebook: one informational line in the cell, not a stderr block.

The supervisor logs a replica that died and is being restarted as a warning on the
``orchestra`` logger, from its own thread. Without a handler Python prints it to stderr,
which a notebook shows as a pink error block, wherever that thread's output lands. Here
the warnings are kept and shown, once the running cell finishes, as one grey ``ⓘ`` line
each (with the time it happened) in that cell: the cell that was running when the replica
died is the one that caused it (or, when the kernel was idle, the next one run). Errors
(a crash loop, a failed restart) still go to stderr at once.

    >>> install()        # done by ``import orchestra_nb`` inside IPython   # doctest: +SKIP
"""
from __future__ import annotations

import html
import logging
import sys
import threading
import time
from typing import Any, List

_LOCK = threading.Lock()
_PENDING: List[str] = []


class NoteHandler(logging.Handler):
    """Warnings -> pending notes (shown after the cell); errors -> stderr now."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            return
        if record.levelno >= logging.ERROR:
            sys.stderr.write(message + '\n')
            return
        stamp = time.strftime('%H:%M:%S', time.localtime(record.created))
        with _LOCK:
            _PENDING.append(f'{stamp} {message.splitlines()[0] if message else ""}')


class _Note:
    """One informational line: grey HTML in a notebook, ``ⓘ ...`` as text."""

    def __init__(self, line: str):
        self.line = line

    def _repr_html_(self) -> str:
        return f'<div style="color: #616161; font-size: 90%">&#9432; {html.escape(self.line)}</div>'

    def __repr__(self) -> str:
        return f'ⓘ {self.line}'


def show_pending(*_args: Any) -> None:
    """Display the notes gathered while the cell ran (IPython's ``post_run_cell`` event)."""
    with _LOCK:
        notes, _PENDING[:] = list(_PENDING), []
    if notes:
        from IPython.display import display
        for line in notes:
            display(_Note(line))


def install() -> bool:
    """Route the ``orchestra`` logger's warnings to notes in this IPython shell (once)."""
    try:
        from IPython import get_ipython
    except ImportError:   # pragma: no cover
        return False
    shell = get_ipython()
    if shell is None:
        return False
    logger = logging.getLogger('orchestra')
    if any(isinstance(h, NoteHandler) for h in logger.handlers):
        return True
    handler = NoteHandler(level=logging.WARNING)
    logger.addHandler(handler)
    shell.events.register('post_run_cell', show_pending)
    return True
