"""Every Deployment and Flow running in this kernel, however it was started.

The magics and the ControlPanel add what they start (:meth:`Registry.add`, which
refuses a name already running here, whoever started it); a Deployment built in
code and started with ``start()`` or ``with`` is added by the observer hook of
:mod:`runtime.orchestration` (``OBSERVERS``), and every close removes its entry
and remembers the name (``%orchestra status`` says what was stopped). Listeners
(:meth:`Registry.subscribe`, the ControlPanel) hear about each change.

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
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from runtime import orchestration
from runtime.orchestration import Orchestration

log = logging.getLogger('orchestra')


@dataclass
class Entry:
    """One orchestration running (or starting) in this kernel."""
    obj: Orchestration
    source: str = 'code'                             # who started it: 'magic', 'panel' or 'code'
    thread: Optional[threading.Thread] = None       # set while a --no-wait start runs
    error: Optional[BaseException] = None            # why a background start failed
    progress: Dict[str, str] = field(default_factory=dict)  # process name -> starting/ready/failed
    added_at: float = field(default_factory=time.time)
    key: str = ''                                    # the registry key: the name, unless it clashed

    @property
    def name(self) -> str:
        return self.key or self.obj.name

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
        self._stopped: List[str] = []
        self._listeners: List[Callable[[], None]] = []

    # -- changes ------------------------------------------------------------------------
    def add(self, obj: Orchestration, source: str = 'code') -> Entry:
        """Register ``obj`` before it starts; refuse a name that is already running or starting here."""
        with self._lock:
            old = self._entries.get(obj.name)
            if old is not None and old.obj is not obj and old.state in ('running', 'starting'):
                who = {'magic': 'by %orchestra up', 'panel': 'by a ControlPanel',
                       'code': 'in code'}.get(old.source, '')
                raise ValueError(f'{obj.name!r} is already {old.state} in this kernel (started {who}): '
                                 f'`%orchestra down {obj.name}` first, or pick another name')
            entry = Entry(obj, source=source, key=obj.name)
            self._entries[obj.name] = entry
        self._changed()
        return entry

    def _observe(self, event: str, obj: Orchestration) -> None:
        """The hook runtime.orchestration calls on every start and close in this process."""
        with self._lock:
            mine = [k for k, e in self._entries.items() if e.obj is obj]
            if event == 'started':
                if not mine:
                    key, i = obj.name, 2
                    while key in self._entries and self._entries[key].state in ('running', 'starting'):
                        key, i = f'{obj.name}#{i}', i + 1
                    self._entries[key] = Entry(obj, source='code', key=key)
                if obj.name in self._stopped:
                    self._stopped.remove(obj.name)
            elif event == 'closed':
                for k in mine:
                    del self._entries[k]
                if obj.name in self._stopped:
                    self._stopped.remove(obj.name)
                self._stopped.append(obj.name)
            else:
                return
        self._changed()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (in the thread that made the change) after every change."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _changed(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:
                log.exception('a registry listener failed')

    # -- reading --------------------------------------------------------------------------
    def get(self, name: str) -> Entry:
        with self._lock:
            if name not in self._entries:
                known = ', '.join(self._entries) or 'none'
                stopped = f'; stopped: {", ".join(self._stopped)}' if self._stopped else ''
                raise KeyError(f'nothing named {name!r} is running in this kernel (running: {known}{stopped})')
            return self._entries[name]

    def entries(self) -> List[Entry]:
        with self._lock:
            return list(self._entries.values())

    def names(self) -> List[str]:
        with self._lock:
            return list(self._entries)

    def stopped(self) -> List[str]:
        """Names stopped in this kernel (oldest first) and not running again."""
        with self._lock:
            return [n for n in self._stopped if n not in self._entries]

    # -- stopping -------------------------------------------------------------------------
    def remove(self, name: str) -> Optional[Entry]:
        """Forget ``name`` without stopping it (a start that failed)."""
        with self._lock:
            entry = self._entries.pop(name, None)
        if entry is not None:
            self._changed()
        return entry

    def close(self, name: str, timeout: float = 60.0) -> Entry:
        """Stop ``name`` (waiting for a background start to finish first) and forget it."""
        entry = self.get(name)
        if entry.thread is not None:
            entry.thread.join(timeout)
        entry.obj.close()  # the observer hook forgets it and remembers the name
        self.remove(entry.name)
        return entry

    def close_all(self) -> List[str]:
        """Stop everything running in this kernel (in parallel); return the names."""
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
orchestration.OBSERVERS.append(REGISTRY._observe)
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
