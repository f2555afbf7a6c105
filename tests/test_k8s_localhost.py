"""A Kubernetes-shaped run on localhost: the exported Flow's gateway and replicas started as
separate ``orchestra`` processes with the arguments and environment the manifests give them.

What is substituted, and nothing else (each marked ``SUBSTITUTE`` below):

- DNS: ``$ORCHESTRA_HOSTS_FILE``, a JSON hosts-like mapping ``"name:port" -> ["127.0.0.1:p", ...]``
  read by the gateway's resolver (re-read at every resolution) and by stateful replicas for
  their peers -- in a cluster these names are resolved by the cluster DNS;
- ports: every pod listens on 8081 (its own IP); here each process gets its own 127.0.0.1 port
  (``--port``, ``--host 127.0.0.1``), and the gateway re-resolves every 0.3 s instead of 3 s;
- mounts: the ConfigMap's files and the Secret are written to a temporary folder, and the
  config's container paths (``/orchestra/app``, ``/orchestra/workspace``) point into it;
- ``HOSTNAME``: the pod name a StatefulSet would give (``store-1``).

The check: index and search end to end (a sharded stateless Executor, a GPU Executor without
GPU, a 3-replica RAFT Executor), then a replica added later to a shard is picked up by the
gateway's DNS re-resolution and gets requests, without restarting the gateway.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import free_port, wait_until
from test_export_kubernetes import load_docs, write_flow

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def info(port: int) -> dict:
    from runtime.cli import ping
    try:
        return ping(f'127.0.0.1:{port}', timeout=1.0)
    except ConnectionError:
        return {}


class Cluster:
    """The pods of the manifests, as local processes; ``close()`` stops every one."""

    def __init__(self, tmp_path, docs):
        self.tmp, self.docs = tmp_path, docs
        self.procs = []
        self.hosts = {}
        self.hosts_file = tmp_path / 'hosts.json'
        cm = next(d for (k, _), d in docs.items() if k == 'ConfigMap')
        app = tmp_path / 'mounted-app'
        app.mkdir()
        for item in next(v for v in cm_volumes(docs) if v['name'] == 'app')['configMap']['items']:
            (app / item['path']).write_text(cm['data'][item['key']])
        ws = tmp_path / 'ws'
        ws.mkdir()
        text = cm['data']['orchestra.yml'].replace('/orchestra/app', str(app))          # SUBSTITUTE mounts
        text = text.replace('/orchestra/workspace', str(ws))
        self.config = tmp_path / 'orchestra.yml'
        self.config.write_text(text)
        secret = next(d for (k, _), d in docs.items() if k == 'Secret')
        self.secret = tmp_path / 'secret'
        self.secret.write_bytes(base64.b64decode(secret['data']['secret']))
        self.write_hosts()

    def write_hosts(self):
        tmp = self.hosts_file.with_suffix('.tmp')
        tmp.write_text(json.dumps(self.hosts))
        os.replace(tmp, self.hosts_file)

    def container(self, workload: str):
        kind = 'StatefulSet' if ('StatefulSet', workload) in self.docs else 'Deployment'
        return self.docs[(kind, workload)]['spec']['template']['spec']['containers'][0]

    def start(self, workload: str, port: int, hostname: str = 'pod', extra_env=None):
        c = self.container(workload)
        args = list(c['args'])
        args[args.index('--host') + 1] = '127.0.0.1'                                     # SUBSTITUTE ports
        args[args.index('--port') + 1] = str(port)
        if '--config' in args:
            args[args.index('--config') + 1] = str(self.config)                          # SUBSTITUTE mounts
        env = {e['name']: e['value'] for e in c['env']}
        assert env.pop('ORCHESTRA_SECRET_FILE') == '/run/secrets/orchestra/secret'
        env = dict(os.environ, **env, ORCHESTRA_SECRET_FILE=str(self.secret),
                   ORCHESTRA_HOSTS_FILE=str(self.hosts_file), HOSTNAME=hostname,          # SUBSTITUTE DNS
                   PYTHONPATH=ROOT, **(extra_env or {}))
        log = open(self.tmp / f'{hostname}-{port}.log', 'wb')
        workdir = self.tmp / 'pod-workdir'   # an empty working directory, as the image's
        workdir.mkdir(exist_ok=True)
        p = subprocess.Popen([sys.executable, '-m', 'runtime.cli', *args], env=env, cwd=str(workdir),
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((p, log))
        return p

    def alive(self) -> bool:
        dead = [(p.args[3:6], p.returncode) for p, _ in self.procs if p.poll() is not None]
        if dead:
            pytest.fail(f'a process exited early: {dead}')
        return True

    def logs(self) -> str:
        out = []
        for _p, log in self.procs:
            with open(log.name, 'rb') as f:
                out.append(f'==> {log.name}\n' + f.read().decode(errors='replace')[-3000:])
        return '\n'.join(out)

    def close(self):
        for p, _ in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p, log in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            log.close()


def cm_volumes(docs):
    for (kind, _), d in docs.items():
        if kind in ('Deployment', 'StatefulSet'):
            for v in d['spec']['template']['spec']['volumes']:
                if 'configMap' in v:
                    yield v


def test_kubernetes_shaped_flow_on_localhost(tmp_path):
    from docarray import DocList
    from docarray.documents import TextDoc
    from runtime.cli import main
    from runtime.client import Client
    cfg = write_flow(str(tmp_path))
    assert main(['export', 'kubernetes', cfg, str(tmp_path / 'k8s'), '--k8s-namespace', 'ns']) == 0
    docs = load_docs(str(tmp_path / 'k8s'))
    cluster = Cluster(tmp_path, docs)
    client = None
    try:
        # stateless: every pod behind a headless Service (the name the gateway resolves)
        ports = {}
        for w in ('encoder', 'indexer-shard-0', 'indexer-shard-1'):
            n = docs[('Deployment', w)]['spec']['replicas']
            ports[w] = [free_port() for _ in range(n)]
            cluster.hosts[f'{w}-headless.ns.svc.cluster.local:8081'] = [f'127.0.0.1:{p}' for p in ports[w]]
        # stateful: one name per pod, for its gRPC and its RAFT port
        sts = docs[('StatefulSet', 'store')]
        raft_ports = [p['containerPort'] for p in cluster.container('store')['ports'] if p['name'].startswith('raft')]
        ports['store'] = [free_port() for _ in range(sts['spec']['replicas'])]
        for i, p in enumerate(ports['store']):
            cluster.hosts[f'store-{i}.store-headless.ns.svc:8081'] = [f'127.0.0.1:{p}']
            cluster.hosts[f'store-{i}.store-headless.ns.svc:{raft_ports[i]}'] = [f'127.0.0.1:{free_port()}']
        cluster.write_hosts()
        for w, ps in ports.items():
            for i, p in enumerate(ps):
                cluster.start(w, p, hostname=f'{w}-{i}')
        gw_port = free_port()
        cluster.start('gateway', gw_port, hostname='gateway-0', extra_env={'ORCHESTRA_DNS_REFRESH_S': '0.3'})
        every = [p for ps in ports.values() for p in ps] + [gw_port]
        wait_until(lambda: cluster.alive() and all(info(p).get('ready') for p in every), 120,
                   'every process of the exported Flow to answer ready')

        client = Client(port=gw_port)
        docs_in = DocList[TextDoc]([TextDoc(id=f'd{i}', text=f'  text {i} ') for i in range(20)])
        indexed = client.post('/index', docs_in, request_size=2)
        assert [d.text for d in indexed] == [f'text {i}' for i in range(20)]      # the encoder trimmed them
        found = client.post('/search', DocList[TextDoc]([TextDoc(id='q', text='?')]))
        assert found[0].text.startswith('found:0:')                                 # shards reduced, shard 0 first
        for p in ports['store']:   # every RAFT replica holds every acknowledged write
            c = Client(port=p)
            try:
                wait_until(lambda c=c: len(c.post('/ids', None)) == 20, 30, f'store replica on {p} to hold 20 docs')
            finally:
                c.close()

        # kubectl scale deployment indexer-shard-0 --replicas 3: a new pod, the DNS name lists it
        new = free_port()
        cluster.start('indexer-shard-0', new, hostname='indexer-shard-0-new')
        wait_until(lambda: info(new).get('ready'), 60, 'the added replica to answer')
        cluster.hosts['indexer-shard-0-headless.ns.svc.cluster.local:8081'].append(f'127.0.0.1:{new}')
        cluster.write_hosts()

        def gateway_sees_it():
            shard = info(gw_port)['nodes']['indexer']['shards'][0]
            return any(r['address'] == f'127.0.0.1:{new}' for r in shard)
        wait_until(gateway_sees_it, 15, 'the gateway to resolve the added replica')
        for _ in range(12):
            client.post('/index', DocList[TextDoc]([TextDoc(text='more')]))
        assert info(new)['requests'], 'the added replica got no request'
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        if client is not None:
            client.close()
        cluster.close()
