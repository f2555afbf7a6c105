"""A preloaded fork server ("zygote"): replicas and gateways start in ~50 ms instead of ~0.4 s.

A fresh ``python -m runtime.child`` spends ~0.35 s of CPU importing grpc, numpy and
docarray before it can serve; with 3 replicas and a gateway on 2 cores that is most of a
Deployment's time to ready. Instead, each owner process keeps one helper process, the
zygote, that imports those modules once and then forks a child per request.

- **One zygote per owner**, ``python -c 'runtime.forkserver.zygote_main(FD)'`` in its own
  session, started by :func:`prewarm` (``import orchestra_nb`` calls it, so the imports
  overlap with the user's first cells) or on first use. It talks to its owner over a
  ``SOCK_SEQPACKET`` socket pair; that socket is also its lifeline: EOF (owner closed it,
  exited, or was ``kill -9``-ed) and the zygote exits at once.
- **Nothing of grpc runs in the zygote**: it only imports modules (no channel, server,
  thread or event loop, so ``GRPC_ENABLE_FORK_SUPPORT`` plays no part); a fork is refused
  if a Python thread other than the main one exists. The only OS thread besides the main
  one is OpenBLAS's pool, which OpenBLAS itself stops around ``fork()`` (pthread_atfork).
- **A fork request** carries what ``python -m runtime.child STATUS_FD`` gets: the lifeline
  (read end of the owner's stdin pipe), the status pipe and the log file, passed with
  ``SCM_RIGHTS``, plus the environment and the working directory as JSON. The forked child
  calls ``setsid()``, puts the fds on 0/1/2, replaces ``os.environ`` (``putenv``: C code
  sees it too; CUDA is never loaded in the zygote, so ``CUDA_VISIBLE_DEVICES`` applies),
  ``chdir``\\ s and runs :func:`runtime.child.main` -- from there it is the same as a
  fresh child (spec and ``sys.path`` from the lifeline, Executor classes by value).
- **The owner holds a pidfd** of each child (opened by the zygote before it can reap the
  child, passed back with the reply), so it can wait for and signal a process that is not
  its own child without pid-reuse races: :class:`ZygoteChild`. The zygote reaps its
  children on ``SIGCHLD``.
- **Fallback**: when the zygote cannot start, dies, or a fork fails, :func:`spawn` returns
  ``None`` and :class:`runtime.processes.ChildProcess` starts ``python -m runtime.child``
  as before. It does the same when the child's environment differs from the zygote's in a
  variable read while the preloaded modules were imported (``PYTHON*``, ``LD_*``, BLAS/OpenMP
  thread settings, locale, ...): those must reach a fresh interpreter.
  ``ORCHESTRA_FORKSERVER=0`` turns the fork server off.
"""
from __future__ import annotations

import array
import atexit
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from runtime import child   # its IN_CHILD: set in every child process (a replica or a gateway)

log = logging.getLogger('orchestra.forkserver')

#: modules the zygote imports before it forks (what a replica and a gateway need)
PRELOAD = ('grpc', 'grpc.aio', 'numpy', 'docarray', 'docarray.documents', 'cloudpickle',
           'threadpoolctl', 'runtime.protocol', 'runtime.codec', 'runtime.executor',
           'runtime.batching', 'runtime.server', 'runtime.worker', 'runtime.gateway', 'runtime.child')

#: environment variables read while PRELOAD is imported (or at interpreter start): a child
#: whose value differs from the zygote's must be a fresh interpreter
SENSITIVE_ENV_PREFIXES = ('PYTHON', 'LD_', 'MALLOC_', 'GLIBC_TUNABLES', 'OPENBLAS_', 'GOTO',
                          'OMP_', 'MKL_', 'BLIS_', 'NPY_', 'NUMPY_', 'GRPC_', 'LANG', 'LC_', 'TZ')

READY_TIMEOUT = 30.0   # s: the zygote's imports (a fresh child would need as long)
REPLY_TIMEOUT = 10.0   # s: one fork round trip (normally a few ms)
MAX_LOSSES = 3         # zygotes lost (crashed, killed, broken) per owner before we stop trying
_MAX_MSG = 1 << 16

#: the zygote's program (``root``: the folder holding ``runtime``, ``fd``: its socket)
ZYGOTE_CODE = ('import sys; sys.path.insert(0, {root!r}); '
               'from runtime.forkserver import zygote_main; zygote_main({fd})')


def enabled() -> bool:
    """False when ``ORCHESTRA_FORKSERVER`` is ``0``/``false``/``off``/``no``, or the platform
    lacks what the fork server needs (Linux pidfds, fd passing)."""
    if os.environ.get('ORCHESTRA_FORKSERVER', '1').strip().lower() in ('0', 'false', 'off', 'no'):
        return False
    return (sys.platform.startswith('linux') and hasattr(os, 'pidfd_open')
            and hasattr(signal, 'pidfd_send_signal') and hasattr(socket, 'SOCK_SEQPACKET'))


# ---------------------------------------------------------------------------------------
# owner side
# ---------------------------------------------------------------------------------------
class ZygoteChild:
    """A process forked by the zygote, tracked through a pidfd (it is not our child).

    The same small interface as :class:`runtime.processes.PopenHandle`: ``pid``,
    ``alive()``, ``wait(timeout) -> bool``, ``send_signal(sig)``. The exit status is
    not known to the owner (only the zygote, its parent, could read it).
    """

    via = 'forkserver'

    def __init__(self, pid: int, pidfd: int):
        self.pid = pid
        self._fd: Optional[int] = pidfd
        self._lock = threading.Lock()

    def _exited(self, timeout: float) -> bool:
        with self._lock:   # the fd is closed once the process is gone: never poll a stale number
            if self._fd is None:
                return True
            try:
                ready = select.select([self._fd], [], [], max(0.0, timeout))[0]
            except (OSError, ValueError):
                ready = True
            if ready:
                os.close(self._fd)
                self._fd = None
                return True
            return False

    def alive(self) -> bool:
        return not self._exited(0)

    def wait(self, timeout: float) -> bool:
        """True once the process has exited (a zombie counts), False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self._exited(min(0.05, max(0.0, left))):   # short slices: alive() stays responsive
                return True
            if left <= 0:
                return False

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self._fd is None:
                return
            try:
                signal.pidfd_send_signal(self._fd, sig)
            except (ProcessLookupError, OSError):
                pass

    def __del__(self):
        fd, self._fd = getattr(self, '_fd', None), None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


class ForkServer:
    """The owner's handle on its zygote; use the module functions (:func:`spawn`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._proc: Optional[subprocess.Popen] = None
        self._sock: Optional[socket.socket] = None
        self._env: Dict[str, str] = {}
        self._ready = False
        self.starts = 0
        self.losses = 0
        self.disabled: Optional[str] = None   # why it will not be used again

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> bool:
        """Start the zygote unless one runs (returns at once: it imports in the background)."""
        with self._lock:
            return self._start_locked()

    def _start_locked(self) -> bool:
        if self.disabled or os.getpid() != self._owner:
            return False
        if self._proc is not None:
            if self._proc.poll() is None:
                return True
            self._lost_locked(f'the fork server exited (code {self._proc.returncode})')
            if self.disabled:
                return False
        self.starts += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = ZYGOTE_CODE.format(root=root, fd=theirs.fileno())
        try:
            self._proc = subprocess.Popen(
                [sys.executable, '-c', code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), start_new_session=True,
                env=env, cwd=os.getcwd())
        except OSError as e:
            ours.close()
            self.disabled = f'cannot start the fork server: {e}'
            return False
        finally:
            theirs.close()
        self._sock, self._env, self._ready = ours, env, False
        return True

    def _wait_ready_locked(self) -> bool:
        if self._ready:
            return True
        try:
            self._sock.settimeout(READY_TIMEOUT)
            data, _ = _recv(self._sock, 0)
        except OSError as e:   # socket.timeout included
            data = b''
            why = f'the fork server did not start ({type(e).__name__}: {e})'
        else:
            why = 'the fork server exited while starting'
        msg = json.loads(data) if data else {}
        if msg.get('ready'):
            self._ready = True
            return True
        why = msg.get('failed', why)
        self._discard_locked(why)
        self.disabled = why   # a zygote that cannot import now will not later: stop trying
        log.warning('%s; children start as fresh interpreters', why)
        return False

    def _lost_locked(self, why: str) -> None:
        """The zygote died or broke: discard it; a new one starts on the next request."""
        log.warning('fork server lost: %s', why)
        self._discard_locked(why)
        self.losses += 1
        if self.losses >= MAX_LOSSES:
            self.disabled = f'{why} ({self.losses} fork servers lost: not starting another)'

    def _discard_locked(self, why: str) -> None:
        log.info('fork server discarded: %s', why)
        sock, proc, ready = self._sock, self._proc, self._ready
        self._sock, self._proc, self._ready = None, None, False
        if sock is not None:
            sock.close()   # its lifeline: it exits on EOF
        if proc is not None:
            if not ready:   # still importing (it reads the lifeline only then): nothing to lose
                proc.kill()
            try:
                proc.wait(1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    pass

    def stop(self) -> None:
        """Close the zygote's lifeline and wait for it to exit (forked children keep running)."""
        with self._lock:
            if os.getpid() == self._owner:
                self._discard_locked('stopped')

    # -- forking ---------------------------------------------------------------------------
    def spawn(self, stdin_fd: int, status_fd: int, log_fd: int, env: Dict[str, str],
              cwd: str) -> Optional[ZygoteChild]:
        """Fork a child with these fds on stdin / status / stdout+stderr; None: use a subprocess."""
        with self._lock:
            if not self._start_locked() or not self._wait_ready_locked():
                return None
            differs = sensitive_differences(self._env, env)
            if differs:
                log.debug('environment differs from the fork server in %s: fresh interpreter', differs)
                return None
            payload = json.dumps({'env': env, 'cwd': cwd}).encode()
            if len(payload) > _MAX_MSG - 1024:
                return None   # an enormous environment: not worth a protocol of its own
            try:
                self._sock.settimeout(REPLY_TIMEOUT)
                socket.send_fds(self._sock, [payload], [stdin_fd, status_fd, log_fd])
                data, fds = _recv(self._sock, 1)
            except OSError as e:
                self._lost_locked(f'fork request failed: {type(e).__name__}: {e}')
                return None
            if not data:
                self._lost_locked('the fork server exited')
                return None
            reply = json.loads(data)
            if 'pid' not in reply or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                log.warning('the fork server could not fork: %s', reply.get('error', reply))
                return None
            return ZygoteChild(int(reply['pid']), fds[0])

    def _after_fork_in_child(self) -> None:
        """In a process forked from the owner: drop (never use, never stop) the owner's zygote."""
        if self._sock is not None:
            try:
                self._sock.close()   # else the zygote would not see EOF when its owner dies
            except OSError:
                pass
        self._sock, self._proc = None, None


def sensitive_differences(zygote_env: Dict[str, str], env: Dict[str, str]) -> List[str]:
    """Names of variables, read while the zygote imported its modules, that ``env`` changes."""
    keys = {k for k in set(zygote_env) | set(env) if k.startswith(SENSITIVE_ENV_PREFIXES)}
    return sorted(k for k in keys if zygote_env.get(k) != env.get(k))


_server: Optional[ForkServer] = None
_server_lock = threading.Lock()


def _get() -> ForkServer:
    global _server
    with _server_lock:
        if _server is None or _server._owner != os.getpid():
            _server = ForkServer()
        return _server


def prewarm() -> None:
    """Start this process's zygote in the background (no-op in a child or when disabled)."""
    if child.IN_CHILD or not enabled():
        return
    _get().start()


def spawn(stdin_fd: int, status_fd: int, log_fd: int, env: Dict[str, str],
          cwd: str) -> Optional[ZygoteChild]:
    """Fork a child from this process's zygote (started on first use); ``None``: use a subprocess.

    The caller keeps (and closes) its fds; the child gets copies.
    """
    if not enabled():
        return None
    try:
        return _get().spawn(stdin_fd, status_fd, log_fd, env, cwd)
    except Exception:   # never let the fast path break starting a child
        log.exception('fork server failed; starting a fresh interpreter')
        return None


def zygote_pid() -> Optional[int]:
    """The pid of this process's running zygote, if any (the tests' leak checker skips it)."""
    server = _server
    return server.pid if server is not None and server._owner == os.getpid() else None


def helper_pids() -> List[int]:
    """Long-lived helper processes of this owner that are not leaks (the zygote)."""
    pid = zygote_pid()
    return [pid] if pid else []


def shutdown() -> None:
    """Stop this process's zygote (at exit; a later :func:`spawn` starts a new one)."""
    server = _server
    if server is not None:
        server.stop()


def _forget_after_fork() -> None:
    global _server
    if _server is not None and _server._owner != os.getpid():
        _server._after_fork_in_child()
    _server = None


os.register_at_fork(after_in_child=_forget_after_fork)
# registered when runtime.processes imports this module, before processes registers its own
# exit hook: atexit runs hooks last-in first-out, so children are stopped before the zygote
atexit.register(shutdown)


def _recv(sock: socket.socket, maxfds: int) -> Tuple[bytes, List[int]]:
    """One message and up to ``maxfds`` fds (close-on-exec); b'' at EOF."""
    fds = array.array('i')
    data, ancdata, flags, _ = sock.recvmsg(_MAX_MSG, socket.CMSG_SPACE(max(1, maxfds) * fds.itemsize),
                                           getattr(socket, 'MSG_CMSG_CLOEXEC', 0))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - (len(cdata) % fds.itemsize)])
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise OSError(f'truncated fork-server message (flags {flags:#x})')
    return data, list(fds)


# ---------------------------------------------------------------------------------------
# zygote side
# ---------------------------------------------------------------------------------------
def zygote_main(fd: int) -> None:
    """The zygote: import :data:`PRELOAD`, then fork a child per request until EOF."""
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # own session anyway; only EOF stops us
    try:
        import importlib
        for name in PRELOAD:
            importlib.import_module(name)
        _check_fork_safe()
    except BaseException as e:
        import traceback
        _send(sock, {'failed': f'the fork server could not import its modules: {type(e).__name__}: {e}',
                     'traceback': traceback.format_exc()[-4000:]})
        os._exit(1)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)   # wakes select(); reaping happens below
    _send(sock, {'ready': True, 'pid': os.getpid()})
    while True:
        try:
            readable = select.select([sock, wake_r], [], [])[0]
        except OSError:
            break
        if wake_r in readable:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            _reap()
        if sock in readable:
            try:
                data, fds = _recv(sock, 3)
            except OSError:
                break
            if not data:
                break   # EOF: the owner closed us or died
            reply, pidfd = _fork_one(data, fds, sock, (wake_r, wake_w))
            try:
                if pidfd is None:
                    _send(sock, reply)
                else:
                    socket.send_fds(sock, [json.dumps(reply).encode()], [pidfd])
            except OSError:
                break
            finally:
                if pidfd is not None:
                    os.close(pidfd)
    os._exit(0)


def _send(sock: socket.socket, msg: dict) -> None:
    try:
        sock.send(json.dumps(msg).encode())
    except OSError:
        pass


def _check_fork_safe() -> None:
    extra = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if extra:
        raise RuntimeError(f'threads running in the fork server: {extra}')
    for mod in ('torch', 'tensorflow', 'jax', 'cupy'):
        if mod in sys.modules:   # CUDA must be initialised after CUDA_VISIBLE_DEVICES is set
            raise RuntimeError(f'{mod} was imported by the preloaded modules')


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _fork_one(data: bytes, fds: List[int], sock: socket.socket,
              private: Sequence[int]) -> Tuple[dict, Optional[int]]:
    """Fork one child for the request ``data``; -> (reply, pidfd or None)."""
    try:
        req = json.loads(data)
        if len(fds) != 3:
            raise ValueError(f'expected 3 fds (stdin, status, log), got {len(fds)}')
        if threading.active_count() != 1:
            raise RuntimeError('threads running in the fork server')
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        pid = os.fork()
        if pid == 0:   # the child: never returns
            _become_child(req, fds, sock, private)
        try:
            pidfd = os.pidfd_open(pid)   # before we can reap it: no pid-reuse race
        except OSError as e:
            os.kill(pid, signal.SIGKILL)
            raise RuntimeError(f'pidfd_open({pid}) failed: {e}') from e
        return {'pid': pid}, pidfd
    except Exception as e:
        return {'error': f'{type(e).__name__}: {e}'}, None
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _become_child(req: dict, fds: List[int], sock: socket.socket, private: Sequence[int]) -> None:
    """In the forked child: become what ``python -m runtime.child STATUS_FD`` would be."""
    status_fd = fds[1]
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        sock.close()   # the zygote's lifeline is not ours to hold
        for fd in private:
            os.close(fd)
        os.setsid()
        stdin_fd, _, log_fd = fds
        os.dup2(stdin_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(stdin_fd)
        os.close(log_fd)
        env = req['env']
        os.environ.clear()   # unsetenv/putenv: C code sees the child's environment too
        os.environ.update(env)
        os.chdir(req['cwd'])
        child.IN_CHILD = True
        np_random = sys.modules.get('numpy.random')
        if np_random is not None:   # forked children must not share the global RNG state
            np_random.seed()
        sys.argv = [child.__file__, str(status_fd)]
        child.main(status_fd)
    except BaseException as e:
        try:
            os.write(status_fd, (json.dumps({'event': 'failed', 'error': f'fork server child: '
                                             f'{type(e).__name__}: {e}'}) + '\n').encode())
            import traceback
            os.write(2, traceback.format_exc().encode(errors='replace'))
        except BaseException:
            pass
    finally:
        os._exit(1)
