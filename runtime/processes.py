"""Starting, watching and stopping child processes -- with no orphans.

Each child (a replica or a gateway) is forked by this process's preloaded fork server
(:mod:`runtime.forkserver`, ~50 ms) or, when that is off or fails, started as
``python -m runtime.child`` (~0.4 s of imports); either way it runs
:func:`runtime.child.main`:

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
import json
import os
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

from runtime import forkserver  # before our atexit hook: the zygote is stopped after the children
from runtime.applying import read_applying
from runtime.logfiles import tail
from runtime.secrets import private_dir

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
        self.handle: Optional[ProcessHandle] = None   # the process (forked by the zygote or a Popen)
        self.popen: Optional[subprocess.Popen] = None  # set only when started as a subprocess
        self.lifeline: Optional[typing.BinaryIO] = None  # the write end of the child's stdin
        self.info: Dict[str, Any] = {}
        self.failure: Optional[str] = None
        #: a stateful replica's file saying which RAFT log entry it applies (runtime.applying)
        self.applying_file: Optional[str] = None
        self._ready = threading.Event()
        self.started_at = 0.0

    # -- lifecycle --------------------------------------------------------
    def start(self) -> None:
        private_dir(os.path.dirname(self.log_path) or '.')   # logs: 0700 folders, 0600 files
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        for key, value in self.env.items():  # a None value unsets the variable
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        status_r = self._start_forked(env) if forkserver.enabled() else None
        if status_r is None:
            status_r = self._start_subprocess(env)
        self.started_at = time.monotonic()
        _live.add(self)
        head = json.dumps({'name': self.name, 'role': self.role, 'sys_path': list(sys.path)}).encode()
        config = dumps(self.config)
        try:
            self.lifeline.write(b''.join(struct.pack('<Q', len(b)) + b for b in (head, config)))
            self.lifeline.flush()
        except BrokenPipeError:
            pass  # it died at once; the status reader reports it
        threading.Thread(target=self._read_status, args=(status_r,), daemon=True,
                         name=f'status-{self.name}').start()

    def _start_forked(self, env: Dict[str, str]) -> Optional[int]:
        """Fork the child from the zygote; -> the status pipe's read end, None to fall back."""
        status_r, status_w = os.pipe()
        life_r, life_w = os.pipe()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            handle = forkserver.spawn(life_r, status_w, log_fd, env, os.getcwd())
        finally:
            for fd in (life_r, status_w, log_fd):
                os.close(fd)
        if handle is None:
            os.close(status_r)
            os.close(life_w)
            return None
        self.handle, self.lifeline = handle, os.fdopen(life_w, 'wb')
        return status_r

    def _start_subprocess(self, env: Dict[str, str]) -> int:
        """``python -m runtime.child``; -> the status pipe's read end."""
        status_r, status_w = os.pipe()
        log = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600),
                        'ab', buffering=0)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, '-m', 'runtime.child', str(status_w)],
                stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(status_w,),
                start_new_session=True, env=env,
                cwd=os.getcwd())
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
            log.close()
        self.handle, self.lifeline = PopenHandle(self.popen), self.popen.stdin
        return status_r

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
                elif msg.get('event') == 'applying_file':
                    self.applying_file = msg.get('path')
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
            self.handle and self.handle.wait(1.0)
            raise ChildFailedError(self._explain(f'{self.role} {self.name} failed to start: {self.failure}'))
        return self.info

    def wait_reported(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until it reported ready or failed (or died); True when it did."""
        return self._ready.wait(timeout)

    @property
    def applying(self) -> Optional[Dict[str, Any]]:
        """The RAFT log entry a stateful replica is applying now ({'index', 'endpoint'}), else None:
        the one it was applying when it died (runtime.supervision names a poison entry by it)."""
        return read_applying(self.applying_file)

    @property
    def pid(self) -> Optional[int]:
        return self.handle.pid if self.handle else None

    @property
    def via(self) -> Optional[str]:
        """How it was started: ``'forkserver'`` or ``'subprocess'`` (None: not started)."""
        return self.handle.via if self.handle else None

    @property
    def alive(self) -> bool:
        return self.handle is not None and self.handle.alive()

    def close_lifeline(self) -> None:
        """Close the child's stdin: it shuts down gracefully."""
        try:
            if self.lifeline is not None and not self.lifeline.closed:
                self.lifeline.close()
        except OSError:
            pass

    def stop(self, grace: float = 3.0) -> None:
        """Close the lifeline (the child shuts down), then SIGTERM, then SIGKILL."""
        p = self.handle
        if p is None:
            return
        self.close_lifeline()
        if not p.wait(grace):
            p.send_signal(signal.SIGTERM)
            if not p.wait(1.0):
                p.send_signal(signal.SIGKILL)
                p.wait(2.0)
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL now (tests use this to simulate a crash)."""
        if self.handle is not None:
            self.handle.send_signal(signal.SIGKILL)
            self.handle.wait(2.0)

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


class ProcessHandle(typing.Protocol):
    """What ChildProcess needs of a process: a Popen (:class:`PopenHandle`) or a process
    forked by the zygote (:class:`runtime.forkserver.ZygoteChild`)."""

    pid: int
    via: str

    def alive(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...   # True: it has exited

    def send_signal(self, sig: int) -> None: ...


class PopenHandle:
    """:class:`ProcessHandle` of a ``subprocess.Popen``."""

    via = 'subprocess'

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> bool:
        try:
            self.popen.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def send_signal(self, sig: int) -> None:
        try:
            self.popen.send_signal(sig)
        except (ProcessLookupError, OSError):
            pass


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
                c.handle and c.handle.wait(1.0)  # let it finish writing its traceback
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
    children = [c for c in children if c.handle is not None]
    if not children:
        return
    # closing every lifeline first lets all of them shut down at once
    for c in children:
        c.close_lifeline()
    with ThreadPoolExecutor(max_workers=min(16, len(children))) as pool:
        list(pool.map(lambda c: c.stop(grace), children))


@atexit.register
def _stop_leftovers() -> None:
    # No thread pool here: at interpreter exit concurrent.futures refuses new work. Closing
    # every lifeline first lets the children shut down together; the waits then overlap.
    children = [c for c in list(_live) if c.handle is not None]
    for c in children:
        c.close_lifeline()
    for c in children:
        c.stop(grace=1.0)


def live_children() -> List[ChildProcess]:
    """Children of this process that have not been stopped."""
    return [c for c in _live if c.alive]
