"""Supervision: restart what dies, kill what hangs, stop what crash-loops.

One :class:`Supervisor` thread per running Deployment/Flow watches its gateway and
every local replica (docs/reliability.md). It acts only through the
:class:`~runtime.runner.Runner` interface: ``children()``, ``restart(name)``,
``take_out(name, cause)``, ``closing`` (the owner's ``restart_replica`` calls
``put_back``).

- **Dead** (the process exited): restarted on the same port with the same config, each
  in its own thread, so that the replicas of a stateful Deployment that died together
  come back together (a RAFT majority). The first restart is immediate; each further
  death within ``restart_window`` waits longer (:func:`backoff`).
- **Crash loop**: a child restarted ``max_restarts`` times within ``restart_window``
  that dies again is left down; ``status()`` shows ``state: 'crash-loop'`` and the
  cause (the tail of its log; for a stateful replica dying while applying the same
  RAFT log entry each time, the entry's index and endpoint and how to skip it).
- **Hung** (alive, but its ``Info`` does not answer within ``health_timeout``): after
  ``restart_grace`` seconds of unanswered probes it is SIGKILLed, then restarted as a
  dead one. (The gateway takes such a replica out of its rotation at the first missed
  probe: :mod:`runtime.routing`.)
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Deque, Dict, List, NamedTuple, Optional, Tuple

import grpc

from runtime import protocol
from runtime.loop import background_loop
from runtime.specs import HEALTH_INTERVAL_S, SupervisionPolicy

if TYPE_CHECKING:
    from runtime.processes import ChildProcess
    from runtime.runner import Runner

log = logging.getLogger('orchestra.supervision')

def backoff(deaths_in_window: int, policy: SupervisionPolicy) -> float:
    """Seconds to wait before restarting a child that died ``deaths_in_window`` times.

    >>> [backoff(k, SupervisionPolicy()) for k in (1, 2, 3, 4)]
    [0.0, 0.5, 1.0, 2.0]
    """
    if deaths_in_window <= 1:
        return 0.0
    return min(policy.backoff_max, policy.backoff_base * 2 ** (deaths_in_window - 2))


class Death(NamedTuple):
    at: float                          # time.monotonic()
    applying: Optional[Dict[str, Any]]  # the RAFT entry it was applying ({'index', 'endpoint'}), if any


class Watch:
    """What the supervisor knows about one child (a replica or the gateway)."""

    def __init__(self, name: str, policy: SupervisionPolicy):
        self.name = name
        self.policy = policy
        self.state = 'running'      # running | restarting | waiting | hung | crash-loop
        self.cause: Optional[str] = None
        self.restarts = 0
        self.deaths: Deque[Death] = collections.deque(maxlen=64)
        self.next_start = 0.0
        self.busy = False            # a restart thread runs
        self.seen: Optional['ChildProcess'] = None   # the dead process whose death is recorded
        self.unanswered_since: Optional[float] = None

    def recent(self, now: float) -> List[Death]:
        return [d for d in self.deaths if now - d.at <= self.policy.restart_window]

    def describe(self) -> Dict[str, Any]:
        now = time.monotonic()
        out: Dict[str, Any] = {'state': self.state, 'restarts': self.restarts,
                               'deaths_in_window': len(self.recent(now))}
        if self.cause:
            out['cause'] = self.cause
        if self.unanswered_since is not None:
            out['unanswered_s'] = round(now - self.unanswered_since, 1)
        return out


def poison_entry(deaths: List[Death]) -> Optional[Dict[str, Any]]:
    """The RAFT entry every recent death happened while applying (the last one's), else None."""
    if not deaths or deaths[-1].applying is None:
        return None
    last = deaths[-1].applying
    if all(d.applying is None or d.applying.get('index') == last.get('index') for d in deaths):
        return last
    return None


class Supervisor:
    """Watches a runner's children; see the module docstring. ``start()``/``join()``."""

    def __init__(self, runner: 'Runner'):
        self.runner = runner
        self.watches: Dict[str, Watch] = {}
        self._threads: List[threading.Thread] = []
        self._thread: Optional[threading.Thread] = None
        self._channels: Dict[str, grpc.aio.Channel] = {}
        self._probing = False

    # -- the children --------------------------------------------------------------
    def children(self) -> List[Tuple[Watch, Optional['ChildProcess'], Optional[str]]]:
        """(watch, current process, address) for the gateway and each local replica."""
        return [(self.watch(c.name, c.policy), c.process, c.address) for c in self.runner.children()]

    def watch(self, name: str, policy: SupervisionPolicy) -> Watch:
        w = self.watches.get(name)
        if w is None:
            w = self.watches[name] = Watch(name, policy)
        return w

    def describe(self, name: str) -> Optional[Dict[str, Any]]:
        w = self.watches.get(name)
        return w.describe() if w else None

    def reset(self, names: List[str]) -> None:
        """Forget the deaths (and crash loop) of these children: the next round restarts them if down."""
        for name in names:
            w = self.watches.get(name)
            if w is not None:
                w.deaths.clear()
                w.cause = None
                w.next_start = 0.0
                if w.state == 'crash-loop':
                    w.state = 'waiting'

    # -- the loop ------------------------------------------------------------------
    def start(self) -> None:
        self.children()   # a watch for each child now: status() shows them from the start
        self._thread = threading.Thread(target=self.run, daemon=True, name=f'supervisor-{self.runner.name}')
        self._thread.start()

    def join(self, timeout: float = 10.0) -> None:
        """After ``runner.closing`` is set: wait for the loop and every restart in flight."""
        deadline = time.monotonic() + timeout
        for t in [self._thread] + list(self._threads):
            if t is not None and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            asyncio.run_coroutine_threadsafe(ch.close(), background_loop())

    def run(self) -> None:
        closing = self.runner.closing
        next_probe = time.monotonic() + HEALTH_INTERVAL_S
        while not closing.wait(0.2):
            now = time.monotonic()
            try:
                for w, process, _ in self.children():
                    self._check(w, process, now)
                if now >= next_probe and not self._probing:
                    next_probe = now + HEALTH_INTERVAL_S
                    self._probe_all()
            except Exception:   # the supervisor must outlive any one bad round
                log.exception('supervision of %s: a round failed', self.runner.name)

    def _check(self, w: Watch, proc: Optional['ChildProcess'], now: float) -> None:
        if proc is None or w.busy or w.state == 'crash-loop' or self.runner.closing.is_set():
            return
        if proc.alive:
            if (w.unanswered_since is not None and now - w.unanswered_since >= w.policy.restart_grace):
                w.state = 'hung'
                w.cause = (f'{w.name} (pid {proc.pid}) did not answer its health probe for '
                           f'{now - w.unanswered_since:.0f} s (restart_grace={w.policy.restart_grace:g} s); '
                           'killed (SIGKILL) to restart it')
                log.warning('%s', w.cause)
                proc.kill()
            return
        if w.seen is not proc:
            self._died(w, proc, now)
        if w.state != 'crash-loop' and now >= w.next_start:
            self._restart_in_thread(w)

    def _died(self, w: Watch, proc: 'ChildProcess', now: float) -> None:
        w.seen = proc
        w.unanswered_since = None
        w.deaths.append(Death(now, getattr(proc, 'applying', None)))
        recent = w.recent(now)
        if len(recent) > w.policy.max_restarts:
            w.state = 'crash-loop'
            w.cause = self._crash_loop_cause(w, proc, recent)
            log.error('%s', w.cause)
            self.runner.take_out(w.name, w.cause)
            return
        w.next_start = now + backoff(len(recent), w.policy)
        w.state = 'waiting'
        log.warning('%s (pid %s) died%s; restarting it%s', w.name, proc.pid,
                    _applying_text(recent[-1].applying),
                    f' in {w.next_start - now:.1f} s' if w.next_start > now else ' now')

    def _crash_loop_cause(self, w: Watch, proc: 'ChildProcess', recent: List[Death]) -> str:
        text = (f'{w.name} died {len(recent)} times within {w.policy.restart_window:g} s '
                f'(max_restarts={w.policy.max_restarts}): crash loop, not restarted again.')
        entry = poison_entry(recent)
        if entry is not None:
            text += (f' Each time it was applying RAFT log entry {entry.get("index")} '
                     f'(endpoint {entry.get("endpoint")}): a poison entry. Skip it with '
                     f'dep.skip_entry({entry.get("index")}) (docs/reliability.md, '
                     '"Skipping a poison log entry").')
        else:
            text += ' Fix the cause, then dep.restart_replica(name) starts it again.'
        tail = proc.log_tail(15).rstrip()
        return f'{text}\n--- last lines of {proc.log_path} ---\n{tail or "(empty log)"}'

    def _restart_in_thread(self, w: Watch) -> None:
        w.busy = True
        w.state = 'restarting'

        def go() -> None:
            try:
                self.runner.restart(w.name)
                if not self.runner.closing.is_set():
                    w.restarts += 1
                    w.state, w.cause, w.unanswered_since = 'running', None, None
            except Exception as e:   # it died or never got ready: the next round sees it dead
                log.error('restarting %s failed: %s', w.name, e)
            finally:
                w.busy = False
        t = threading.Thread(target=go, daemon=True, name=f'restart-{w.name}')
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    # -- health probes ---------------------------------------------------------------
    def _probe_all(self) -> None:
        """Probe every running child's Info (on the toolkit loop; this thread does not wait)."""
        targets = [(w, addr) for w, process, addr in self.children()
                   if addr and not w.busy and w.state in ('running', 'hung')
                   and process is not None and process.alive]
        if not targets:
            return
        self._probing = True

        async def probe_all() -> None:
            try:
                await asyncio.gather(*(self._probe(w, addr) for w, addr in targets))
            finally:
                self._probing = False
        asyncio.run_coroutine_threadsafe(probe_all(), background_loop())

    async def _probe(self, w: Watch, address: str) -> None:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = grpc.aio.insecure_channel(address, options=protocol.CHANNEL_OPTIONS)
        try:
            json.loads(await ch.unary_unary(protocol.INFO)(b'', timeout=w.policy.health_timeout))
            if w.unanswered_since is not None:
                log.warning('%s answers its health probe again', w.name)
            w.unanswered_since = None
        except (grpc.aio.AioRpcError, ValueError):
            if w.unanswered_since is None and not w.busy:
                w.unanswered_since = time.monotonic()
                log.warning('%s missed its health probe (%g s)', w.name, w.policy.health_timeout)


def _applying_text(applying: Optional[Dict[str, Any]]) -> str:
    if not applying:
        return ''
    return f' while applying RAFT log entry {applying.get("index")} ({applying.get("endpoint")})'

