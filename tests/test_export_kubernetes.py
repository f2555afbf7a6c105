"""Kubernetes export: every manifest validates against the Kubernetes schemas (kubernetes-validate),
and the exported Flow -- a GPU Executor, a sharded stateless Executor and a 3-replica RAFT
Executor -- has the workloads, Services, peers, probes, GPU limits and claims it needs."""
from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import uuid

import pytest
import yaml

kubernetes_validate = pytest.importorskip('kubernetes_validate')

HERE = os.path.dirname(os.path.abspath(__file__))

FLOW = """\
jtype: Flow
with: {{name: search}}
executors:
  - name: encoder
    uses: Encoder
    py_modules: [{mod}.py]
    replicas: 2
    env: {{CUDA_VISIBLE_DEVICES: RR, OMP_NUM_THREADS: '1'}}
  - name: indexer
    uses: ShardIndex
    py_modules: [{mod}.py]
    shards: 2
    replicas: 2
    polling: {{/search: ALL, '*': ANY}}
  - name: store
    uses: Store
    py_modules: [{mod}.py]
    replicas: 3
    stateful: true
    workspace: ws
"""


def write_flow(folder, text: str = FLOW) -> str:
    """The test Flow YAML in ``folder``, with the executors module next to it (a unique name)."""
    mod = f'execs_{uuid.uuid4().hex[:8]}'
    shutil.copy(os.path.join(HERE, 'export_executors.py'), os.path.join(folder, f'{mod}.py'))
    path = os.path.join(folder, 'flow.yml')
    with open(path, 'w') as f:
        f.write(text.format(mod=mod))
    return path


def load_docs(out_dir: str) -> dict:
    docs = {}
    for path in sorted(glob.glob(os.path.join(out_dir, '*.yml'))):
        for d in yaml.safe_load_all(open(path)):
            docs[(d['kind'], d['metadata']['name'])] = d
    return docs


@pytest.fixture
def exported(tmp_path):
    from runtime.cli import main
    cfg = write_flow(str(tmp_path))
    out = tmp_path / 'k8s'
    assert main(['export', 'kubernetes', cfg, str(out), '--k8s-namespace', 'search-ns',
                 '--image', 'registry.example/orchestra-nb:1']) == 0
    return out, load_docs(str(out))


def test_every_manifest_validates(exported):
    out, docs = exported
    version = kubernetes_validate.latest_version()
    assert version.startswith('1.')
    for (_kind, _name), doc in docs.items():
        kubernetes_validate.validate(doc, version, strict=True)   # raises naming the bad field
        assert doc['metadata'].get('namespace', 'search-ns') == 'search-ns'
    kinds = sorted(k for k, _ in docs)
    assert kinds.count('Deployment') == 4          # encoder, indexer x 2 shards, gateway
    assert kinds.count('StatefulSet') == 1
    assert ('Namespace', 'search-ns') in docs


def test_stateful_raft_executor(exported):
    _, docs = exported
    sts = docs[('StatefulSet', 'store')]
    svc = docs[('Service', 'store-headless')]
    assert sts['spec']['serviceName'] == 'store-headless'
    assert sts['spec']['podManagementPolicy'] == 'Parallel'
    assert sts['spec']['replicas'] == 3
    assert svc['spec']['clusterIP'] == 'None' and svc['spec']['selector'] == {'app': 'store'}
    assert svc['spec']['publishNotReadyAddresses'] is True   # peers meet before they are ready
    assert sts['spec']['selector']['matchLabels'] == {'app': 'store'}
    pod = sts['spec']['template']['spec']
    (c,) = pod['containers']
    assert c['image'] == 'registry.example/orchestra-nb:1'
    args = c['args']
    assert '--replica-from-hostname' in args and '--replica' not in args
    peers = args[args.index('--peer-hosts') + 1:args.index('--peer-hosts') + 4]
    assert peers == [f'store-{i}.store-headless.search-ns.svc' for i in range(3)]
    raft_ports = sorted(p['containerPort'] for p in c['ports'] if p['name'].startswith('raft'))
    assert len(raft_ports) == 3 and sorted(p['port'] for p in svc['spec']['ports'])[:1] == [8081]
    (claim,) = sts['spec']['volumeClaimTemplates']
    assert claim['metadata']['name'] == 'workspace'
    assert claim['spec']['resources']['requests']['storage']
    assert {'name': 'workspace', 'mountPath': '/orchestra/workspace'} in c['volumeMounts']
    for probe in ('readinessProbe', 'livenessProbe'):
        assert c[probe]['exec']['command'][:3] == ['orchestra', 'ping', '127.0.0.1:8081']


def test_sharded_stateless_and_gateway(exported):
    _, docs = exported
    for s in (0, 1):
        dep = docs[('Deployment', f'indexer-shard-{s}')]
        svc = docs[('Service', f'indexer-shard-{s}-headless')]
        assert dep['spec']['replicas'] == 2
        assert svc['spec']['clusterIP'] == 'None'
        assert 'publishNotReadyAddresses' not in svc['spec']   # only ready pods get requests
        args = dep['spec']['template']['spec']['containers'][0]['args']
        assert args[args.index('--shard') + 1] == str(s)
    gw = docs[('Deployment', 'gateway')]['spec']['template']['spec']['containers'][0]
    graph = json.loads(gw['args'][gw['args'].index('--graph') + 1])
    nodes = {n['name']: n for n in graph['stages']}
    assert nodes['indexer']['discover'] == 'dns'
    assert nodes['indexer']['shards'] == [[f'indexer-shard-{s}-headless.search-ns.svc.cluster.local:8081']
                                          for s in (0, 1)]
    assert nodes['indexer']['polling'] == {'/search': 'ALL', '*': 'ANY'}
    assert nodes['store'].get('discover') is None
    assert nodes['store']['shards'] == [[f'store-{i}.store-headless.search-ns.svc:8081' for i in range(3)]]
    assert nodes['store']['needs'] == ['indexer'] and nodes['encoder']['needs'] == ['gateway']
    # the gateway never retries a stateful Executor's @write elsewhere: it must know which ones are
    assert nodes['store']['stateful'] is True and nodes['indexer']['stateful'] is False
    assert docs[('Service', 'gateway')]['spec']['ports'][0]['port'] == 8080
    assert gw['readinessProbe']['exec']['command'][:3] == ['orchestra', 'ping', '127.0.0.1:8080']


def test_gpu_limits_and_env(exported):
    _, docs = exported
    c = docs[('Deployment', 'encoder')]['spec']['template']['spec']['containers'][0]
    assert c['resources']['limits']['nvidia.com/gpu'] == 1
    env = {e['name']: e['value'] for e in c['env']}
    assert env['OMP_NUM_THREADS'] == '1'
    assert 'CUDA_VISIBLE_DEVICES' not in env           # the device plugin assigns the GPU
    for (kind, name), doc in docs.items():
        if kind in ('Deployment', 'StatefulSet') and name != 'encoder':
            assert 'resources' not in doc['spec']['template']['spec']['containers'][0]


def test_secret_and_code_config_map(exported, tmp_path):
    out, docs = exported
    secret = docs[('Secret', 'search-secret')]
    value = base64.b64decode(secret['data']['secret']).decode()
    assert len(value) == 64
    assert oct(os.stat(out / 'search-secret.yml').st_mode & 0o777) == '0o600'
    cm = docs[('ConfigMap', 'search-config')]
    spec = yaml.safe_load(cm['data']['orchestra.yml'])
    store = spec['executors'][2]
    assert store['workspace'] == '/orchestra/workspace' and len(store['peer_ports']) == 3
    assert all(p.startswith('/orchestra/app/') for e in spec['executors'] for p in e['py_modules'])
    assert 'CUDA_VISIBLE_DEVICES' not in spec['executors'][0].get('env', {})
    assert any('class Store' in v for v in cm['data'].values())
    for (kind, _), doc in docs.items():
        if kind in ('Deployment', 'StatefulSet'):
            pod = doc['spec']['template']['spec']
            (c,) = pod['containers']
            env = {e['name']: e['value'] for e in c['env']}
            assert env['ORCHESTRA_SECRET_FILE'] == '/run/secrets/orchestra/secret'
            assert any(v.get('secret', {}).get('secretName') == 'search-secret' for v in pod['volumes'])
            assert value not in json.dumps(doc)          # never in args or env
    # a re-export keeps the secret: a running setup is not split in two
    from runtime.cli import main
    assert main(['export', 'kubernetes', str(tmp_path / 'flow.yml'), str(out), '--k8s-namespace', 'search-ns']) == 0
    again = load_docs(str(out))[('Secret', 'search-secret')]
    assert again['data'] == secret['data']


def test_python_api_and_default_namespace(tmp_path):
    from runtime.flow import Flow
    f = Flow.load_config(write_flow(str(tmp_path)))
    files = f.to_kubernetes_yaml(str(tmp_path / 'out'))
    docs = load_docs(str(tmp_path / 'out'))
    assert len(files) == 8
    assert ('Namespace', 'search') in docs
    assert docs[('Deployment', 'gateway')]['spec']['template']['spec']['containers'][0]['image'] == \
        'orchestra-nb:latest'


def test_deployment_export(tmp_path):
    from runtime.deployment import Deployment
    d = Deployment(name='echo', replicas=3, port=5555)
    d.to_kubernetes_yaml(str(tmp_path / 'out'), k8s_namespace='demo')
    docs = load_docs(str(tmp_path / 'out'))
    assert docs[('Deployment', 'echo')]['spec']['replicas'] == 3
    assert docs[('Service', 'gateway')]['spec']['ports'][0]['port'] == 5555
    for doc in docs.values():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_external_executor_is_routed_not_run(tmp_path):
    from runtime.flow import Flow
    f = Flow(name='ext').add(name='remote', external=True, host=['10.0.0.5:12345', 'db.example:12346'])
    f.to_kubernetes_yaml(str(tmp_path / 'out'))
    docs = load_docs(str(tmp_path / 'out'))
    assert [k for k in docs if k[0] in ('Deployment', 'StatefulSet')] == [('Deployment', 'gateway')]
    gw = docs[('Deployment', 'gateway')]['spec']['template']['spec']['containers'][0]
    graph = json.loads(gw['args'][gw['args'].index('--graph') + 1])
    assert graph['stages'][0]['shards'] == [['10.0.0.5:12345', 'db.example:12346']]


def test_config_map_limit(tmp_path):
    from runtime.export.plan import ExportError
    cfg = write_flow(str(tmp_path))
    mod = [p for p in os.listdir(tmp_path) if p.startswith('execs_')][0]
    with open(tmp_path / mod, 'a') as f:
        f.write('\n# padding\n' + '#' * (1024 * 1024 + 10) + '\n')
    from runtime.flow import Flow
    with pytest.raises(ExportError, match=r'1 MiB.*FROM the runtime image'):
        Flow.load_config(cfg).to_kubernetes_yaml(str(tmp_path / 'out'))


def test_bad_values_are_named(tmp_path, capsys):
    from runtime.cli import main
    from runtime.export.plan import ExportError
    from runtime.flow import Flow
    cfg = write_flow(str(tmp_path))
    assert main(['export', 'kubernetes', cfg, str(tmp_path / 'o'), '--k8s-namespace', 'Bad_NS']) == 2
    assert "k8s_namespace='Bad_NS'" in capsys.readouterr().err

    class Local(__import__('orchestra_nb').Executor):
        pass
    with pytest.raises(ExportError, match='notebook cell'):
        Flow().add(uses=Local).to_kubernetes_yaml(str(tmp_path / 'o2'))
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    with pytest.raises(ExportError, match='outside the folder shipped'):
        Flow.load_config(cfg).to_kubernetes_yaml(str(tmp_path / 'o3'), app_dir=str(outside))


def test_every_protocol_door_is_published(tmp_path):
    """protocol=['grpc', 'http', 'websocket']: the gateway container and Service publish one port per door;
    a gateway without a gRPC door is probed over HTTP (GET /) or TCP (WebSocket)."""
    from runtime.deployment import Deployment
    d = Deployment(name='echo', protocol=['grpc', 'http', 'websocket'], port=[5555, 5556, 5557])
    d.to_kubernetes_yaml(str(tmp_path / 'out'), k8s_namespace='demo')
    docs = load_docs(str(tmp_path / 'out'))
    gateway = docs[('Deployment', 'gateway')]['spec']['template']['spec']['containers'][0]
    assert gateway['ports'] == [{'name': 'grpc', 'containerPort': 5555}, {'name': 'http', 'containerPort': 5556},
                                {'name': 'websocket', 'containerPort': 5557}]
    args = gateway['args'] if 'args' in gateway else gateway['command']
    assert args[args.index('--port') + 1:args.index('--port') + 4] == ['5555', '5556', '5557']
    assert args[args.index('--protocol') + 1:args.index('--protocol') + 4] == ['grpc', 'http', 'websocket']
    assert [(p['name'], p['port']) for p in docs[('Service', 'gateway')]['spec']['ports']] == \
        [('grpc', 5555), ('http', 5556), ('websocket', 5557)]
    assert 'orchestra' in gateway['readinessProbe']['exec']['command']
    for doc in docs.values():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    Deployment(name='web', protocol='http').to_kubernetes_yaml(str(tmp_path / 'web'), k8s_namespace='demo')
    web = load_docs(str(tmp_path / 'web'))
    container = web[('Deployment', 'gateway')]['spec']['template']['spec']['containers'][0]
    assert container['readinessProbe']['httpGet'] == {'path': '/', 'port': 8080}
    assert container['ports'] == [{'name': 'http', 'containerPort': 8080}]
    for doc in web.values():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_monitoring_adds_scrape_annotations_and_a_service_monitor(tmp_path):
    from runtime.flow import Flow
    f = (Flow(name='mon', monitoring=True, port_monitoring=9300)
         .add(name='enc', replicas=2).add(name='kv', uses='sample_executors:KV', replicas=3, stateful=True))
    f.to_kubernetes_yaml(str(tmp_path / 'out'), service_monitor=True)
    docs = load_docs(str(tmp_path / 'out'))
    for kind, name, port in (('Deployment', 'enc', 9090), ('StatefulSet', 'kv', 9090), ('Deployment', 'gateway', 9300)):
        pod = docs[(kind, name)]['spec']['template']
        assert pod['metadata']['annotations'] == {'prometheus.io/scrape': 'true', 'prometheus.io/port': str(port),
                                                  'prometheus.io/path': '/metrics'}
        assert {'name': 'metrics', 'containerPort': port} in pod['spec']['containers'][0]['ports']
    assert {'name': 'metrics', 'port': 9300, 'targetPort': 9300} in docs[('Service', 'gateway')]['spec']['ports']
    assert any(p['name'] == 'metrics' for p in docs[('Service', 'kv-headless')]['spec']['ports'])
    version = kubernetes_validate.latest_version()
    for key, doc in docs.items():
        if key[0] != 'ServiceMonitor':
            kubernetes_validate.validate(doc, version, strict=True)
    # a CRD (prometheus-operator's monitoring.coreos.com/v1): its shape checked by hand
    sm = docs[('ServiceMonitor', 'mon')]
    assert sm['apiVersion'] == 'monitoring.coreos.com/v1' and sm['metadata']['namespace'] == 'mon'
    assert sm['spec']['selector'] == {'matchLabels': {'app.kubernetes.io/part-of': 'mon'}}
    assert sm['spec']['namespaceSelector'] == {'matchNames': ['mon']}
    assert sm['spec']['endpoints'] == [{'port': 'metrics', 'path': '/metrics', 'interval': '15s'}]
    assert set(sm) == {'apiVersion', 'kind', 'metadata', 'spec'}
    # every Service the ServiceMonitor selects carries the label it selects on
    services = [d for (kind, _), d in docs.items() if kind == 'Service']
    assert all(s['metadata']['labels']['app.kubernetes.io/part-of'] == 'mon' for s in services)


def test_service_monitor_needs_monitoring(tmp_path):
    from runtime.deployment import Deployment
    from runtime.export.plan import ExportError
    with pytest.raises(ExportError, match='needs monitoring=True'):
        Deployment(name='plain').to_kubernetes_yaml(str(tmp_path / 'out'), service_monitor=True)
