"""Kubernetes export: manifests for ``kubectl apply -f OUT_DIR``.

    flow.to_kubernetes_yaml('deploy/k8s', k8s_namespace='search')
    orchestra export kubernetes flow.yml deploy/k8s --k8s-namespace search

Files in ``OUT_DIR`` (one YAML per file, several documents each):

- ``namespace.yml``: the Namespace (default: the Deployment/Flow's name);
- ``<name>-config.yml``: a ConfigMap with the rewritten config and the user's code files
  (``py_modules``, Executor YAMLs, ``module.py`` of ``uses: module:Class`` next to the config),
  mounted at ``/orchestra/config`` and ``/orchestra/app``. Kubernetes limits a ConfigMap to
  1 MiB: bigger code is refused -- build an image ``FROM`` the runtime image instead;
- ``<name>-secret.yml``: a ``v1 Secret`` with a random per-Deployment value, mounted as a volume
  and named by ``$ORCHESTRA_SECRET_FILE`` (kept when the file already exists);
- per Executor shard ``<workload>.yml``:
  - stateless: an ``apps/v1`` Deployment with ``replicas: R`` and a headless Service; the gateway
    resolves the Service's DNS name every few seconds, so ``kubectl scale`` adds or removes
    replicas without a restart;
  - stateful (RAFT): a StatefulSet (``podManagementPolicy: Parallel``) and a headless Service
    (``publishNotReadyAddresses``: peers must find each other before they are ready); peers at
    ``<workload>-<i>.<workload>-headless.<ns>.svc``, the replica id from the pod's ordinal, and
    a ``volumeClaimTemplate`` for the workspace;
- ``gateway.yml``: a Deployment and a Service for the gateway.

GPUs: ``resources.limits["nvidia.com/gpu"]`` per replica. Probes run ``orchestra ping``.
"""
from __future__ import annotations

import base64
import os
from typing import Any, Dict, List, Optional

import yaml

from runtime.export.plan import (APP_DIR, CONFIG_DIR, CONFIG_FILE, CONFIGMAP_LIMIT_BYTES, DEFAULT_IMAGE,
                                 METRICS_PORT, SECRET_ENV, WORKSPACE_DIR, ExecutorExport, ExportError, ExportPlan,
                                 build_plan, dns_label, new_secret)
from runtime.metrics import METRICS_PATH

__all__ = ['manifests', 'write_kubernetes', 'WORKSPACE_STORAGE']

#: the size each stateful replica's workspace claim asks for
WORKSPACE_STORAGE = '1Gi'
_SECRET_DIR = '/run/secrets/orchestra'
_SECRET_KEY = 'secret'
#: how the gateway finds a stateless shard's replicas: the headless Service's DNS name
CLUSTER_DOMAIN = 'svc.cluster.local'


def _probe(port: int, initial: int, period: int, failures: int) -> Dict[str, Any]:
    return {'exec': {'command': ['orchestra', 'ping', f'127.0.0.1:{port}', '--timeout', '3']},
            'initialDelaySeconds': initial, 'periodSeconds': period, 'timeoutSeconds': 5,
            'failureThreshold': failures}


def _meta(name: str, ns: str, labels: Dict[str, str]) -> Dict[str, Any]:
    return {'name': name, 'namespace': ns, 'labels': dict(labels)}


def _config_volumes(plan: ExportPlan, keys: Dict[str, str]) -> List[Dict[str, Any]]:
    cm = f'{dns_label(plan.name)}-config'
    vols = [{'name': 'config', 'configMap': {'name': cm, 'items': [{'key': CONFIG_FILE, 'path': CONFIG_FILE}]}},
            {'name': 'secret', 'secret': {'secretName': plan.secret_name, 'defaultMode': 0o400}}]
    if keys:
        vols.append({'name': 'app', 'configMap': {'name': cm, 'items': [
            {'key': k, 'path': rel} for rel, k in sorted(keys.items())]}})
    return vols


def _mounts(keys: Dict[str, str]) -> List[Dict[str, Any]]:
    mounts = [{'name': 'config', 'mountPath': CONFIG_DIR, 'readOnly': True},
              {'name': 'secret', 'mountPath': _SECRET_DIR, 'readOnly': True}]
    if keys:
        mounts.append({'name': 'app', 'mountPath': APP_DIR, 'readOnly': True})
    return mounts


def _env(env: Dict[str, str]) -> List[Dict[str, str]]:
    out = [{'name': k, 'value': v} for k, v in sorted(env.items())]
    out.append({'name': SECRET_ENV, 'value': f'{_SECRET_DIR}/{_SECRET_KEY}'})
    return out


def _container(name: str, image: str, args: List[str], env: Dict[str, str], ports: List[Dict[str, Any]],
               probe_port: int, keys: Dict[str, str], gpus: int = 0) -> Dict[str, Any]:
    c: Dict[str, Any] = {'name': name, 'image': image, 'imagePullPolicy': 'IfNotPresent', 'args': args,
                         'env': _env(env), 'ports': ports,
                         'readinessProbe': _probe(probe_port, 2, 5, 3),
                         'livenessProbe': _probe(probe_port, 30, 10, 6),
                         'volumeMounts': _mounts(keys)}
    if gpus:
        c['resources'] = {'limits': {'nvidia.com/gpu': gpus}}
    return c


def peer_hosts(ex: ExecutorExport, shard: int, ns: str) -> List[str]:
    """The stable DNS names of a stateful shard's pods: ``<workload>-<i>.<workload>-headless.<ns>.svc``."""
    w = ex.workload(shard)
    return [f'{w}-{i}.{w}-headless.{ns}.svc' for i in range(ex.replicas)]


def scrape_annotations(port: int) -> Dict[str, str]:
    """The ``prometheus.io/*`` pod annotations of a /metrics endpoint (Prometheus's kubernetes_sd convention)."""
    return {'prometheus.io/scrape': 'true', 'prometheus.io/port': str(port), 'prometheus.io/path': METRICS_PATH}


def _monitor(pod: Dict[str, Any], container: Dict[str, Any], port: int) -> None:
    """A pod that serves /metrics on ``port``: the named port and the scrape annotations."""
    container['ports'].append({'name': 'metrics', 'containerPort': port})
    pod['metadata']['annotations'] = scrape_annotations(port)


def service_monitor(plan: ExportPlan, ns: str) -> Dict[str, Any]:
    """A prometheus-operator ``ServiceMonitor`` selecting every Service of this export by its ``metrics`` port."""
    part = dns_label(plan.name)
    return {'apiVersion': 'monitoring.coreos.com/v1', 'kind': 'ServiceMonitor',
            'metadata': _meta(part, ns, {'app.kubernetes.io/part-of': part}),
            'spec': {'selector': {'matchLabels': {'app.kubernetes.io/part-of': part}},
                     'namespaceSelector': {'matchNames': [ns]},
                     'endpoints': [{'port': 'metrics', 'path': METRICS_PATH, 'interval': '15s'}]}}


def _workload(plan: ExportPlan, ex: ExecutorExport, shard: int, ns: str, image: str,
              keys: Dict[str, str]) -> List[Dict[str, Any]]:
    w = ex.workload(shard)
    labels = {'app': w, 'app.kubernetes.io/part-of': dns_label(plan.name),
              'orchestra/executor': dns_label(ex.name), 'orchestra/shard': str(shard)}
    ports = [{'name': 'grpc', 'containerPort': ex.port}]
    raft = ex.raft_ports.get(shard, [])
    ports += [{'name': f'raft-{i}', 'containerPort': p} for i, p in enumerate(raft)]
    env = ex.processes[shard][0].env      # the same for every replica of a shard (GPU env is dropped)
    # stateful: the replica id is the pod's ordinal; stateless pods are interchangeable (replica 0's config)
    args = ex.replica_args(shard, None if ex.stateful else 0, peer_hosts(ex, shard, ns) if ex.stateful else None)
    container = _container('executor', image, args, env, ports, ex.port, keys, ex.gpus_per_replica())
    volumes = _config_volumes(plan, keys)
    pod: Dict[str, Any] = {'metadata': {'labels': labels},
                           'spec': {'containers': [container], 'volumes': volumes,
                                    'terminationGracePeriodSeconds': 10}}
    if ex.monitoring:
        _monitor(pod, container, METRICS_PORT)
        ports = container['ports']
    service = {'apiVersion': 'v1', 'kind': 'Service', 'metadata': _meta(f'{w}-headless', ns, labels),
               'spec': {'clusterIP': 'None', 'selector': {'app': w},
                        'ports': [{'name': p['name'], 'port': p['containerPort'], 'targetPort': p['containerPort']}
                                  for p in ports]}}
    if ex.stateful:
        service['spec']['publishNotReadyAddresses'] = True
        container['volumeMounts'].append({'name': 'workspace', 'mountPath': WORKSPACE_DIR})
        workload = {'apiVersion': 'apps/v1', 'kind': 'StatefulSet', 'metadata': _meta(w, ns, labels),
                    'spec': {'serviceName': f'{w}-headless', 'replicas': ex.replicas,
                             'podManagementPolicy': 'Parallel', 'selector': {'matchLabels': {'app': w}},
                             'template': pod,
                             'volumeClaimTemplates': [{
                                 'metadata': {'name': 'workspace'},
                                 'spec': {'accessModes': ['ReadWriteOnce'],
                                          'resources': {'requests': {'storage': WORKSPACE_STORAGE}}}}]}}
    else:
        if ex.workspace:
            container['volumeMounts'].append({'name': 'workspace', 'mountPath': WORKSPACE_DIR})
            volumes.append({'name': 'workspace', 'emptyDir': {}})
        workload = {'apiVersion': 'apps/v1', 'kind': 'Deployment', 'metadata': _meta(w, ns, labels),
                    'spec': {'replicas': ex.replicas, 'selector': {'matchLabels': {'app': w}}, 'template': pod}}
    return [workload, service]


def _gateway(plan: ExportPlan, ns: str, image: str, keys: Dict[str, str]) -> List[Dict[str, Any]]:
    targets: Dict[tuple, List[str]] = {}
    dns: Dict[str, bool] = {}
    for ex in plan.executors:
        if ex.external:
            targets[(ex.name, 0)] = list(ex.external)
            continue
        for s in range(ex.shards):
            if ex.stateful:   # a fixed membership: one name per pod
                targets[(ex.name, s)] = [f'{h}:{ex.port}' for h in peer_hosts(ex, s, ns)]
            else:             # every ready pod behind the headless Service, re-resolved
                targets[(ex.name, s)] = [f'{ex.workload(s)}-headless.{ns}.{CLUSTER_DOMAIN}:{ex.port}']
                dns[ex.name] = True
    labels = {'app': 'gateway', 'app.kubernetes.io/part-of': dns_label(plan.name)}
    ports = [{'name': protocol, 'containerPort': port} for protocol, port in plan.doors]   # every protocol's door
    container = _container('gateway', image, plan.gateway_args(targets, dns), {}, ports, plan.gateway_port, {})
    protocol, probe_port = plan.gateway_probe()
    if protocol != 'grpc':   # no gRPC door to `orchestra ping`: Kubernetes' own HTTP / TCP probes
        check = ({'httpGet': {'path': '/', 'port': probe_port}} if protocol == 'http'
                 else {'tcpSocket': {'port': probe_port}})
        for key in ('readinessProbe', 'livenessProbe'):
            probe = {k: v for k, v in container[key].items() if k != 'exec'}
            container[key] = dict(check, **probe)
    container['volumeMounts'] = [m for m in container['volumeMounts'] if m['name'] == 'secret']
    volumes = [v for v in _config_volumes(plan, {}) if v['name'] == 'secret']
    pod: Dict[str, Any] = {'metadata': {'labels': labels},
                           'spec': {'containers': [container], 'volumes': volumes,
                                    'terminationGracePeriodSeconds': 10}}
    deployment = {'apiVersion': 'apps/v1', 'kind': 'Deployment', 'metadata': _meta('gateway', ns, labels),
                  'spec': {'replicas': 1, 'selector': {'matchLabels': {'app': 'gateway'}}, 'template': pod}}
    service = {'apiVersion': 'v1', 'kind': 'Service', 'metadata': _meta('gateway', ns, labels),
               'spec': {'type': 'ClusterIP', 'selector': {'app': 'gateway'},
                        'ports': [{'name': p['name'], 'port': p['containerPort'], 'targetPort': p['containerPort']}
                                  for p in ports]}}
    if plan.monitoring:
        metrics_port = plan.graph.port_monitoring
        _monitor(pod, container, metrics_port)
        service['spec']['ports'].append({'name': 'metrics', 'port': metrics_port, 'targetPort': metrics_port})
    return [deployment, service]


def _config_map(plan: ExportPlan, ns: str) -> tuple:
    """(the ConfigMap, {path under APP_DIR: its key}); refuses more than 1 MiB of data."""
    data = {CONFIG_FILE: plan.spec_yaml()}
    keys: Dict[str, str] = {}
    for i, (rel, path) in enumerate(sorted(plan.files.items())):
        try:
            with open(path, encoding='utf-8') as f:
                data[f'app-{i}'] = f.read()
        except UnicodeDecodeError:
            raise ExportError(f'{path!r} is not a text file; a ConfigMap carries text code files only -- '
                              'build an image FROM the runtime image that contains it') from None
        keys[rel] = f'app-{i}'
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    if size > CONFIGMAP_LIMIT_BYTES:
        biggest = sorted(plan.files.items(), key=lambda kv: -os.path.getsize(kv[1]))[:3]
        raise ExportError(
            f'the code shipped to the pods is {size} bytes, more than a ConfigMap may hold '
            f'({CONFIGMAP_LIMIT_BYTES} bytes = 1 MiB; biggest: {", ".join(p for _, p in biggest)}). '
            'Build an image FROM the runtime image with your code in it and export with --image '
            '(docs/scaling-out.md, "Bigger code")')
    cm = {'apiVersion': 'v1', 'kind': 'ConfigMap',
          'metadata': _meta(f'{dns_label(plan.name)}-config', ns, {'app.kubernetes.io/part-of': dns_label(plan.name)}),
          'data': data}
    return cm, keys


def manifests(plan: ExportPlan, ns: str, image: str = DEFAULT_IMAGE, secret_value: Optional[str] = None,
              with_service_monitor: bool = False) -> Dict[str, List[Dict[str, Any]]]:
    """{file name: its documents} for ``plan`` in namespace ``ns``; ``with_service_monitor``: a
    ``ServiceMonitor`` too (``monitoring.yml``)."""
    part = {'app.kubernetes.io/part-of': dns_label(plan.name)}
    cm, keys = _config_map(plan, ns)
    secret = {'apiVersion': 'v1', 'kind': 'Secret', 'type': 'Opaque', 'metadata': _meta(plan.secret_name, ns, part),
              'data': {_SECRET_KEY: base64.b64encode((secret_value or new_secret()).encode()).decode()}}
    out: Dict[str, List[Dict[str, Any]]] = {
        'namespace.yml': [{'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': ns, 'labels': part}}],
        f'{dns_label(plan.name)}-config.yml': [cm],
        f'{plan.secret_name}.yml': [secret],
    }
    for ex in plan.executors:
        if ex.external:
            continue
        for s in range(ex.shards):
            out[f'{ex.workload(s)}.yml'] = _workload(plan, ex, s, ns, image, keys)
    out['gateway.yml'] = _gateway(plan, ns, image, keys)
    if with_service_monitor:
        if not (plan.monitoring or any(ex.monitoring for ex in plan.executors)):
            raise ExportError(f'{plan.name!r}: a ServiceMonitor needs monitoring=True (nothing to scrape)')
        out['monitoring.yml'] = [service_monitor(plan, ns)]
    return out


def _existing_secret(path: str) -> Optional[str]:
    try:
        with open(path, encoding='utf-8') as f:
            doc = yaml.safe_load(f)
        return base64.b64decode(doc['data'][_SECRET_KEY]).decode()
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def write_kubernetes(obj: Any, output_base_path: str, k8s_namespace: Optional[str] = None,
                     image: str = DEFAULT_IMAGE, app_dir: Optional[str] = None,
                     service_monitor: bool = False) -> List[str]:
    """Write the manifests of ``obj`` under ``output_base_path``; returns the files written."""
    plan = build_plan(obj, app_dir=app_dir)
    ns = k8s_namespace or dns_label(plan.name)
    if dns_label(ns) != ns:
        raise ExportError(f'k8s_namespace={ns!r}: a namespace is lowercase letters, digits and "-", '
                          f'starting with a letter (e.g. {dns_label(ns)!r})')
    os.makedirs(output_base_path, exist_ok=True)
    secret_file = os.path.join(output_base_path, f'{plan.secret_name}.yml')
    docs = manifests(plan, ns, image=image, secret_value=_existing_secret(secret_file),
                     with_service_monitor=service_monitor)
    written = []
    for name, items in docs.items():
        path = os.path.join(output_base_path, name)
        mode = 0o600 if name == f'{plan.secret_name}.yml' else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(yaml.safe_dump_all(items, sort_keys=False, default_flow_style=False))
        os.chmod(path, mode)
        written.append(path)
    return written
