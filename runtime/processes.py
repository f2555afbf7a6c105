"""Starting, watching and stopping child processes -- with no orphans.

Each child (a replica or a gateway) is ``python -m runtime.child``:

- in its **own session**, so the notebook's interrupt button (SIGINT to the
  kernel's process group) does not reach it;
- tied to its owner by a **lifeline**: its stdin is a pipe whose write end only
  the owner holds. When the owner exits -- even by ``kill -9`` -- the kernel
  closes the pipe, the child reads EOF and exits within about a second.
- reporting readiness on a **status pipe** as JSON lines
  (``{"event": "ready", "port": 5555}`` or ``{"event": "failed", "error": ...}``);
- logging to a file of its own, each line prefixed ``name@pid``.

    >>> proc = ChildProcess('demo/rep-0', 'worker', config, log_dir)
    >>> proc.start(); info = proc.wait_ready(timeout=10); proc.stop()
"""
from __future__ import annotations

import atexit
import io
import io
import json
import os
import pickle
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import typing
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Optional

import cloudpickle

_live: 'weakref.WeakSet[ChildProcess]' = weakref.WeakSet()


class ChildFailedError(RuntimeError):
    """A child process failed to start or died; the message quotes its log."""


class ChildProcess:
    """One child process of this owner (replica or gateway)."""

    def __init__(self, name: str, role: str, config: Dict[str, Any], log_path: str,
                 env: Optional[Dict[str, str]] = None):
        self.name = name
        self.role = role
        self.config = config
        self.log_path = log_path
        self.env = env or {}
        self.popen: Optional[subprocess.Popen] = None
        self.info: Dict[str, Any] = {}
        self.failure: Optional[str] = None
        self._ready = threading.Event()
        self.started_at = 0.0

    # -- lifecycle --------------------------------------------------------
    def start(self) -> None:
        os.makedirs(os.path.dirname(self.log_path) or '.', exist_ok=True)
        status_r, status_w = os.pipe()
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        for key, value in self.env.items():  # a None value unsets the variable
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        log = open(self.log_path, 'ab', buffering=0)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, '-m', 'runtime.child', str(status_w)],
                stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(status_w,),
                start_new_session=True, env=env,
                cwd=os.getcwd())
        finally:
            os.close(status_w)
            log.close()
        self.started_at = time.monotonic()
        _live.add(self)
        head = json.dumps({'name': self.name, 'role': self.role, 'sys_path': list(sys.path)}).encode()
        config = dumps(self.config)
        try:
            self.popen.stdin.write(b''.join(struct.pack('<Q', len(b)) + b for b in (head, config)))
            self.popen.stdin.flush()
        except BrokenPipeError:
            pass  # it died at once; the status reader reports it
        threading.Thread(target=self._read_status, args=(status_r,), daemon=True,
                         name=f'status-{self.name}').start()

    def _read_status(self, fd: int) -> None:
        with os.fdopen(fd, 'rb') as f:
            for line in f:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get('event') == 'ready':
                    self.info = msg
                    self._ready.set()
                elif msg.get('event') == 'failed':
                    self.failure = msg.get('error', 'failed')
                    self._ready.set()
                else:
                    self.info.update(msg)
        if not self._ready.is_set():  # EOF before ready: the process died
            self.failure = self.failure or 'the process exited before it was ready'
            self._ready.set()

    def wait_ready(self, timeout: float) -> Dict[str, Any]:
        """Block until the child reports ready; raise :class:`ChildFailedError` otherwise."""
        if not self._ready.wait(timeout):
            raise ChildFailedError(self._explain(
                f'{self.role} {self.name} was not ready within {timeout:.1f} s'))
        if self.failure:
            self.popen and _wait_quietly(self.popen, 1.0)
            raise ChildFailedError(self._explain(f'{self.role} {self.name} failed to start: {self.failure}'))
        return self.info

    @property
    def pid(self) -> Optional[int]:
        return self.popen.pid if self.popen else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 3.0) -> None:
        """Close the lifeline (the child shuts down), then SIGTERM, then SIGKILL."""
        p = self.popen
        if p is None:
            return
        try:
            if p.stdin and not p.stdin.closed:
                p.stdin.close()
        except OSError:
            pass
        if not _wait_quietly(p, grace):
            _signal(p, signal.SIGTERM)
            if not _wait_quietly(p, 1.0):
                _signal(p, signal.SIGKILL)
                _wait_quietly(p, 2.0)
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL now (tests use this to simulate a crash)."""
        if self.popen is not None:
            _signal(self.popen, signal.SIGKILL)
            _wait_quietly(self.popen, 2.0)

    # -- logs ---------------------------------------------------------------
    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)

    def _explain(self, what: str) -> str:
        log = self.log_tail(20).rstrip()
        return f'{what}\n--- last lines of {self.log_path} ---\n{log or "(empty log)"}'


class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle that rebuilds docarray's ``DocList[Doc]`` types instead of looking them up.

    ``DocList[TextDoc]`` is a class docarray makes on demand: by reference it does not
    resolve in a fresh process, so an Executor class defined in a notebook (sent by
    value) with ``docs: DocList[TextDoc]`` annotations failed to load in its replicas.
    """

    def reducer_override(self, obj):
        reduced = _docarray_reduce(obj)
        if reduced is not None:
            return reduced
        return super().reducer_override(obj)


def dumps(obj: Any) -> bytes:
    """Pickle a child's config (classes defined in ``__main__``/a notebook travel by value)."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.DEFAULT_PROTOCOL).dump(obj)
    return buf.getvalue()


def _docarray_reduce(obj: Any):
    any_array = sys.modules.get('docarray.array.any_array')
    if any_array is None:  # docarray not loaded: nothing of its kind can be in the config
        return None
    base = any_array.AnyDocArray
    if isinstance(obj, typing._GenericAlias):  # DocList[TextDoc] as written
        origin = getattr(obj, '__origin__', None)
        if isinstance(origin, type) and issubclass(origin, base) and len(obj.__args__) == 1:
            return _docarray_generic, (_docarray_base_name(origin), obj.__args__[0], False)
    elif (isinstance(obj, type) and obj.__module__ == any_array.__name__ and issubclass(obj, base)
          and getattr(obj, 'doc_type', None) is not None
          and getattr(obj.doc_type, '__name__', '') != 'AnyDoc'):  # the class behind that alias
        return _docarray_generic, (_docarray_base_name(obj), obj.doc_type, True)
    return None


def _docarray_base_name(cls: type) -> str:
    import docarray
    return 'DocVec' if issubclass(cls, docarray.DocVec) else 'DocList'


def _docarray_generic(name: str, doc_type: type, origin: bool):
    """``DocList[doc_type]`` (or the class behind it when ``origin``), rebuilt in this process."""
    import docarray
    alias = getattr(docarray, name)[doc_type]
    return getattr(alias, '__origin__', alias) if origin else alias


def _doclist_of(base: type, doc_type: type) -> type:
    return base[doc_type]


class _ConfigPickler(cloudpickle.Pickler):
    """cloudpickle, plus parametrized docarray classes (``DocList[TextDoc]``) rebuilt by
    subscripting: they are made on the fly, so pickling them by name fails."""

    def reducer_override(self, obj):
        if isinstance(obj, type) and getattr(obj, 'doc_type', None) is not None:
            from docarray import DocList
            from docarray.array.any_array import AnyDocArray
            if issubclass(obj, AnyDocArray):
                base = DocList if issubclass(obj, DocList) else obj.__mro__[1]
                return _doclist_of, (base, obj.doc_type)
        return super().reducer_override(obj)


def dumps_config(config: Any) -> bytes:
    """Pickle a child's config, Executor classes defined in a notebook cell included (by value)."""
    buf = io.BytesIO()
    _ConfigPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(config)
    return buf.getvalue()


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


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        p.send_signal(sig)
    except (ProcessLookupError, OSError):
        pass


def _wait_quietly(p: subprocess.Popen, timeout: float) -> bool:
    try:
        p.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


#: ``progress(child, state, detail)``: state is 'starting', 'ready' or 'failed' (detail: why, with the log tail)
Progress = Callable[['ChildProcess', str, Optional[str]], None]


def start_all(children: Iterable[ChildProcess], timeout: float, progress: Optional[Progress] = None) -> None:
    """Start every child, wait until all are ready; on any failure stop them all and raise.

    ``progress`` (optional) is called in the caller's thread as each child is
    started and as each reports ready or failed, in the order that happens.
    """
    children = list(children)
    try:
        for c in children:
            c.start()
            if progress is not None:
                progress(c, 'starting', None)
        deadline = time.monotonic() + timeout
        if progress is not None:
            _report_progress(children, deadline, progress)
        for c in children:
            c.wait_ready(max(0.1, deadline - time.monotonic()))
    except BaseException:
        stop_all(children)
        raise


def _report_progress(children: List[ChildProcess], deadline: float, progress: Progress) -> None:
    """Call ``progress`` as each child becomes ready or fails, until all did or ``deadline``."""
    pending = list(children)
    while pending:
        for c in [c for c in pending if c._ready.is_set()]:
            pending.remove(c)
            if c.failure:
                c.popen and _wait_quietly(c.popen, 1.0)  # let it finish writing its traceback
                progress(c, 'failed', c._explain(f'{c.role} {c.name} failed to start: {c.failure}'))
                return  # start_all raises for it and stops the rest
            progress(c, 'ready', None)
        if not pending:
            return
        if time.monotonic() >= deadline:
            for c in pending:
                progress(c, 'failed', c._explain(f'{c.role} {c.name} was not ready in time'))
            return
        pending[0]._ready.wait(0.05)


def stop_all(children: Iterable[ChildProcess], grace: float = 3.0) -> None:
    """Stop children in parallel."""
    children = [c for c in children if c.popen is not None]
    if not children:
        return
    # closing every lifeline first lets all of them shut down at once
    for c in children:
        try:
            if c.popen.stdin and not c.popen.stdin.closed:
                c.popen.stdin.close()
        except OSError:
            pass
    with ThreadPoolExecutor(max_workers=min(16, len(children))) as pool:
        list(pool.map(lambda c: c.stop(grace), children))


@atexit.register
def _stop_leftovers() -> None:
    stop_all(list(_live), grace=1.0)


def live_children() -> List[ChildProcess]:
    """Children of this process that have not been stopped."""
    return [c for c in _live if c.alive]
