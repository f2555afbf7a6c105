"""Docker Compose export: the file itself (fast), and the exported Flow run for real (slow).

The real run needs a Docker engine: ``tests/docker_support.py`` (from the docker branch) gets
one through ``.ci/docker.sh`` and builds the runtime image of this checkout (``docker build
--build-arg BASE=...``); without an engine the test skips, saying why. It exports a Flow (a
sharded stateless Executor and a 3-replica RAFT Executor) with ``orchestra export
docker-compose``, runs ``docker-compose up -d``, indexes and searches through the published
gateway port, ``docker kill``s the RAFT leader's container while writes continue, checks that
every replica ends with every acknowledged write, and always runs ``docker-compose down -v``.
With ``monitoring: true``: the Dashboard attached from the host by address (with the exported
secret) counts per replica what was sent and shows one RAFT leader after the kill, and a
Prometheus on the host scraping the published metrics ports agrees in PromQL (a Prometheus
*service* in the compose file needs an image with Prometheus, which this machine cannot pull).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid

import pytest
import yaml

from conftest import free_port, free_ports, wait_until
from test_export_kubernetes import write_flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUN_FLOW = """\
jtype: Flow
with: {{name: search, port: PORT, monitoring: true, port_monitoring: METRICS}}
executors:
  - name: indexer
    uses: ShardIndex
    py_modules: [{mod}.py]
    shards: 2
    polling: {{/search: ALL, '*': ANY}}
  - name: store
    uses: Store
    py_modules: [{mod}.py]
    replicas: 3
    stateful: true
    workspace: ws
"""


def test_compose_file(tmp_path, monkeypatch, capsys):
    from runtime.cli import main
    cfg = write_flow(str(tmp_path))
    out = tmp_path / 'deploy' / 'docker-compose.yml'
    monkeypatch.delenv('CUDA_TOTAL_DEVICES', raising=False)
    from runtime.gpu import device_count
    if device_count() is None:   # RR over the Docker host's GPUs: their number must be known
        assert main(['export', 'docker-compose', cfg, str(out)]) == 2
        assert 'CUDA_TOTAL_DEVICES=<number of GPUs on the Docker host>' in capsys.readouterr().err
    monkeypatch.setenv('CUDA_TOTAL_DEVICES', '2')
    assert main(['export', 'docker-compose', cfg, str(out), '--image', 'img:1']) == 0
    doc = yaml.safe_load(out.read_text())
    services = doc['services']
    assert sorted(services) == sorted(['encoder-rep-0', 'encoder-rep-1', 'indexer-shard-0-rep-0',
                                       'indexer-shard-0-rep-1', 'indexer-shard-1-rep-0', 'indexer-shard-1-rep-1',
                                       'store-rep-0', 'store-rep-1', 'store-rep-2', 'gateway'])
    for _name, svc in services.items():
        assert svc['image'] == 'img:1' and svc['restart'] == 'unless-stopped'
        assert svc['healthcheck']['test'][:3] == ['CMD', 'orchestra', 'ping']
        assert svc['secrets'] == ['search-secret']
        assert svc['environment']['ORCHESTRA_SECRET_FILE'] == '/run/secrets/search-secret'
    store = services['store-rep-1']['command']
    hosts = store[store.index('--peer-hosts') + 1:store.index('--peer-hosts') + 4]
    assert hosts == ['store-rep-0', 'store-rep-1', 'store-rep-2']          # peers by service name
    assert services['store-rep-1']['volumes'][:2] == ['..:/orchestra/app:ro',
                                                      './search.orchestra.yml:/orchestra/config/orchestra.yml:ro']
    assert 'store-rep-1-workspace:/orchestra/workspace' in services['store-rep-1']['volumes']
    assert set(doc['volumes']) == {f'store-rep-{i}-workspace' for i in range(3)}
    assert services['gateway']['ports'] == ['8080:8080']
    assert doc['secrets'] == {'search-secret': {'file': './search-secret'}}
    secret = out.parent / 'search-secret'
    assert oct(secret.stat().st_mode & 0o777) == '0o600' and len(secret.read_text().strip()) == 64
    assert secret.read_text().strip() not in out.read_text()
    # CUDA_VISIBLE_DEVICES=RR over the Docker host's GPUs, as the local run assigns them
    services = yaml.safe_load(out.read_text())['services']
    ids = [services[f'encoder-rep-{i}']['deploy']['resources']['reservations']['devices'][0]['device_ids']
           for i in range(2)]
    from runtime.gpu import assign_devices
    assert ids == [[d] for d in assign_devices('RR', 2, total_devices=device_count())]   # ['0'], ['1'] here
    assert 'CUDA_VISIBLE_DEVICES' not in services['encoder-rep-0']['environment']
    if shutil.which('docker-compose'):
        r = subprocess.run(['docker-compose', '-f', str(out), 'config', '-q'], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr


def test_compose_with_monitoring_and_prometheus(tmp_path):
    from runtime.flow import Flow
    f = (Flow(name='mon', monitoring=True)
         .add(name='enc', replicas=2).add(name='kv', uses='sample_executors:KV', replicas=3, stateful=True))
    out = tmp_path / 'docker-compose.yml'
    f.to_docker_compose_yaml(str(out), prometheus=True)
    services = yaml.safe_load(out.read_text())['services']
    assert services['gateway']['ports'] == ['8080:8080', '9090:9090']
    published = [services[n]['ports'] for n in ('enc-rep-0', 'enc-rep-1', 'kv-rep-0', 'kv-rep-1', 'kv-rep-2')]
    assert published == [[f'{9100 + i}:9090'] for i in range(5)]
    prom = services['prometheus']
    assert prom['image'] == 'orchestra-prometheus:bookworm' and prom['ports'] == ['9099:9090']
    inside = yaml.safe_load((tmp_path / 'prometheus.yml').read_text())['scrape_configs'][0]['static_configs']
    assert sorted(g['targets'][0] for g in inside) == sorted(
        ['gateway:9090', 'enc-rep-0:9090', 'enc-rep-1:9090', 'kv-rep-0:9090', 'kv-rep-1:9090', 'kv-rep-2:9090'])
    host = yaml.safe_load((tmp_path / 'prometheus-host.yml').read_text())['scrape_configs'][0]['static_configs']
    assert sorted(g['targets'][0] for g in host) == sorted(
        ['127.0.0.1:9090'] + [f'127.0.0.1:{9100 + i}' for i in range(5)])
    assert {g['labels']['process'] for g in host} >= {'kv/rep-2', 'mon/gateway'}
    if shutil.which('docker-compose'):
        r = subprocess.run(['docker-compose', '-f', str(out), 'config', '-q'], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr


def test_prometheus_service_needs_monitoring(tmp_path):
    from runtime.deployment import Deployment
    from runtime.export.plan import ExportError
    with pytest.raises(ExportError, match='needs monitoring=True'):
        Deployment(name='plain').to_docker_compose_yaml(str(tmp_path / 'c.yml'), prometheus=True)


# ----------------------------------------------------------------------------- the real run

def _run(cmd, timeout=120, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}')
    return r


@pytest.fixture(scope='module')
def runtime_image():
    """The runtime image of this tree (docker_support, from the docker branch: it runs
    .ci/docker.sh and ``docker build --build-arg BASE=<base image>``), or a skip naming why
    there is no engine."""
    from docker_support import docker_image
    return docker_image()


def _in_container(compose, service: str, code: str) -> str:
    """Run Python in a service's container (the replicas' ports are not published)."""
    return _run(compose + ['exec', '-T', service, 'python', '-c', code], timeout=60).stdout


_RAFT = ("import json; from runtime.cli import ping; "
         "print(json.dumps(ping('127.0.0.1:8081', timeout=3).get('raft') or {}))")
_IDS = ("import json; from runtime.client import Client; c = Client(port=8081); "
        "print(json.dumps([d.id for d in c.post('/ids', None)])); c.close()")


def _host_prometheus(tmp_path, config) -> tuple:
    """Debian's prometheus on the host scraping the ports the compose file publishes: (process, port)."""
    binary = shutil.which('prometheus') or '/usr/bin/prometheus'
    if not os.path.exists(binary):
        pytest.skip("Debian's prometheus package is not installed (.ci/apt-packages.txt)")
    port = free_port()
    proc = subprocess.Popen([binary, f'--config.file={config}', f'--storage.tsdb.path={tmp_path / "tsdb"}',
                             f'--web.listen-address=127.0.0.1:{port}'], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, port


def _promql(port: int, query: str):
    """The one value of ``query`` (a number), or None while Prometheus has none."""
    import urllib.parse
    import urllib.request
    try:
        url = f'http://127.0.0.1:{port}/api/v1/query?' + urllib.parse.urlencode({'query': query})
        result = json.loads(urllib.request.urlopen(url, timeout=5).read())['data']['result']
    except OSError:
        return None
    return float(result[0]['value'][1]) if result else None


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_compose_for_real(tmp_path, runtime_image):
    from docarray import DocList
    from docarray.documents import TextDoc
    from runtime.cli import main
    from runtime.client import Client
    port, metrics_port = free_ports(2)
    cfg = write_flow(str(tmp_path), RUN_FLOW.replace('PORT', str(port)).replace('METRICS', str(metrics_port)))
    out = tmp_path / 'deploy' / 'docker-compose.yml'
    from docker_support import prometheus_image
    prometheus_image()   # the image of the export's `prometheus` service (--prometheus)
    assert main(['export', 'docker-compose', cfg, str(out), '--image', runtime_image, '--prometheus']) == 0
    compose = ['docker-compose', '-p', f'orchestra-test-{uuid.uuid4().hex[:8]}', '-f', str(out)]
    client = prometheus = dash = None
    try:
        _run(compose + ['up', '-d'], timeout=300)
        client = Client(port=port)

        def indexes():
            try:
                client.post('/index', DocList[TextDoc]([TextDoc(id='probe', text='probe')]))
                return True
            except Exception:
                return False
        wait_until(indexes, 240, 'the exported Flow to index through the published gateway port', interval=1.0)
        found = client.post('/search', DocList[TextDoc]([TextDoc(id='q', text='?')]))
        assert found[0].text.startswith('found:0:')
        # the Dashboard attached from the host to the composed gateway (the secret from the export)
        from orchestra_nb import Dashboard
        from orchestra_nb.dashboard import raft_rows
        secret = (out.parent / 'search-secret').read_text().strip()
        dash = Dashboard(f'127.0.0.1:{port}', secret=secret, interval=0.5)
        status_before = dash.obj.status()
        prometheus = _host_prometheus(tmp_path, out.parent / 'prometheus-host.yml')

        acked, failed, stop = ['probe'], [], threading.Event()

        def writer():
            i = 0
            while not stop.is_set():
                doc_id = f'w{i}'
                i += 1
                try:
                    client.post('/index', DocList[TextDoc]([TextDoc(id=doc_id, text='x')]))
                    acked.append(doc_id)
                except Exception as e:   # not acknowledged: allowed while the leader is gone
                    failed.append((doc_id, str(e)[:200]))
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        wait_until(lambda: len(acked) > 20, 60, 'writes to flow before the kill')

        def leader():
            for i in range(3):
                if json.loads(_in_container(compose, f'store-rep-{i}', _RAFT) or '{}').get('role') == 'leader':
                    return f'store-rep-{i}'
        victim = wait_until(leader, 60, 'a RAFT leader among store-rep-0..2', interval=1.0)
        container = _run(compose + ['ps', '-q', victim]).stdout.strip()
        before = len(acked)
        _run(['docker', 'kill', container])
        wait_until(lambda: len(acked) > before + 20, 120, 'writes to go on after the leader was killed')
        _run(compose + ['up', '-d', victim], timeout=120)   # back (restart: unless-stopped does not undo a kill)
        wait_until(lambda: len(acked) > before + 40, 120, 'writes to go on with the old leader back')
        stop.set()
        t.join(60)
        want = set(acked)

        def holds_all(svc):
            try:
                return want <= set(json.loads(_in_container(compose, svc, _IDS)))
            except (AssertionError, ValueError, subprocess.TimeoutExpired):
                return False
        for i in range(3):
            wait_until(lambda i=i: holds_all(f'store-rep-{i}'), 120,
                       f'store-rep-{i} to hold all {len(want)} acknowledged writes')
        # the Dashboard's per-replica counts add up to the requests sent after `status_before`
        sent = len(acked) - 1 + len(failed)
        after = dash.obj.status()

        def index_requests(st):
            return sum((r.get('requests') or {}).get('/index', 0) for r in st['replicas'] if r['node'] == 'indexer')
        assert index_requests(after) - index_requests(status_before) == sent
        gw_total = sum((after['gateway'].get('requests') or {}).values())
        assert gw_total - sum((status_before['gateway'].get('requests') or {}).values()) == sent

        def one_leader():
            rows = raft_rows(dash.obj.status())
            return len(rows) == 3 and [row[1] for row in rows].count('leader') == 1
        wait_until(one_leader, 60, 'the RAFT table to show one leader after the old leader came back')
        wait_until(lambda: dash.values.get('refreshes', 0) > 2 and dash.raft.value.count('leader') >= 1, 30,
                   'the Dashboard to refresh')
        dash.close()
        # a Prometheus on the host, scraping the published metrics ports, agrees (PromQL)
        wait_until(lambda: _promql(prometheus[1], 'sum(orchestra_gateway_requests_total)') == gw_total, 60,
                   f'Prometheus to see the gateway answer {gw_total} requests')
        wait_until(lambda: _promql(prometheus[1], 'count(count_values("index", orchestra_raft_applied_index))') == 1,
                   60, 'Prometheus to see the 3 store replicas at one applied index')
        assert _promql(prometheus[1], 'sum(orchestra_raft_role{role="leader"})') == 1
        # and so does the compose file's own Prometheus service, scraping the services by name inside
        # the compose network (published on the host at PROMETHEUS_HOST_PORT)
        from runtime.export.compose import PROMETHEUS_HOST_PORT
        wait_until(lambda: _promql(PROMETHEUS_HOST_PORT, 'sum(orchestra_gateway_requests_total)') == gw_total, 120,
                   f'the compose Prometheus service to see the gateway answer {gw_total} requests')
        wait_until(lambda: _promql(PROMETHEUS_HOST_PORT, 'count(up == 1)') == 6, 60,
                   'the compose Prometheus service to scrape the gateway and the 5 replicas')
        assert _promql(PROMETHEUS_HOST_PORT, 'sum(orchestra_raft_role{role="leader"})') == 1
        print(f'{len(want)} acknowledged writes on every replica; {len(failed)} not acknowledged; '
              f'leader {victim} killed')
    except BaseException:
        logs = _run(compose + ['logs', '--no-color', '--tail', '60'], check=False, timeout=60)
        print(logs.stdout[-20000:])
        raise
    finally:
        if dash is not None:
            dash.close()
        if client is not None:
            client.close()
        if prometheus is not None:
            prometheus[0].terminate()
            prometheus[0].wait(timeout=20)
        _run(compose + ['down', '-v', '--remove-orphans', '-t', '5'], timeout=300, check=False)


def test_compose_publishes_every_protocol_door(tmp_path):
    from runtime.flow import Flow
    flow = Flow(name='web', protocol=['http', 'grpc']).add(name='echo')
    path = flow.to_docker_compose_yaml(str(tmp_path / 'docker-compose.yml'))
    gateway = yaml.safe_load(open(path).read())['services']['gateway']
    assert gateway['ports'] == ['8080:8080', '8081:8081']          # defaults: 8080, 8081, ... in protocol order
    cmd = gateway['command']
    assert cmd[cmd.index('--protocol') + 1:] == ['http', 'grpc']
    assert gateway['healthcheck']['test'] == ['CMD', 'orchestra', 'ping', '127.0.0.1:8081', '--timeout', '3']
    only_http = Flow(name='h', protocol='http', port=9000).add(name='echo')
    gateway = yaml.safe_load(open(only_http.to_docker_compose_yaml(str(tmp_path / 'h.yml'))).read())['services'][
        'gateway']
    assert gateway['ports'] == ['9000:9000'] and 'http://127.0.0.1:9000/' in gateway['healthcheck']['test'][-1]
