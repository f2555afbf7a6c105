"""What this kernel started: the Deployments/Flows of ``%orchestra`` and the ControlPanel.

Every entry is stopped by :func:`close_all`, which runs at interpreter exit (a
kernel shutdown or restart exits the kernel process, so ``atexit`` runs). Even
without it nothing would survive: every child watches a lifeline pipe to this
process (:mod:`runtime.processes`). Closing here is the clean path: replicas
finish their requests and flush their logs.

    >>> REGISTRY.add(dep); REGISTRY.get('indexer'); REGISTRY.close_all()

It also names what gets started (:func:`default_name`, :func:`executor_classes`) for
the magics and the ControlPanel; nothing here imports IPython or ipywidgets.
"""
from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from runtime.orchestration import Orchestration


@dataclass
class Entry:
    """One orchestration this kernel started (or is starting)."""
    obj: Orchestration
    thread: Optional[threading.Thread] = None       # set while a --no-wait start runs
    error: Optional[BaseException] = None            # why a background start failed
    progress: Dict[str, str] = field(default_factory=dict)  # process name -> starting/ready/failed
    added_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.obj.name

    @property
    def state(self) -> str:
        if self.thread is not None and self.thread.is_alive():
            return 'starting'
        if self.error is not None:
            return 'failed'
        return 'running' if self.obj.running else 'stopped'


class Registry:
    """Name -> :class:`Entry`; thread safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: Dict[str, Entry] = {}

    def add(self, obj: Orchestration) -> Entry:
        """Register ``obj``; refuse a name that is already running or starting here."""
        with self._lock:
            old = self._entries.get(obj.name)
            if old is not None and old.obj is not obj and old.state in ('running', 'starting'):
                raise ValueError(f'{obj.name!r} is already {old.state} in this kernel: '
                                 f'`%orchestra down {obj.name}` first, or pick another --name')
            entry = Entry(obj)
            self._entries[obj.name] = entry
            return entry

    def get(self, name: str) -> Entry:
        with self._lock:
            if name not in self._entries:
                known = ', '.join(self._entries) or 'none'
                raise KeyError(f'nothing named {name!r} was started in this kernel (known: {known})')
            return self._entries[name]

    def entries(self) -> List[Entry]:
        with self._lock:
            return list(self._entries.values())

    def names(self) -> List[str]:
        with self._lock:
            return list(self._entries)

    def remove(self, name: str) -> Optional[Entry]:
        with self._lock:
            return self._entries.pop(name, None)

    def close(self, name: str, timeout: float = 60.0) -> Entry:
        """Stop ``name`` (waiting for a background start to finish first) and forget it."""
        entry = self.get(name)
        if entry.thread is not None:
            entry.thread.join(timeout)
        entry.obj.close()
        self.remove(name)
        return entry

    def close_all(self) -> List[str]:
        """Stop everything this kernel started (in parallel); return the names."""
        entries = self.entries()
        threads = [threading.Thread(target=self._close_quietly, args=(e,), daemon=True) for e in entries]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return [e.name for e in entries]

    def _close_quietly(self, entry: Entry) -> None:
        try:
            if entry.thread is not None:
                entry.thread.join(30)
            entry.obj.close()
        except Exception:
            pass
        self.remove(entry.name)


#: the one registry of this kernel
REGISTRY = Registry()
atexit.register(REGISTRY.close_all)


def executor_classes(user_ns: Dict[str, Any]) -> Dict[str, type]:
    """Executor subclasses defined in the notebook namespace, by name."""
    from runtime.executor import Executor
    return {k: v for k, v in user_ns.items()
            if isinstance(v, type) and issubclass(v, Executor) and v is not Executor
            and not k.startswith('_')}


def default_name(uses: Any) -> str:
    """A registry-unique name from what runs: 'upper', then 'upper-2'..."""
    if isinstance(uses, type):
        base = uses.__name__
    else:
        base = str(uses).rsplit(':', 1)[-1].rsplit('.', 1)[-1]
    base = base.lower() or 'executor'
    name, i = base, 2
    taken = {e.name for e in REGISTRY.entries() if e.state in ('running', 'starting')}
    while name in taken:
        name, i = f'{base}-{i}', i + 1
    return name
