"""Shared fixtures. Every test is checked for leaked processes and listening ports."""
from __future__ import annotations

import contextlib
import socket
import sys
import time

import psutil
import pytest

from pids import pid_gone  # noqa: F401  (tests import it from here)


def _listening_ports(proc: psutil.Process) -> set:
    try:
        return {c.laddr.port for c in proc.net_connections(kind='tcp') if c.status == psutil.CONN_LISTEN}
    except psutil.Error:
        return set()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _helpers() -> set:
    """Long-lived helpers of this process that are not leaks: the fork server (zygote), which
    lives as long as its owner (a zygote replaced during a test is new, hence this list)."""
    forkserver = sys.modules.get('runtime.forkserver')
    return set(forkserver.helper_pids()) if forkserver is not None else set()


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail a test that leaves a child process or a listening port behind."""
    me = psutil.Process()
    before_children = {p.pid for p in me.children(recursive=True)}
    before_ports = _listening_ports(me)
    yield
    deadline = time.monotonic() + 5.0
    leaked = []
    while time.monotonic() < deadline:
        helpers = _helpers()
        leaked = [p for p in me.children(recursive=True)
                  if p.pid not in before_children and p.pid not in helpers and _alive(p)]
        if not leaked:
            break
        time.sleep(0.1)
    ports = _listening_ports(me) - before_ports
    for p in leaked:
        try:
            p.kill()
        except psutil.Error:
            pass
    if leaked or ports:
        what = [f'pid {p.pid} ({" ".join(p.cmdline()[:4]) if _alive(p) else "?"})' for p in leaked]
        pytest.fail(f'test left behind processes {what} and listening ports {sorted(ports)}')


def wait_until(predicate, timeout: float = 10.0, what: str = 'a condition', interval: float = 0.05):
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f'timed out after {timeout} s waiting for {what}')


# -- ports ----------------------------------------------------------------------------------------
def free_ports(n: int) -> list:
    """``n`` loopback ports that were free a moment ago (all bound at once, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One loopback port that was free a moment ago."""
    return free_ports(1)[0]


@contextlib.contextmanager
def busy_port():
    """A loopback port something listens on while the block runs: ``with busy_port() as port: ...``."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen()
        yield s.getsockname()[1]
