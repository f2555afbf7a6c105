"""External Executors: replicas that run elsewhere, reached by host and port.

The "other host" is played by replica processes this test starts itself (what
``orchestra executor --uses ... --port P`` runs); the Deployment under test starts only
its gateway and routes to them.
"""
from __future__ import annotations

import collections
import os
import tempfile
from typing import List, Optional

import psutil
import pytest
from docarray import DocList
from docarray.documents import TextDoc

from conftest import wait_until
from orchestra_nb import Deployment, RemoteError
from runtime.external import external_addresses, split_host_port
from runtime.processes import ChildProcess, start_all, stop_all
from runtime.specs import ReplicaSpec


# --------------------------------------------------------------------------- address forms

@pytest.mark.parametrize('host, port, expected', [
    (['localhost', '10.0.0.5'], [12345, 12346], ['localhost:12345', '10.0.0.5:12346']),
    (['localhost', '10.0.0.5'], ['12345', '12346'], ['localhost:12345', '10.0.0.5:12346']),
    (['localhost:12345', 'h:12346'], None, ['localhost:12345', 'h:12346']),
    ('localhost', [12345, 12346, 12347], ['localhost:12345', 'localhost:12346', 'localhost:12347']),
    (['a', 'b', 'c'], 12345, ['a:12345', 'b:12345', 'c:12345']),
    (['a', 'b'], [7000], ['a:7000', 'b:7000']),
    ('h', 5555, ['h:5555']),
    ('h:5555', None, ['h:5555']),
    ('grpc://h:5555', None, ['h:5555']),
    ('a:1,b:2', None, ['a:1', 'b:2']),
    (['[::1]:5555', '[fe80::1]'], [5555, 6000], ['[::1]:5555', '[fe80::1]:6000']),
    (['h:5555'], [5555], ['h:5555']),                     # the same port given twice agrees
])
def test_address_forms(host, port, expected):
    assert external_addresses(host, port) == expected


@pytest.mark.parametrize('host, port, match', [
    (['a', 'b', 'c'], [1, 2], r"3 hosts \['a', 'b', 'c'\] but 2 ports \[1, 2\]"),
    (['a', 'b'], [1, 2, 3], r"2 hosts \['a', 'b'\] but 3 ports \[1, 2, 3\]"),
    (['a', 'b'], None, r"host='a' has no port"),
    (['a:1', 'b'], None, r"host='b' has no port"),
    ('a', 0, r'port=0: an external replica needs a port from 1 to 65535'),
    ('a', 70000, r'port=70000'),
    ('a', 'http', r"port='http'"),
    ('a:99999', None, r"port in host 'a:99999'=99999"),
    ('a:x', None, r"port in host 'a:x'='x'"),
    (['a:1', 'a:1'], None, r"'a:1' is listed twice"),
    ('a:1', 2, r'host a:1 and port=2 disagree'),
    ([], None, r'external=True needs the host'),
    ('', None, r'external=True needs the host'),
    ([''], 5, r"host='': an external host is a non-empty string"),
    ('http://a:1', None, r'only gRPC is supported'),
    ('::1', 5, r'IPv6 address in brackets'),
    ('a', [], r'port=\[\]: an empty list'),
])
def test_bad_addresses_raise_value_error_naming_them(host, port, match):
    with pytest.raises(ValueError, match=match):
        external_addresses(host, port)


def test_replicas_must_agree_with_the_addresses():
    assert external_addresses(['a', 'b'], 1, replicas=2) == ['a:1', 'b:1']
    with pytest.raises(ValueError, match=r"replicas=3 but 2 external addresses were given \(\['a:1', 'b:1'\]\)"):
        external_addresses(['a', 'b'], 1, replicas=3)
    with pytest.raises(ValueError, match='replicas=3'):
        Deployment(host=['a', 'b'], port=1, external=True, replicas=3)


def test_split_host_port():
    assert split_host_port('h') == ('h', None)
    assert split_host_port(' grpc://10.0.0.5:12346/ ') == ('10.0.0.5', 12346)
    assert split_host_port('[::1]') == ('[::1]', None)


def test_external_deployment_plans_addresses_and_no_process():
    dep = Deployment(name='ext', host=['localhost', '10.0.0.5'], port=[12345, 12346], external=True)
    assert dep.replicas == 2
    plan = dep.stage_plan()
    assert [(r.name, r.external_address) for r in plan.replicas] == [
        ('ext/rep-0', 'localhost:12345'), ('ext/rep-1', '10.0.0.5:12346')]
    assert len(plan.shards) == 1 and all(r.spec is None for r in plan.replicas)
    dep2 = Deployment(host=['localhost:12345', 'h:12346'], external=True)
    assert dep2.external_addresses == ['localhost:12345', 'h:12346']


# --------------------------------------------------------------------------- real replicas

@pytest.fixture
def remote_replicas():
    """``start(n, **uses_with) -> [ChildProcess]``: n WhoAmI replica servers on their own ports,
    standing in for ``orchestra executor`` on other hosts. All are stopped at teardown."""
    started: List[ChildProcess] = []
    log_dir = tempfile.mkdtemp(prefix='orchestra-ext-')

    def config(i: int, port: int, uses_with: dict) -> dict:
        return ReplicaSpec(name=f'remote-{i}', uses='sample_executors:WhoAmI', uses_with=uses_with,
                           deployment='remote', replica_id=i, port=port).to_dict()

    def start(n: int, ports: Optional[List[int]] = None, first_id: int = 0, **uses_with) -> List[ChildProcess]:
        procs = [ChildProcess(f'remote-{first_id + i}', 'worker',
                              config(first_id + i, (ports or [0] * n)[i], uses_with),
                              os.path.join(log_dir, f'remote-{first_id + i}.log'))
                 for i in range(n)]
        started.extend(procs)
        start_all(procs, timeout=60)
        return procs

    yield start
    stop_all(started)


def _address(p: ChildProcess) -> str:
    return f'127.0.0.1:{p.info["port"]}'


def _served_by(dep, n: int, endpoint: str = '/who', **kwargs) -> collections.Counter:
    """pid -> how many of ``n`` one-doc requests (sent together, ``prefetch`` in flight) it served."""
    out = dep.post(endpoint, DocList[TextDoc]([TextDoc() for _ in range(n)]), request_size=1, **kwargs)
    assert len(out) == n
    return collections.Counter(int(t.split(':')[1]) for t in out.text)


def _served_one_by_one(dep, n: int, endpoint: str = '/who') -> collections.Counter:
    """pid -> how many of ``n`` requests sent one after the other it served (idle replicas tie:
    round robin, so the split is exact whatever the timing)."""
    served = collections.Counter()
    for _ in range(n):
        served.update(_served_by(dep, 1, endpoint))
    return served


def test_external_replicas_idle_first_health_checked_and_dead_ones_skipped(remote_replicas):
    r0, r1 = remote_replicas(2, slow_replicas=[0], delay=0.15)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    dep = Deployment(name='ext', host=['127.0.0.1', '127.0.0.1'], port=[r0.info['port'], r1.info['port']],
                     external=True)
    with dep:
        started = {p.pid for p in me.children(recursive=True)} - before
        assert started == {dep.gateway.pid}, 'an external Deployment starts only its gateway'

        st = dep.status()
        assert [(r['name'], r['address'], r['external'], r['state'], r['pid']) for r in st['replicas']] == [
            ('ext/rep-0', _address(r0), True, 'ready', r0.pid), ('ext/rep-1', _address(r1), True, 'ready', r1.pid)]
        assert st['gpus']['assignment'] == {}       # a remote replica's GPUs are not this machine's

        # idle first: one at a time they alternate; under load the slow replica gets fewer
        assert _served_one_by_one(dep, 6) == {r0.pid: 3, r1.pid: 3}
        load = _served_by(dep, 60, prefetch=16)
        assert load[r0.pid] < load[r1.pid], load

        # one replica dies: it is marked down and skipped, every request still succeeds
        r0.kill()
        assert _served_by(dep, 10) == {r1.pid: 10}
        st = dep.status()
        assert [r['state'] for r in st['replicas']] == ['unreachable', 'ready']
        gw_shard = st['gateway']['nodes']['ext']['shards'][0]
        assert [(r['address'], r['healthy']) for r in gw_shard] == [(_address(r0), False), (_address(r1), True)]

        # it comes back on its port: the gateway's probe finds it and routes to it again
        (back,) = remote_replicas(1, ports=[r0.info['port']], first_id=0)
        wait_until(lambda: dep.status()['gateway']['nodes']['ext']['shards'][0][0]['healthy'],
                   timeout=15, what='the gateway to find the restarted external replica healthy')
        assert _served_one_by_one(dep, 4) == {back.pid: 2, r1.pid: 2}

        # none left: the error names every address
        back.kill()
        r1.kill()
        with pytest.raises(RemoteError) as info:
            dep.post('/who', TextDoc())
        msg = str(info.value)
        assert _address(r0) in msg and _address(r1) in msg and 'no replica reachable' in msg, msg


def test_external_replica_down_from_the_start(remote_replicas):
    (alive,) = remote_replicas(1)
    import socket
    with socket.socket() as s:                       # a port where nothing listens
        s.bind(('127.0.0.1', 0))
        dead_port = s.getsockname()[1]
    with Deployment(name='half', host=[f'127.0.0.1:{dead_port}', _address(alive)], external=True) as dep:
        assert [r['state'] for r in dep.status()['replicas']] == ['unreachable', 'ready']
        assert _served_by(dep, 5) == {alive.pid: 5}


def test_flow_with_an_external_executor(remote_replicas):
    from runtime.flow import Flow
    r0, r1 = remote_replicas(2)
    f = (Flow(name='fx')
         .add(name='remote', host=[_address(r0), _address(r1)], external=True)
         .add(name='upper', uses='sample_executors:Upper'))
    with f:
        st = f.status()
        remote = [r for r in st['replicas'] if r['node'] == 'remote']
        assert [(r['address'], r['external'], r['state']) for r in remote] == [
            (_address(r0), True, 'ready'), (_address(r1), True, 'ready')]
        assert [r['external'] for r in st['replicas'] if r['node'] == 'upper'] == [False]

        out = f.post('/upper', DocList[TextDoc]([TextDoc() for _ in range(3)]), request_size=1)
        assert all(t.endswith(':NONE') for t in out.text), out.text     # WhoAmI, then Upper
        assert _served_one_by_one(f, 4, '/upper') == {r0.pid: 2, r1.pid: 2}
        r1.kill()
        assert _served_by(f, 5, '/upper') == {r0.pid: 5}


@pytest.fixture
def cli_replicas():
    """``start(n) -> [(Popen, port)]``: n ``orchestra executor`` processes, as another host runs them."""
    import importlib.util
    import re
    import selectors
    import subprocess
    import sys
    import time
    if importlib.util.find_spec('runtime.cli') is None:
        pytest.skip('runtime/cli.py (`orchestra executor`) is not there yet')
    procs = []
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests_dir, os.environ.get('PYTHONPATH', '')]))

    def start(n: int):
        mine = [subprocess.Popen([sys.executable, '-m', 'runtime.cli', 'executor', '--uses',
                                  'sample_executors:WhoAmI', '--port', '0', '--name', f'cli-{i}'],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                 cwd=os.path.dirname(tests_dir))
                for i in range(n)]
        procs.extend(mine)
        out = []
        deadline = time.monotonic() + 60
        for i, p in enumerate(mine):
            seen, m = [], None
            with selectors.DefaultSelector() as sel:
                sel.register(p.stdout, selectors.EVENT_READ)
                while sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    line = p.stdout.readline()
                    seen.append(line)
                    m = re.search(r'ready at [^:\s]+:(\d+)', line)
                    if m or not line:
                        break
            if not m:
                pytest.fail(f'`orchestra executor` cli-{i} did not report ready within 60 s:\n{"".join(seen)}')
            out.append((p, int(m.group(1))))
        return out

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        p.stdout.close()


def test_external_replicas_started_with_orchestra_executor(cli_replicas):
    (p0, port0), (p1, port1) = cli_replicas(2)
    with Deployment(name='cli', host='127.0.0.1', port=[port0, port1], external=True) as dep:
        assert [r['state'] for r in dep.status()['replicas']] == ['ready', 'ready']
        assert _served_one_by_one(dep, 4) == {p0.pid: 2, p1.pid: 2}
        p0.kill()
        p0.wait(5)
        assert _served_by(dep, 4) == {p1.pid: 4}
