"""Fault injection: real processes, real SIGKILL/SIGSTOP, one row per scenario.

Each scenario starts a Deployment (Executors from ``tests/sample_executors.py``), holds a
load against it, injects one fault and measures:

- **load held**: requests sent / succeeded / failed that *completed* between the fault and
  the end of the scenario's measuring window (the faulted process back ready, plus ~1 s);
- **acknowledged writes lost** (stateful scenarios): writes whose ``post`` returned, missing
  from any replica once the replicas are back (every replica is read directly, not through
  the gateway); the all-replicas scenario also restarts a fresh Deployment from the workspace
  and checks again;
- **time to recover**: from the fault to the first successful request *sent after it*, and
  to the faulted process being back ready (a new pid, ``state == 'ready'``; for stateful
  replicas also RAFT ready).

Scenarios: ``replica_kill``, ``gateway_kill``, ``stateful_all_kill``, ``leader_kill``, ``hung``,
``poison``, ``owner_kill``, ``bad_inputs``. Every wait has a timeout; every Deployment, client,
stopped process and subprocess is closed or resumed at the end, also when a scenario fails
(its row then says what failed).

    python benchmarks/faults.py [--quick] [--only hung,poison] [--json faults.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

import grpc
import numpy as np
import psutil
from docarray import DocList
from docarray.documents import TextDoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, 'tests')
sys.path.insert(0, ROOT)
sys.path.insert(0, TESTS)   # sample_executors: replicas get the owner's sys.path

from orchestra_nb import Client, Deployment  # noqa: E402
from runtime import protocol  # noqa: E402
from runtime.codec import encode_docs  # noqa: E402
from mutations import hostile_frame  # noqa: E402  (tests/mutations.py)
from pids import pid_gone  # noqa: E402  (tests/pids.py)


class Timeout(Exception):
    pass


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:   # noqa: BLE001 -- a status call may fail while a process restarts
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f'timed out after {timeout} s waiting for {what}')
        time.sleep(interval)


def docs(*texts: str, ids: Optional[List[str]] = None) -> DocList:
    return DocList[TextDoc]([TextDoc(id=ids[i] if ids else f'd{i}', text=t) for i, t in enumerate(texts)])


def replica_rec(dep, i: int) -> dict:
    return next(r for r in dep.status()['replicas'] if r['replica'] == i)


def back_ready(dep, i: int, old_pid: int, stateful: bool = False) -> bool:
    r = replica_rec(dep, i)
    ok = r['pid'] != old_pid and r['state'] == 'ready'
    return ok and (not stateful or bool((r.get('raft') or {}).get('ready')))


# -- load -----------------------------------------------------------------------------------------------
class Load:
    """``threads`` threads, each with its own Client, posting one single-doc request after another
    (reads to ``on``, or ``@write``s with unique ids) until stopped. Records (sent, done, ok, error)."""

    def __init__(self, port: int, on: str = '/x', threads: int = 2, write: bool = False, timeout: float = 30.0,
                 pause_after_failure: float = 0.05, **post_kwargs):
        self.port, self.on, self.write, self.timeout = port, on, write, timeout
        self.pause = pause_after_failure
        self.post_kwargs = post_kwargs
        self.events: List[tuple] = []   # (t_sent, t_done, ok, error or '', id)
        self.acked: List[str] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def _run(self, k: int) -> None:
        client = Client(port=self.port)
        i = 0
        try:
            while not self.stop_event.is_set():
                rid = f'w{k}-{i}'
                i += 1
                t0 = time.monotonic()
                try:
                    out = client.post(self.on, docs(rid, ids=[rid]), timeout=self.timeout, **self.post_kwargs)
                    ok, err = len(out) == 1, ''
                except Exception as e:   # noqa: BLE001 -- every failure is recorded
                    ok, err = False, f'{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}'
                t1 = time.monotonic()
                with self.lock:
                    self.events.append((t0, t1, ok, err, rid))
                    if ok and self.write:
                        self.acked.append(rid)
                if not ok:
                    time.sleep(self.pause)
        finally:
            client.close()

    def start(self) -> 'Load':
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout)

    def count_ok(self) -> int:
        with self.lock:
            return sum(1 for e in self.events if e[2])

    def wait_warm(self, n: int = 10, timeout: float = 60.0) -> None:
        wait_for(lambda: self.count_ok() >= n, timeout, f'{n} successful requests before the fault')

    def window(self, t_from: float, t_to: float) -> Dict[str, Any]:
        with self.lock:
            ev = [e for e in self.events if t_from <= e[1] <= t_to]
        failed = [e for e in ev if not e[2]]
        lat = sorted(e[1] - e[0] for e in ev if e[2])
        return {'sent': len(ev), 'ok': len(ev) - len(failed), 'failed': len(failed),
                'errors': sorted({e[3] for e in failed})[:3],
                'max_latency_s': round(lat[-1], 3) if lat else None}

    def first_ok_after(self, t: float) -> Optional[float]:
        with self.lock:
            done = [e[1] for e in self.events if e[2] and e[0] >= t]
        return min(done) - t if done else None


# -- stateful helpers -----------------------------------------------------------------------------------
def held_ids(address: str) -> set:
    host, port = address.rsplit(':', 1)
    c = Client(host=host, port=int(port))
    try:
        return set(c.post('/ids', timeout=30).id)
    finally:
        c.close()


def check_replicas(dep, acked: set, timeout: float = 60.0) -> Dict[str, Any]:
    """Wait until every replica holds every acknowledged write (and the replicas agree); report
    what is missing if they never do."""
    addrs = [r.address for r in dep.stages[0].replicas]
    last: Dict[str, Any] = {}

    def converged() -> bool:
        sets = [held_ids(a) for a in addrs]
        last['sets'] = sets
        return all(acked <= s for s in sets) and all(s == sets[0] for s in sets)

    try:
        wait_for(converged, timeout, 'every replica to hold every acknowledged write', interval=0.5)
    except Timeout:
        pass
    sets = last.get('sets') or [set() for _ in addrs]
    missing = [sorted(acked - s) for s in sets]
    return {'lost': len(set().union(*map(set, missing))), 'missing_per_replica': [len(m) for m in missing],
            'missing_examples': [m[:5] for m in missing],
            'replicas_agree': all(s == sets[0] for s in sets), 'held_per_replica': [len(s) for s in sets]}


# -- scenarios -----------------------------------------------------------------------------------------
def sc_replica_kill(q: bool) -> dict:
    with Deployment(name='fk', uses='sample_executors:Poison', replicas=3) as dep:
        load = Load(dep.port, threads=2).start()
        try:
            load.wait_warm()
            victim = dep.stages[0].replicas[1].process
            pid = victim.pid
            tf = time.monotonic()
            victim.handle.send_signal(signal.SIGKILL)
            wait_for(lambda: back_ready(dep, 1, pid), 60, 'the killed replica to be restarted', 0.02)
            t_ready = time.monotonic() - tf
            n = load.count_ok()
            wait_for(lambda: load.count_ok() > n + 5, 30, 'requests after the restart')
            time.sleep(1.0)
            t_end = time.monotonic()
        finally:
            load.stop()
        w = load.window(tf, t_end)
        restarts = replica_rec(dep, 1)['supervision']['restarts']
    return dict(load=w, fault='SIGKILL 1 of 3 stateless replicas', lost=None,
                first_ok_s=load.first_ok_after(tf), ready_s=t_ready,
                notes=f'restarts of rep-1: {restarts}; in-flight requests on it retried elsewhere; '
                      f'max latency {w["max_latency_s"]} s')


def sc_gateway_kill(q: bool) -> dict:
    with Deployment(name='fg', uses='sample_executors:Poison', replicas=2) as dep:
        load = Load(dep.port, threads=2, max_attempts=60, initial_backoff=0.1, max_backoff=0.5).start()
        try:
            load.wait_warm()
            pid = dep.gateway.pid
            tf = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: (lambda g: g['pid'] != pid and g['state'] == 'ready')(dep.status()['gateway']),
                     60, 'the gateway to be restarted', 0.02)
            t_ready = time.monotonic() - tf
            n = load.count_ok()
            wait_for(lambda: load.count_ok() > n + 5, 30, 'requests through the new gateway')
            time.sleep(1.0)
            t_end = time.monotonic()
        finally:
            load.stop()
        w = load.window(tf, t_end)
        same_port = dep.port == dep.status()['gateway']['port']
    return dict(load=w, fault='SIGKILL the gateway; Client(max_attempts=60, backoff 0.1-0.5 s)', lost=None,
                first_ok_s=load.first_ok_after(tf), ready_s=t_ready,
                notes=f'same port: {same_port}; the retrying client saw {w["failed"]} failures; '
                      f'max latency {w["max_latency_s"]} s')


def _stateful(kill: str, q: bool) -> dict:
    ws = tempfile.mkdtemp(prefix='faults-')
    try:
        with Deployment(name='fkv', uses='sample_executors:KV', replicas=3, stateful=True, workspace=ws) as dep:
            load = Load(dep.port, on='/index', threads=3, write=True, timeout=30).start()
            try:
                load.wait_warm(20)
                st = dep.status()['replicas']
                if kill == 'all':
                    victims = [0, 1, 2]
                    what = 'SIGKILL all 3 replicas of a stateful (RAFT) Deployment at once'
                else:
                    victims = [next(r['replica'] for r in st if (r.get('raft') or {}).get('role') == 'leader')]
                    what = f'SIGKILL the RAFT leader (rep-{victims[0]}) of 3'
                pids = {i: dep.stages[0].replicas[i].process.pid for i in victims}
                tf = time.monotonic()
                for i in victims:
                    dep.stages[0].replicas[i].process.handle.send_signal(signal.SIGKILL)
                wait_for(lambda: all(pid_gone(p) for p in pids.values()), 10, 'the victims to die', 0.01)
                wait_for(lambda: all(back_ready(dep, i, pids[i], stateful=True) for i in victims), 120,
                         'the killed replicas to be back (RAFT ready)', 0.05)
                t_ready = time.monotonic() - tf
                wait_for(lambda: load.first_ok_after(tf) is not None, 60, 'a write to succeed after the fault')
                n = load.count_ok()
                wait_for(lambda: load.count_ok() > n + 10, 30, 'writes after the recovery')
                time.sleep(1.0 if q else 3.0)
                t_end = time.monotonic()
            finally:
                load.stop()
            w = load.window(tf, t_end)
            acked = set(load.acked)
            check = check_replicas(dep, acked)
            leader_after = next((r['replica'] for r in dep.status()['replicas']
                                 if (r.get('raft') or {}).get('role') == 'leader'), None)
        extra = check['held_per_replica'][0] - len(acked) if check['replicas_agree'] else None
        notes = (f'{len(acked)} writes acknowledged in all, on every replica: '
                 f'{"yes" if check["lost"] == 0 else "NO, missing " + str(check["missing_per_replica"])}; '
                 f'replicas agree: {check["replicas_agree"]} ({check["held_per_replica"]} docs'
                 + (f': {extra} writes that failed were applied anyway' if extra else '') + ')')
        if kill == 'all':   # and from disk: a fresh Deployment on the same workspace
            with Deployment(name='fkv', uses='sample_executors:KV', replicas=3, stateful=True, workspace=ws) as dep2:
                again = check_replicas(dep2, acked)
            check['lost_after_fresh_start'] = again['lost']
            notes += f'; a fresh Deployment on the workspace: {again["lost"]} lost'
            lost = max(check['lost'], again['lost'])
        else:
            notes += f'; leader at the end: rep-{leader_after}'
            lost = check['lost']
        notes += f'; failed writes said: "{w["errors"][0][:150]}..."' if w['errors'] else ''
        return dict(load=w, fault=what, lost=lost, check=check, first_ok_s=load.first_ok_after(tf),
                    ready_s=t_ready, notes=notes)
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def sc_stateful_all_kill(q: bool) -> dict:
    return _stateful('all', q)


def sc_leader_kill(q: bool) -> dict:
    return _stateful('leader', q)


def sc_hung(q: bool) -> dict:
    with Deployment(name='fh', uses='sample_executors:Poison', replicas=3) as dep:   # defaults: health_timeout
        load = Load(dep.port, threads=2).start()                                       # 2 s, restart_grace 10 s
        pid = dep.stages[0].replicas[1].process.pid
        stopped = False
        try:
            load.wait_warm()
            tf = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            stopped = True
            wait_for(lambda: any(not r['healthy'] for r in   # short Info timeouts: the stopped replica's
                                 dep.status(timeout=0.3)['gateway']['nodes']['fh']['shards'][0]), 30,
                     'the gateway to take the stopped replica out of rotation', 0.05)
            t_out = time.monotonic() - tf
            wait_for(lambda: back_ready(dep, 1, pid), 60, 'the stopped replica to be killed and restarted', 0.05)
            t_ready = time.monotonic() - tf
            n = load.count_ok()
            wait_for(lambda: load.count_ok() > n + 5, 30, 'requests after the restart')
            time.sleep(1.0)
            t_end = time.monotonic()
        finally:
            load.stop()
            if stopped and not pid_gone(pid):
                os.kill(pid, signal.SIGCONT)
        w = load.window(tf, t_end)
        restarts = replica_rec(dep, 1)['supervision']['restarts']
    return dict(load=w, fault='SIGSTOP 1 of 3 stateless replicas (health_timeout=2, restart_grace=10)', lost=None,
                first_ok_s=load.first_ok_after(tf), ready_s=t_ready,
                notes=f'out of rotation after {t_out:.2f} s; killed and restarted (restarts {restarts}); '
                      f'max latency {w["max_latency_s"]} s (requests held by the stopped replica, sent again)')


def sc_poison(q: bool) -> dict:
    with Deployment(name='fp', uses='sample_executors:Poison', replicas=3) as dep:
        load = Load(dep.port, threads=2).start()
        poison_client = Client(port=dep.port)
        try:
            load.wait_warm()
            tf = time.monotonic()
            try:
                poison_client.post('/x', docs('poison'), timeout=60)
                msg, failed_s = 'NOT FAILED: the poison request succeeded', None
            except Exception as e:   # noqa: BLE001
                msg, failed_s = str(e), time.monotonic() - tf
            wait_for(lambda: sum(r['supervision']['restarts'] for r in dep.status()['replicas']) >= 2
                     and all(r['state'] == 'ready' for r in dep.status()['replicas']), 60,
                     'the replicas the poison killed to be restarted', 0.05)
            t_ready = time.monotonic() - tf
            time.sleep(1.0)
            t_end = time.monotonic()
        finally:
            poison_client.close()
            load.stop()
        w = load.window(tf, t_end)
        restarts = [r['supervision']['restarts'] for r in dep.status()['replicas']]
    first = msg.splitlines()[0][:140] if msg else ''
    return dict(load=w, fault='a request whose Executor call os._exit(1)s, 1 of 3 stateless replicas',
                lost=None, first_ok_s=load.first_ok_after(tf), ready_s=t_ready, poison_error=msg[:2000],
                notes=f'the poison request failed after {failed_s:.2f} s: "{first}"; restarts per replica '
                      f'{restarts}; the other requests: {w["failed"]} failed' if failed_s is not None else msg)


_OWNER = r'''
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from orchestra_nb import Deployment
dep = Deployment(name='own', uses='sample_executors:Upper', replicas={n}).start()
print('ready', flush=True)
time.sleep(600)
'''


def sc_owner_kill(q: bool) -> dict:
    script = tempfile.NamedTemporaryFile('w', suffix='.py', delete=False)
    script.write(_OWNER.format(root=ROOT, tests=TESTS, n=3))
    script.close()
    owner = subprocess.Popen([sys.executable, script.name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, cwd=ROOT)
    kids: List[psutil.Process] = []
    try:
        line = owner.stdout.readline()   # bounded: the owner's start() raises after timeout_ready
        if line.strip() != 'ready':
            raise RuntimeError(f'the owner script did not start: {line!r}')
        kids = psutil.Process(owner.pid).children(recursive=True)
        pids = [p.pid for p in kids]
        tf = time.monotonic()
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        gone_at: Dict[int, float] = {}

        def all_gone() -> bool:
            for p in pids:
                if p not in gone_at and pid_gone(p):
                    gone_at[p] = time.monotonic() - tf
            return len(gone_at) == len(pids)
        try:
            wait_for(all_gone, 30, 'every child of the killed owner to exit', 0.005)
            left = []
        except Timeout:
            left = [p for p in pids if p not in gone_at]
        t_all = max(gone_at.values()) if gone_at else None
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        for p in kids:   # only if something was left behind
            try:
                p.kill()
            except psutil.Error:
                pass
        os.unlink(script.name)
    times = sorted(round(v, 3) for v in gone_at.values())
    return dict(load={'sent': 0, 'ok': 0, 'failed': 0}, fault='SIGKILL the owner of a Deployment (3 replicas)',
                lost=None, first_ok_s=None, ready_s=None, all_gone_s=t_all, children=len(pids), left=left,
                notes=f'{len(pids)} children (3 replicas, gateway, fork server): all gone after '
                      f'{t_all:.3f} s (each: {times})' + (f'; LEFT RUNNING: {left}' if left else ''))


# -- bad inputs ----------------------------------------------------------------------------------------
class Frames:
    """Random and mutated frames, as tests/test_fuzz.py draws them, with ``random`` (seeded)."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        g = np.random.default_rng(seed)
        self.bodies = [
            encode_docs(DocList[TextDoc]([TextDoc(text='hello')])),
            encode_docs(DocList[TextDoc]([TextDoc(text=f't{i}', embedding=g.random(8).astype(np.float32))
                                          for i in range(5)])),
            encode_docs(DocList[TextDoc]([TextDoc(text='a\x00\uffff', bytes_=b'xy', url='http://e.x/a'),
                                          TextDoc()])),
        ]

    def frame(self) -> bytes:
        return hostile_frame(self.rng, self.bodies)


def sc_bad_inputs(q: bool) -> dict:
    n = 300 if q else 3000
    with Deployment(name='fz', uses='sample_executors:Upper', replicas=1) as dep:
        rep = dep.status()['replicas'][0]
        gw_pid = dep.gateway.pid
        targets = {'replica': rep['address'], 'gateway': f'127.0.0.1:{dep.port}'}
        channels = {k: grpc.insecure_channel(a, options=protocol.GRPC_OPTIONS) for k, a in targets.items()}
        seen = {k: {'reply_ok': 0, 'reply_error': 0, 'INVALID_ARGUMENT': 0, 'other': 0} for k in targets}
        other: List[str] = []
        load = Load(dep.port, on='/upper', threads=1).start()
        frames = Frames(seed=1234)
        try:
            calls = {k: ch.unary_unary(protocol.CALL) for k, ch in channels.items()}
            load.wait_warm(5)
            tf = time.monotonic()
            for i in range(n):
                target = 'replica' if i % 2 else 'gateway'
                try:
                    reply = calls[target](frames.frame(), timeout=10)
                    header, _ = protocol.unpack(reply)
                    seen[target]['reply_ok' if header.get('ok') else 'reply_error'] += 1
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        seen[target]['INVALID_ARGUMENT'] += 1
                    else:
                        seen[target]['other'] += 1
                        other.append(f'{target}: {e.code().name} {(e.details() or "")[:100]}')
            t_fuzz = time.monotonic() - tf
            t_end = time.monotonic()
        finally:
            load.stop()
            for ch in channels.values():
                ch.close()
        w = load.window(tf, t_end)
        serves = {}
        for k, addr in targets.items():
            host, port = addr.rsplit(':', 1)
            c = Client(host=host, port=int(port))
            try:
                serves[k] = c.post('/upper', docs('still here'), timeout=30).text == ['STILL HERE']
            except Exception as e:   # noqa: BLE001
                serves[k] = f'{type(e).__name__}: {e}'
            finally:
                c.close()
        after = dep.status()
        same = after['replicas'][0]['pid'] == rep['pid'] and after['gateway']['pid'] == gw_pid
    total = {k: sum(v.values()) for k, v in seen.items()}
    desc = '; '.join(f'{k}: {v["INVALID_ARGUMENT"]} refused (INVALID_ARGUMENT), {v["reply_error"]} error replies, '
                     f'{v["reply_ok"]} ok, {v["other"]} other' for k, v in seen.items())
    return dict(load=w, fault=f'{n} random/mutated Call frames ({total["gateway"]} at the gateway, '
                              f'{total["replica"]} at a replica), seed 1234',
                lost=None, first_ok_s=load.first_ok_after(tf), ready_s=None, frames=seen, other=other[:5],
                fuzz_s=round(t_fuzz, 2),
                notes=f'{desc}; both still serve: {serves}; same pids (no restart): {same}; '
                      f'{n / t_fuzz:.0f} frames/s; a normal client alongside: {w["failed"]} failed')


SCENARIOS = {
    'replica_kill': ('replica SIGKILLed under load', sc_replica_kill),
    'gateway_kill': ('gateway SIGKILLed, retrying client', sc_gateway_kill),
    'stateful_all_kill': ('all 3 stateful replicas SIGKILLed during writes', sc_stateful_all_kill),
    'leader_kill': ('RAFT leader SIGKILLed during writes', sc_leader_kill),
    'hung': ('hung replica (SIGSTOP)', sc_hung),
    'poison': ('poison request', sc_poison),
    'owner_kill': ('owner SIGKILLed', sc_owner_kill),
    'bad_inputs': ('bad inputs (fuzzed frames)', sc_bad_inputs),
}


def _fmt(v: Optional[float]) -> str:
    return '--' if v is None else f'{v:.2f}'


def table(rows: List[dict]) -> str:
    out = ['| scenario | load held during the fault (sent / ok / failed) | fault | acknowledged writes lost '
           '| recover: first success / process ready (s) | notes |', '|---|---|---|---|---|---|']
    for r in rows:
        if 'error' in r:
            out.append(f'| {r["title"]} | -- | {r.get("fault", "")} | -- | -- | **SCENARIO FAILED**: '
                       f'{r["error"].splitlines()[-1][:300]} |')
            continue
        ld = r['load']
        load = f'{ld["sent"]} / {ld["ok"]} / {ld["failed"]}' if ld.get('sent') else 'none'
        lost = '--' if r['lost'] is None else str(r['lost'])
        if 'all_gone_s' in r:
            rec = f'all children gone: {_fmt(r["all_gone_s"])}'
        else:
            rec = f'{_fmt(r["first_ok_s"])} / {_fmt(r["ready_s"])}'
        out.append(f'| {r["title"]} | {load} | {r["fault"]} | {lost} | {rec} | {r["notes"]} |')
    return '\n'.join(out)


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n\n')[0])
    ap.add_argument('--quick', action='store_true', help='smaller counts (fuzz frames, time after recovery)')
    ap.add_argument('--only', default='', help=f'comma-separated subset of: {",".join(SCENARIOS)}')
    ap.add_argument('--json', default='', help='also write the results to this JSON file')
    a = ap.parse_args()
    names = [s for s in a.only.split(',') if s] or list(SCENARIOS)
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        ap.error(f'unknown scenarios {unknown}; choose from {list(SCENARIOS)}')
    t0 = time.time()
    load_before = os.getloadavg()
    rows = []
    for name in names:
        title, fn = SCENARIOS[name]
        print(f'-- {name} ...', file=sys.stderr, flush=True)
        ts = time.monotonic()
        try:
            row = fn(a.quick)
        except Exception:   # noqa: BLE001 -- a failed scenario is a row that says so
            row = {'error': traceback.format_exc()}
            print(row['error'], file=sys.stderr)
        row.update(scenario=name, title=title, wall_s=round(time.monotonic() - ts, 1))
        rows.append(row)
        print(f'   {name}: {row.get("notes", row.get("error", "")[-300:])}', file=sys.stderr, flush=True)
    md = table(rows)
    meta = {'date_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime(t0)), 'quick': a.quick,
            'python': platform.python_version(), 'cores': os.cpu_count(),
            'mem_gib': round(psutil.virtual_memory().total / 2 ** 30, 1),
            'load_avg_before': [round(x, 2) for x in load_before],
            'load_avg_after': [round(x, 2) for x in os.getloadavg()], 'wall_s': round(time.time() - t0, 1)}
    print(f'\nFault injection, {meta["date_utc"]} UTC, {meta["cores"]} cores, {meta["mem_gib"]} GiB, '
          f'Python {meta["python"]}, load average {meta["load_avg_before"][0]} before / '
          f'{meta["load_avg_after"][0]} after, {meta["wall_s"]} s{" (--quick)" if a.quick else ""}\n')
    print(md)
    if a.json:
        with open(a.json, 'w') as f:
            json.dump({'meta': meta, 'rows': rows}, f, indent=1, default=str)
    if any('error' in r for r in rows):
        sys.exit(1)


if __name__ == '__main__':
    main()
