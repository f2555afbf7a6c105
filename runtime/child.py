"""Entry point of every child process: ``python -m runtime.child STATUS_FD``, or
:func:`main` called in a process forked by the fork server (:mod:`runtime.forkserver`).

Reads its spec from stdin (written by its owner, :mod:`runtime.processes`),
then keeps stdin open as the lifeline: EOF means the owner is gone or wants
it to stop. Reports ``ready``/``failed`` as JSON lines on the status pipe.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import struct
import sys
import threading
import traceback
from typing import Optional

#: True in every child process (a replica or a gateway), set first thing by :func:`main`:
#: children never pre-warm a fork server (``runtime.forkserver.prewarm`` reads it)
IN_CHILD = False


class _PrefixedLines:
    """A text stream that prefixes each line with ``name@pid`` (for print() in Executors)."""

    def __init__(self, raw, prefix: str):
        self._raw, self._prefix, self._at_line_start = raw, prefix, True

    def write(self, s: str) -> int:
        out = []
        for part in s.splitlines(keepends=True):
            if self._at_line_start:
                out.append(self._prefix)
            out.append(part)
            self._at_line_start = part.endswith('\n')
        self._raw.write(''.join(out))
        return len(s)

    def flush(self):
        self._raw.flush()

    def __getattr__(self, item):
        return getattr(self._raw, item)


class StatusPipe:
    def __init__(self, fd: int):
        self._f = os.fdopen(fd, 'w', buffering=1)
        self._lock = threading.Lock()

    def send(self, **msg) -> None:
        with self._lock:
            try:
                self._f.write(json.dumps(msg) + '\n')
            except (OSError, ValueError):
                pass


def _read_spec() -> dict:
    """Two length-prefixed blobs from the owner: JSON (name, role, sys.path), then the config."""
    raw = sys.stdin.buffer

    def blob() -> bytes:
        (n,) = struct.unpack('<Q', raw.read(8))
        return raw.read(n)

    spec = json.loads(blob())
    # the config may name classes by module (one from tests/ or the user's package):
    # the owner's sys.path must be in place before it is loaded
    sys.path[:] = spec['sys_path'] + [p for p in sys.path if p not in spec['sys_path']]
    import cloudpickle  # noqa: F401  (by-value classes need it to rebuild)
    import pickle
    # this pickle comes from our owner through a private pipe, never from the network
    spec['config'] = pickle.loads(blob())
    return spec


def _watch_lifeline(on_eof) -> None:
    def watch():
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        on_eof()
    threading.Thread(target=watch, name='lifeline', daemon=True).start()


def main(status_fd: Optional[int] = None) -> None:
    global IN_CHILD
    IN_CHILD = True   # an Executor importing orchestra_nb starts no zygote
    status = StatusPipe(int(sys.argv[1]) if status_fd is None else status_fd)
    os.umask(0o077)   # what a replica or gateway writes (logs, workspace, journal) is private: 0600 / 0700
    spec = _read_spec()
    name = spec['name']
    prefix = f'{name}@{os.getpid()} '
    sys.stdout = _PrefixedLines(sys.stdout, prefix)
    sys.stderr = _PrefixedLines(sys.stderr, prefix)
    from runtime.specs import LOG_LEVEL   # the gateway's spec has none: it logs at the default level
    logging.basicConfig(level=spec['config'].get('log_level') or LOG_LEVEL, stream=sys.stderr,
                        format='%(asctime)s %(levelname)-7s %(message)s', datefmt='%H:%M:%S')
    for noisy in ('grpc', 'asyncio'):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    stopping = threading.Event()

    def hard_exit_later(delay: float = 2.0):
        # a last resort when the graceful stop hangs (a stuck Executor call)
        t = threading.Timer(delay, lambda: os._exit(0))
        t.daemon = True
        t.start()

    def request_stop(*_):
        if not stopping.is_set():
            stopping.set()
            hard_exit_later()

    _watch_lifeline(request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the owner stops us

    try:
        if spec['role'] == 'worker':
            from runtime.worker import run_worker as run
        elif spec['role'] == 'gateway':
            from runtime.gateway import run_gateway as run
        else:
            raise ValueError(f'unknown role {spec["role"]!r}')
        run(spec, status, stopping)
    except BaseException as e:  # report, then exit non-zero
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        status.send(event='failed', error=f'{type(e).__name__}: {e}')
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == '__main__':
    # run as runtime.child, not __main__, so that IN_CHILD is set where forkserver reads it
    from runtime import child
    child.main()
