"""Supervision (docs/reliability.md): the gateway restarted, replicas restarted in parallel with
backoff and a crash-loop stop, hung replicas out of rotation and restarted, poison requests and
poison RAFT log entries. Real processes, real SIGKILL/SIGSTOP."""
from __future__ import annotations

import os
import re
import signal
import threading

import pytest
from docarray import DocList
from docarray.documents import TextDoc

from conftest import pid_gone, wait_until
from orchestra_nb import Client, Deployment
from runtime.client import RemoteError
from runtime.specs import SupervisionPolicy
from runtime.supervision import backoff, poison_entry, Death


def docs(*texts, prefix='d'):
    return DocList[TextDoc]([TextDoc(id=f'{prefix}{i}', text=t) for i, t in enumerate(texts)])


def replica(dep, i):
    return next(r for r in dep.status()['replicas'] if r['replica'] == i)


def answers(dep, on='/x', **kwargs):
    try:
        dep.post(on, docs('ping'), **kwargs)
        return True
    except (RemoteError, ConnectionError):
        return False


def direct(dep, i):
    host, port = dep.stages[0].replicas[i].address.rsplit(':', 1)
    return Client(host=host, port=int(port))


# -- the pieces ------------------------------------------------------------------------------------
def test_backoff_grows_and_a_poison_entry_is_the_one_every_death_names():
    p = SupervisionPolicy(backoff_base=0.5, backoff_max=3.0)
    assert [backoff(k, p) for k in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 3.0]
    entry = {'index': 7, 'endpoint': '/index'}
    assert poison_entry([Death(1.0, entry), Death(2.0, dict(entry))]) == entry
    assert poison_entry([Death(1.0, {'index': 6, 'endpoint': '/index'}), Death(2.0, entry)]) is None
    assert poison_entry([Death(1.0, entry), Death(2.0, None)]) is None


def test_supervision_arguments_are_checked():
    with pytest.raises(ValueError, match='timeout_send'):
        Deployment(timeout_send=0)
    with pytest.raises(ValueError, match='max_restarts'):
        Deployment(max_restarts=0)
    with pytest.raises(ValueError, match='not stateful'):
        Deployment().skip_entry(3)


# -- 5: the gateway ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_gateway_is_restarted_on_its_port():
    with Deployment(name='gw', replicas=2) as dep:
        port, old_pid = dep.port, dep.gateway.pid
        dep.gateway.kill()
        client = Client(port=port)
        try:   # a client that retries gets its answer once the gateway is back
            out = client.post('/x', docs('a', 'b'), max_attempts=40, initial_backoff=0.25)
            assert out.text == ['a', 'b']
        finally:
            client.close()
        assert dep.port == port and dep.gateway.pid != old_pid
        wait_until(lambda: answers(dep), 30, 'dep.post to work again through the restarted gateway')
        gw = dep.status()['gateway']
        assert gw['state'] == 'ready' and gw['supervision']['restarts'] == 1
        # it knows the replicas again
        assert [r['healthy'] for r in gw['nodes']['gw']['shards'][0]] == [True, True]


# -- 6: all replicas of a stateful Deployment at once; backoff; crash loop -------------------------------
@pytest.mark.slow
def test_all_stateful_replicas_killed_at_once_come_back_together(tmp_path):
    with Deployment(name='kv', uses='sample_executors:KV', replicas=3, stateful=True,
                    workspace=str(tmp_path)) as dep:
        first = docs(*[f'v{i}' for i in range(10)])
        dep.post('/index', first, request_size=2)
        pids = [r.process.pid for r in dep.stages[0].replicas]
        for r in dep.stages[0].replicas:   # all at once
            r.process.handle.send_signal(signal.SIGKILL)
        wait_until(lambda: all(pid_gone(p) for p in pids), 10, 'the three replicas to die')
        more = docs(*[f'w{i}' for i in range(6)], prefix='e')
        wait_until(lambda: _write(dep, more), 60,
                   'writes to work again after all replicas were killed')
        for i in range(3):
            wait_until(lambda i=i: replica(dep, i)['state'] == 'ready', 30, f'replica {i} ready')
        wait_until(lambda: all((r.get('raft') or {}).get('writes_applied', 0) >= 7
                               for r in dep.status()['replicas']), 30,
                   'every replica to apply every write')
        for i in range(3):
            c = direct(dep, i)
            got = c.post('/get', DocList[TextDoc]([TextDoc(id=d.id) for d in list(first) + list(more)]))
            c.close()
            assert got.text == [d.text for d in list(first) + list(more)], f'replica {i}'
        assert all(r['supervision']['restarts'] == 1 for r in dep.status()['replicas'])


def _write(dep, batch) -> bool:
    try:
        dep.post('/index', batch, request_size=3)
        return True
    except (RemoteError, ConnectionError):
        return False


@pytest.mark.slow
def test_a_crash_loop_stops_restarts_and_status_says_why(tmp_path):
    die = tmp_path / 'die'
    with Deployment(name='loop', uses='sample_executors:DiesAtStartIf', replicas=2, max_restarts=2,
                    env={'ORCHESTRA_TEST_DIE_FILE': str(die)}) as dep:
        die.write_text('x')
        dep.stages[0].replicas[1].process.kill()
        rec = wait_until(lambda: (lambda r: r if r['state'] == 'crash-loop' else None)(replica(dep, 1)), 60,
                         'replica 1 to be left down in a crash loop')
        assert 'crash loop' in rec['error'] and 'refusing to start: the die file exists' in rec['error']
        assert rec['supervision']['restarts'] == 0 and rec['supervision']['deaths_in_window'] == 3
        assert answers(dep)   # the other replica serves
        die.unlink()
        dep.restart_replica('loop/rep-1')
        wait_until(lambda: replica(dep, 1)['state'] == 'ready', 30, 'replica 1 to run again')


# -- 7: a hung replica ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_stopped_replica_leaves_rotation_is_restarted_and_rejoins():
    with Deployment(name='hang', uses='sample_executors:Poison', replicas=3, health_timeout=1.0,
                    restart_grace=4.0) as dep:
        victim = dep.stages[0].replicas[1].process
        pid = victim.pid
        results, errors, stop = [], [], threading.Event()

        def stream():
            client = Client(port=dep.port)
            try:
                i = 0
                while not stop.is_set():
                    try:
                        results.append(client.post('/x', docs(f'q{i}'), timeout=60)[0].text)
                    except Exception as e:   # noqa: BLE001 -- the test reports every failure
                        errors.append(e)
                    i += 1
            finally:
                client.close()
        t = threading.Thread(target=stream)
        t.start()
        try:
            wait_until(lambda: len(results) >= 10, 30, 'the stream to start')
            os.kill(pid, signal.SIGSTOP)
            wait_until(lambda: replica(dep, 1)['pid'] != pid and replica(dep, 1)['state'] == 'ready', 60,
                       'the stopped replica to be killed and restarted')
            assert pid_gone(pid)
            n = len(results)
            wait_until(lambda: any(x.endswith('@1') for x in results[n:]), 30,
                       'the restarted replica to serve again')
        finally:
            stop.set()
            if not pid_gone(pid):
                os.kill(pid, signal.SIGCONT)
            t.join(60)
        assert not errors, errors[:3]
        assert replica(dep, 1)['supervision']['restarts'] == 1


@pytest.mark.slow
def test_timeout_send_fails_a_write_and_retries_a_read_on_a_stopped_replica(tmp_path):
    with Deployment(name='ts', uses='sample_executors:KV', replicas=3, stateful=True, workspace=str(tmp_path),
                    timeout_send=1.5, health_timeout=30, restart_grace=60) as dep:
        dep.post('/index', docs('a', 'b'))

        def every_replica_served() -> bool:
            dep.post('/get', docs('', ''))
            return all(r['sent'] > 0 for r in dep.status()['gateway']['nodes']['ts']['shards'][0])
        # the gateway's channel to each replica is then connected: a replica stopped before its first
        # connection fails that call at once ("connection lost") and leaves the rotation, so no write
        # would ever reach it
        wait_until(every_replica_served, 30, 'every replica to serve a read')
        def leader_known():   # the replica the gateway sends writes to
            shard = dep.status()['gateway']['nodes']['ts']['shards'][0]
            return next((r for r in shard if r.get('leads')), None)
        leader = wait_until(leader_known, 30, 'the gateway to know the RAFT leader')
        pid = next(r['pid'] for r in dep.status()['replicas'] if r['name'] == leader['name'])
        os.kill(pid, signal.SIGSTOP)
        try:
            failures = []
            try:   # a write sent to the stopped replica fails after timeout_send, not retried
                dep.post('/index', docs('x0', prefix='n0-'))
            except RemoteError as e:
                failures.append(str(e))
            for _ in range(6):   # reads reach every replica in turn: the stopped one's are retried
                assert dep.post('/get', docs('', '')).text == ['a', 'b']
            assert failures and all('timeout_send=1.5' in f and '@write' in f for f in failures), failures
            # the others elect a leader; the gateway hears of it from their Info, and writes go on there
            wait_until(lambda: (leader_known() or {}).get('name') not in (None, leader['name']), 30,
                       'the gateway to learn the new leader')
            dep.post('/index', docs('y0', prefix='m0-'))
        finally:
            os.kill(pid, signal.SIGCONT)


# -- 8: poison --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_poison_request_is_retried_once_then_fails_naming_the_replica():
    with Deployment(name='pz', uses='sample_executors:Poison', replicas=3) as dep:
        with pytest.raises(RemoteError) as info:
            dep.post('/x', docs('poison'))
        msg = str(info.value)
        assert 'lost 2 replicas and is not retried again' in msg, msg
        assert re.search(r'pz/rep-\d', msg) and 'about to swallow the poison' in msg, msg
        assert dep.post('/x', docs('fine', 'too'), request_size=1).text[0].startswith('fine@')
        wait_until(lambda: sum(r['supervision']['restarts'] for r in dep.status()['replicas']) == 2
                   and all(r['state'] == 'ready' for r in dep.status()['replicas']), 30,
                   'the two replicas the poison killed to be restarted')


@pytest.mark.slow
def test_a_poison_write_crash_loops_is_named_and_can_be_skipped(tmp_path):
    with Deployment(name='pkv', uses='sample_executors:PoisonKV', replicas=3, stateful=True,
                    workspace=str(tmp_path), max_restarts=2) as dep:
        dep.post('/index', docs('a', 'b'))
        with pytest.raises(RemoteError):
            dep.post('/index', docs('poison', prefix='p'))
        # a majority left down stops the loop (the last replica waits for a majority that never comes)
        looped = wait_until(lambda: (lambda rs: rs if len(rs) >= 2 else None)(
            [r for r in dep.status()['replicas'] if r['state'] == 'crash-loop']), 120,
            'a majority of the replicas to be left down in a crash loop')
        found = [re.search(r'applying RAFT log entry (\d+) \(endpoint /index\)', r['error']) for r in looped]
        assert all(found), [r['error'] for r in looped]
        index = int(found[0].group(1))
        assert all(int(f.group(1)) == index for f in found) and f'dep.skip_entry({index})' in looped[0]['error']
        shard = dep.status()['gateway']['nodes']['pkv']['shards'][0]   # the gateway knows why (its errors say)
        assert sum(f'log entry {index}' in r.get('stopped', '') for r in shard) >= 2, shard
        dep.skip_entry(index)
        wait_until(lambda: all((r.get('raft') or {}).get('ready') for r in dep.status()['replicas']), 60,
                   'the replicas to run again (RAFT ready), past the skipped entry')
        rafts = [r['raft'] for r in dep.status()['replicas']]
        assert [r['writes_skipped'] for r in rafts] == [1, 1, 1], rafts
        dep.post('/index', docs('c', prefix='c'))
        for i in range(3):
            wait_until(lambda i=i: replica(dep, i)['raft']['writes_applied'] >= 2, 30, f'replica {i} to catch up')
            c = direct(dep, i)
            got = c.post('/get', DocList[TextDoc]([TextDoc(id=x) for x in ('d0', 'd1', 'p0', 'c0')]))
            c.close()
            assert got.text == ['a', 'b', '<missing>', 'c'], f'replica {i}'
