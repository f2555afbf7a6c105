"""runtime.metrics: the Prometheus endpoint of gateways and replicas (monitoring=True)."""
import http.client
import json
import re
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from docarray import DocList
from docarray.documents import TextDoc
from prometheus_client.parser import text_string_to_metric_families

from conftest import busy_port, free_port
from runtime import metrics as m
from runtime.deployment import Deployment
from runtime.export.prometheus import scrape_config
from runtime.flow import Flow
from runtime.reprs import status_text


def samples(port, host='127.0.0.1'):
    """name -> [(labels, value)] of one /metrics endpoint."""
    text = urllib.request.urlopen(f'http://{host}:{port}/metrics', timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(table, name, **match):
    return sum(v for labels, v in table.get(name, []) if all(labels.get(k) == w for k, w in match.items()))


# ----------------------------------------------------------------------------- in process

def test_endpoint_metrics_are_cached_and_counted():
    metrics = m.Metrics('replica', m.replica_labels('enc', 1, 0))
    child = metrics.for_endpoint('/index')
    assert metrics.for_endpoint('/index') is child
    child.observe(0.01, ok=True)
    child.observe(0.02, ok=False)
    text = metrics.exposition().decode()
    assert 'orchestra_replica_requests_total{endpoint="/index",executor="enc",replica="1",shard="0"} 2.0' in text
    assert 'orchestra_replica_errors_total{endpoint="/index",executor="enc",replica="1",shard="0"} 1.0' in text
    assert '_created' not in text


def test_role_is_checked():
    with pytest.raises(ValueError, match="role='worker'"):
        m.Metrics('worker', {})


def test_scrape_time_metrics_are_absent_not_zero_without_their_source():
    labels = m.replica_labels('enc', 0, 0)
    metrics = m.Metrics('replica', labels)
    metrics.add_collector(m.ScrapeCollector([m.raft_reader(labels, lambda: None),
                                             m.gpu_reader(labels, None), m.batch_reader(labels, dict)]))
    text = metrics.exposition().decode()
    assert 'orchestra_raft' not in text and 'orchestra_gpu' not in text and 'batch_size' not in text


def test_raft_reader_reports_role_and_lag():
    labels = m.replica_labels('kv', 2, 0)
    metrics = m.Metrics('replica', labels)
    st = {'role': 'follower', 'term': 3, 'commit_index': 10, 'applied_index': 7}
    metrics.add_collector(m.ScrapeCollector([m.raft_reader(labels, lambda: st)]))
    text = metrics.exposition().decode()
    assert 'orchestra_raft_role{executor="kv",replica="2",role="follower",shard="0"} 1.0' in text
    assert 'orchestra_raft_role{executor="kv",replica="2",role="leader",shard="0"} 0.0' in text
    assert 'orchestra_raft_log_lag{executor="kv",replica="2",shard="0"} 3.0' in text


def test_monitor_is_a_no_op_without_monitoring():
    m.install(None)

    @m.monitor(name='x_seconds')
    def f(a):
        return a + 1

    with m.timed('y_seconds', 'doc'):
        assert f(1) == 2


def test_user_metrics_land_in_the_installed_registry():
    metrics = m.Metrics('replica', m.replica_labels('enc', 0, 0))
    m.install(metrics)
    try:
        with m.calling_endpoint('/embed'):
            with m.timed('embed_seconds', 'time to embed'):
                pass
        text = metrics.exposition().decode()
        assert 'embed_seconds_count{endpoint="/embed",executor="enc",replica="0",shard="0"} 1.0' in text
        with pytest.raises(ValueError, match="monitor\\(name='orchestra_replica_requests_total'\\)"):
            metrics.user_summary('orchestra_replica_requests_total', 'clash')
    finally:
        m.install(None)


def test_metrics_server_serves_metrics_only():
    metrics = m.Metrics('gateway', {'gateway': 'g'})
    server = m.serve_metrics(metrics, '127.0.0.1', 0)
    try:
        metrics.for_endpoint('/x').observe(0.001, ok=True)
        assert 'orchestra_gateway_requests_total' in urllib.request.urlopen(
            f'http://127.0.0.1:{server.port}/metrics', timeout=5).read().decode()
        for method, path, code in (('GET', '/', 404), ('GET', '/metrics/x', 404), ('POST', '/metrics', 405)):
            conn = http.client.HTTPConnection('127.0.0.1', server.port, timeout=5)
            conn.request(method, path, body=b'' if method == 'POST' else None)
            assert conn.getresponse().status == code, (method, path)
            conn.close()
    finally:
        server.close()


def test_port_in_use_is_named():
    with busy_port() as port:
        with pytest.raises(OSError, match=f'port_monitoring={port}: cannot listen on 127.0.0.1:{port}'):
            m.serve_metrics(m.Metrics('gateway', {'gateway': 'g'}), '127.0.0.1', port)


def test_scrape_targets_and_config():
    status = {'address': '127.0.0.1:5000', 'gateway': {'metrics_port': 9100},
              'replicas': [{'name': 'a/rep-0', 'address': '127.0.0.1:6000', 'metrics_port': 9101},
                           {'name': 'a/rep-1', 'address': '127.0.0.1:6001'}]}
    targets = m.scrape_targets(status)
    assert targets == [('127.0.0.1:9100', {'component': 'gateway'}),
                       ('127.0.0.1:9101', {'component': 'replica', 'process': 'a/rep-0'})]
    import yaml
    config = yaml.safe_load(scrape_config('a', targets, '1s'))
    assert config['scrape_configs'][0]['static_configs'][1]['labels'] == {'component': 'replica',
                                                                          'process': 'a/rep-0', 'orchestra': 'a'}
    with pytest.raises(ValueError, match='monitoring=True'):
        scrape_config('a', [])


# ----------------------------------------------------------------------------- real processes

def _send(dep, n, endpoint='/echo'):
    docs = DocList[TextDoc]([TextDoc(id=f'd{i}', text=f't{i}') for i in range(n)])
    dep.post(endpoint, docs, request_size=1)


def test_monitoring_off_serves_nothing():
    with Deployment(name='plain') as dep:
        st = dep.status()
        assert st['gateway'].get('metrics_port') is None
        assert all('metrics_port' not in r for r in st['replicas'])
        assert 'metrics:' not in status_text(dep, st)


def test_deployment_replicas_and_gateway_count_what_was_sent():
    with Deployment(name='echo', replicas=2, monitoring=True) as dep:
        _send(dep, 10)
        st = dep.status()
        gw = samples(st['gateway']['metrics_port'])
        assert total(gw, 'orchestra_gateway_requests_total', endpoint='/echo') == 10
        assert total(gw, 'orchestra_gateway_request_seconds_count', endpoint='/echo') == 10
        assert total(gw, 'orchestra_gateway_replica_sent_total') == 10
        assert {labels['replica'] for labels, _ in gw['orchestra_gateway_replica_in_rotation']} == {
            'echo/rep-0', 'echo/rep-1'}
        assert total(gw, 'orchestra_gateway_queue_depth') == 0
        per_replica = [total(samples(r['metrics_port']), 'orchestra_replica_requests_total', endpoint='/echo')
                       for r in st['replicas']]
        assert sum(per_replica) == 10
        rep = samples(st['replicas'][0]['metrics_port'])
        assert total(rep, 'orchestra_process_resident_memory_bytes') > 0
        assert 'orchestra_gpu_utilization_percent' not in rep   # no GPU given: absent, not zero
        assert f'metrics: gateway http://127.0.0.1:{st["gateway"]["metrics_port"]}/metrics' in status_text(dep, st)


def test_the_http_door_is_counted_like_grpc():
    """Every front door calls Gateway.route_request, where the gateway's metrics are taken."""
    import httpx
    with Deployment(name='web', uses='sample_executors:Upper', protocol=['grpc', 'http'], monitoring=True) as dep:
        for i in range(3):
            r = httpx.post(f"{dep.addresses['http']}/upper", json={'data': [{'text': f'a{i}'}]}, timeout=30)
            assert r.status_code == 200, r.text
        _send(dep, 2, '/upper')
        gw = samples(dep.status()['gateway']['metrics_port'])
        assert total(gw, 'orchestra_gateway_requests_total', endpoint='/upper') == 5


def test_flow_with_a_stateful_executor_reports_raft(tmp_path):
    flow = (Flow(monitoring=True)
            .add(name='kv', uses='sample_executors:MonitoredKV', replicas=3, stateful=True,
                 workspace=str(tmp_path)))
    with flow:
        _send(flow, 6, '/index')
        st = flow.status()
        deadline = time.monotonic() + 20
        while True:   # followers apply a moment after the leader answers
            tables = [samples(r['metrics_port']) for r in st['replicas']]
            applied = {total(t, 'orchestra_raft_applied_index') for t in tables}
            if len(applied) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(applied) == 1, applied
        assert sum(total(t, 'orchestra_raft_role', role='leader') for t in tables) == 1
        assert all(total(t, 'orchestra_raft_log_lag') == 0 for t in tables)
        assert sum(total(t, 'orchestra_replica_requests_total', endpoint='/index') for t in tables) == 6
        # every replica applied the 6 docs, and the Executor's own metrics counted each call
        assert all(total(t, 'orchestra_replica_documents_total', endpoint='/index') == 6 for t in tables)
        assert all(total(t, 'kv_store_seconds_count') == 6 for t in tables)
        assert all(total(t, 'kv_index_seconds_count', endpoint='/index') == 6 for t in tables)
        config = flow.prometheus_config()
        assert config.count('component: replica') == 3 and 'component: gateway' in config


# ----------------------------------------------------------------------------- a real Prometheus

PROMETHEUS = shutil.which('prometheus') or '/usr/bin/prometheus'


def _query(port, promql):
    url = f'http://127.0.0.1:{port}/api/v1/query?' + urllib.parse.urlencode({'query': promql})
    data = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert data['status'] == 'success', data
    return data['data']['result']


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason="Debian's prometheus package is not installed")
def test_a_real_prometheus_scrapes_a_flow(tmp_path):
    flow = (Flow(monitoring=True)
            .add(name='echo', replicas=2)
            .add(name='kv', uses='sample_executors:KV', replicas=3, stateful=True, workspace=str(tmp_path / 'ws')))
    with flow:
        _send(flow, 12, '/index')
        (tmp_path / 'prometheus.yml').write_text(flow.prometheus_config(scrape_interval='1s'))
        port = free_port()
        proc = subprocess.Popen([PROMETHEUS, f'--config.file={tmp_path / "prometheus.yml"}',
                                 f'--storage.tsdb.path={tmp_path / "tsdb"}', f'--web.listen-address=127.0.0.1:{port}'],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / 'prometheus.log', 'wb'),
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            sent = replicas = applied = None
            while time.monotonic() < deadline:
                try:
                    up = _query(port, 'sum(up)')
                    sent = _query(port, 'sum(orchestra_gateway_requests_total{endpoint="/index"})')
                    replicas = _query(port, 'sum(orchestra_replica_requests_total{endpoint="/index"}) by (executor)')
                    applied = _query(port, 'count(count_values("index", orchestra_raft_applied_index))')
                except (OSError, ValueError):
                    time.sleep(0.5)
                    continue
                ready = (up and float(up[0]['value'][1]) == 6 and sent and len(replicas) == 2 and applied)
                if ready and all(float(r['value'][1]) == 12 for r in replicas) and applied[0]['value'][1] == '1':
                    break
                time.sleep(0.5)
            log = (tmp_path / 'prometheus.log').read_text()[-2000:]
            assert float(up[0]['value'][1]) == 6, (up, log)   # the gateway, 2 echo replicas, 3 kv replicas
            assert float(sent[0]['value'][1]) == 12, sent
            assert {r['metric']['executor']: float(r['value'][1]) for r in replicas} == {'echo': 12, 'kv': 12}
            assert applied[0]['value'][1] == '1', applied   # one applied index shared by the 3 kv replicas
            leaders = _query(port, 'sum(orchestra_raft_role{role="leader"})')
            assert float(leaders[0]['value'][1]) == 1
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_gpu_metrics_cover_the_devices_given_only(monkeypatch):
    """No GPU on this machine: NVML's record is given by hand; the decision under test is which devices
    a replica reports (those of its CUDA_VISIBLE_DEVICES, by index or UUID prefix)."""
    import runtime.gpu
    gpus = [{'index': 0, 'uuid': 'GPU-aaaa', 'utilization': 40, 'memory_used': 1 << 30, 'memory_total': 8 << 30},
            {'index': 1, 'uuid': 'GPU-bbbb', 'utilization': 90, 'memory_used': 2 << 30, 'memory_total': 8 << 30}]
    monkeypatch.setattr(runtime.gpu, 'gpu_snapshot', lambda: {'available': True, 'note': None, 'gpus': gpus})
    labels = m.replica_labels('enc', 0, 0)
    texts = {}
    for given, devices in (('1', {'1'}), ('GPU-aaaa,1', {'0', '1'}), ('', set())):
        metrics = m.Metrics('replica', labels)
        metrics.add_collector(m.ScrapeCollector([m.gpu_reader(labels, given)]))
        texts[given] = metrics.exposition().decode()
        found = set(re.findall(r'orchestra_gpu_utilization_percent\{device="(\d)"', texts[given]))
        assert found == devices, (given, texts[given])
    assert ('orchestra_gpu_memory_total_bytes{device="1",executor="enc",replica="0",shard="0"} 8.589934592e+09'
            in texts['1'])
    assert 'orchestra_gpu' not in texts['']   # no device given: absent, not zero
