"""Docker Compose export: one service per replica, plus the gateway.

    flow.to_docker_compose_yaml('deploy/docker-compose.yml')
    orchestra export docker-compose flow.yml deploy/docker-compose.yml

Writes, next to the compose file: ``<name>.orchestra.yml`` (the config every container reads,
see :mod:`runtime.export.plan`) and ``<name>-secret`` (the per-Deployment secret, mode 0600,
kept when it already exists so a re-export does not split a running setup).

- services ``<executor>-rep-<r>`` (``<executor>-shard-<s>-rep-<r>`` with shards) and ``gateway``;
  RAFT peers find each other by service name;
- the config's folder is bind-mounted read-only at ``/orchestra/app`` (user code without a
  custom image); the config file at ``/orchestra/config/orchestra.yml``;
- one named volume per stateful replica's workspace (``<service>-workspace``);
- the gateway's port is published; GPUs are ``deploy.resources.reservations.devices``, assigned
  round robin over the Docker host's GPUs when ``CUDA_VISIBLE_DEVICES=RR...``;
- health checks run ``orchestra ping``; ``restart: unless-stopped``;
- the secret is a top-level file-based ``secrets:`` entry mounted into every service, which
  reads it from ``$ORCHESTRA_SECRET_FILE=/run/secrets/<name>``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import yaml

from runtime.export.plan import (APP_DIR, CONFIG_PATH, DEFAULT_IMAGE, METRICS_PORT, SECRET_ENV, WORKSPACE_DIR,
                                 ExecutorExport, ExportError, ExportPlan, build_plan, dns_label, new_secret)

__all__ = ['compose_document', 'write_compose']


def _healthcheck(port: int, command: Optional[List[str]] = None) -> Dict[str, Any]:
    return {'test': ['CMD', *(command or ['orchestra', 'ping', f'127.0.0.1:{port}', '--timeout', '3'])],
            'interval': '5s', 'timeout': '5s', 'retries': 12, 'start_period': '10s'}


def service_name(ex: ExecutorExport, shard: int, replica: int) -> str:
    """``indexer-rep-1`` or ``indexer-shard-0-rep-1``."""
    return f'{ex.workload(shard)}-rep-{replica}'


#: with monitoring, replica k's /metrics is published on this host port + k (the gateway's on port_monitoring
#: or METRICS_PORT), so that a Prometheus on the host can scrape them (``prometheus-host.yml``)
HOST_METRICS_BASE = 9100
#: ``prometheus=True``: the Prometheus service's image (docs/monitoring.md says how to build it) and host port
PROMETHEUS_IMAGE = 'orchestra-prometheus:bookworm'
PROMETHEUS_HOST_PORT = 9099
PROMETHEUS_CONFIG = 'prometheus.yml'
PROMETHEUS_HOST_CONFIG = 'prometheus-host.yml'


def metrics_targets(doc: Dict[str, Any]) -> Dict[str, List[tuple]]:
    """Where each service's /metrics is: ``{'compose': [(service:port, labels)], 'host': [(127.0.0.1:port,
    labels)]}`` (the compose network's names, and the ports published on the host)."""
    out: Dict[str, List[tuple]] = {'compose': [], 'host': []}
    for name, svc in doc['services'].items():
        port = svc.get('labels', {}).get('orchestra.metrics_port')
        if not port:
            continue
        component = 'gateway' if name == 'gateway' else 'replica'
        labels = {'component': component, 'process': svc['labels']['orchestra.replica']}
        out['compose'].append((f'{name}:{port}', labels))
        published = [p for p in svc.get('ports', []) if p.endswith(f':{port}')]
        if published:
            out['host'].append((f'127.0.0.1:{published[0].split(":")[0]}', labels))
    return out


def compose_document(plan: ExportPlan, compose_dir: str, image: str = DEFAULT_IMAGE,
                     network_name: Optional[str] = None, prometheus: bool = False,
                     prometheus_image: str = PROMETHEUS_IMAGE) -> Dict[str, Any]:
    """The compose file's content for ``plan``, with paths relative to ``compose_dir``; ``prometheus``: a
    Prometheus service scraping every container (monitoring=True)."""
    secret = plan.secret_name
    secret_env = {SECRET_ENV: f'/run/secrets/{secret}'}
    app_src = os.path.relpath(plan.app_dir, compose_dir)
    app_src = app_src if app_src.startswith('.') else './' + app_src
    config_src = './' + config_file_name(plan)
    mounts = [f'{app_src}:{APP_DIR}:ro', f'{config_src}:{CONFIG_PATH}:ro']
    services: Dict[str, Any] = {}
    volumes: Dict[str, Any] = {}
    targets: Dict[tuple, List[str]] = {}
    published: List[str] = []   # replicas whose /metrics is published on the host
    for ex in plan.executors:
        if ex.external:
            targets[(ex.name, 0)] = list(ex.external)
            continue
        devices = ex.compose_devices()
        for s, shard in enumerate(ex.processes):
            hosts = [service_name(ex, s, r.replica) for r in shard]
            targets[(ex.name, s)] = [f'{h}:{ex.port}' for h in hosts]
            for r in shard:
                svc = hosts[r.replica]
                service: Dict[str, Any] = {
                    'image': image,
                    'command': ex.replica_args(s, r.replica, hosts if ex.stateful else None),
                    'environment': dict(r.env, **secret_env),
                    'volumes': list(mounts),
                    'secrets': [secret],
                    'healthcheck': _healthcheck(ex.port),
                    'restart': 'unless-stopped',
                    'labels': {'orchestra.replica': r.name},
                }
                if ex.workspace:
                    vol = f'{svc}-workspace'
                    volumes[vol] = {}
                    service['volumes'].append(f'{vol}:{WORKSPACE_DIR}')
                if ex.monitoring:
                    service['ports'] = [f'{HOST_METRICS_BASE + len(published)}:{METRICS_PORT}']
                    service['labels']['orchestra.metrics_port'] = str(METRICS_PORT)
                    published.append(svc)
                dev = devices[s * ex.replicas + r.replica]
                if dev:
                    service['deploy'] = {'resources': {'reservations': {'devices': [
                        {'driver': 'nvidia', 'device_ids': dev, 'capabilities': ['gpu']}]}}}
                services[svc] = service
    gateway_args = plan.gateway_args(targets, discover_dns={})
    services['gateway'] = {
        'image': image, 'command': gateway_args, 'environment': dict(secret_env),
        'ports': [f'{port}:{port}' for _, port in plan.doors], 'secrets': [secret],   # every protocol's door
        'healthcheck': _healthcheck(plan.gateway_port, plan.gateway_probe_command()), 'restart': 'unless-stopped',
        'labels': {'orchestra.replica': f'{plan.name}/gateway'},
    }
    if plan.monitoring:
        port = plan.graph.port_monitoring
        services['gateway']['ports'].append(f'{port}:{port}')
        services['gateway']['labels']['orchestra.metrics_port'] = str(port)
    if prometheus:
        if not plan.monitoring:
            raise ExportError(f'{plan.name!r}: a Prometheus service needs monitoring=True (nothing to scrape)')
        services['prometheus'] = {
            'image': prometheus_image,
            'command': ['prometheus', f'--config.file=/etc/prometheus/{PROMETHEUS_CONFIG}',
                        '--storage.tsdb.path=/prometheus', f'--web.listen-address=0.0.0.0:{METRICS_PORT}'],
            'volumes': [f'./{PROMETHEUS_CONFIG}:/etc/prometheus/{PROMETHEUS_CONFIG}:ro'],
            'ports': [f'{PROMETHEUS_HOST_PORT}:{METRICS_PORT}'], 'restart': 'unless-stopped',
        }
    doc: Dict[str, Any] = {'version': '3.8', 'services': services}
    if volumes:
        doc['volumes'] = volumes
    doc['secrets'] = {secret: {'file': './' + secret}}
    if network_name:
        doc['networks'] = {'default': {'name': network_name}}
    return doc


def config_file_name(plan: ExportPlan) -> str:
    return f'{dns_label(plan.name)}.orchestra.yml'


def write_compose(obj: Any, output_path: str, network_name: Optional[str] = None, image: str = DEFAULT_IMAGE,
                  app_dir: Optional[str] = None, prometheus: bool = False,
                  prometheus_image: str = PROMETHEUS_IMAGE) -> str:
    """Write the compose file, the config next to it and the secret (when missing); returns the path.

    With monitoring, also ``prometheus.yml`` (scraping the services by name, what the ``prometheus``
    service reads) and ``prometheus-host.yml`` (scraping the ports published on the host)."""
    plan = build_plan(obj, app_dir=app_dir)
    output_path = os.path.abspath(output_path)
    out_dir = os.path.dirname(output_path)
    os.makedirs(out_dir, exist_ok=True)
    doc = compose_document(plan, out_dir, image=image, network_name=network_name, prometheus=prometheus,
                           prometheus_image=prometheus_image)
    if plan.monitoring or any(ex.monitoring for ex in plan.executors):
        from runtime.export.prometheus import scrape_config
        where = metrics_targets(doc)
        for file_name, targets in ((PROMETHEUS_CONFIG, where['compose']), (PROMETHEUS_HOST_CONFIG, where['host'])):
            with open(os.path.join(out_dir, file_name), 'w', encoding='utf-8') as f:
                f.write(scrape_config(plan.name, targets))
    with open(os.path.join(out_dir, config_file_name(plan)), 'w', encoding='utf-8') as f:
        f.write(plan.spec_yaml())
    secret_path = os.path.join(out_dir, plan.secret_name)
    if not os.path.exists(secret_path):
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(new_secret() + '\n')
    else:
        os.chmod(secret_path, 0o600)
    head = (f'# {plan.kind} {plan.name!r} exported by orchestra-nb: one service per replica plus the gateway.\n'
            f'# docker-compose -f {os.path.basename(output_path)} up -d   (needs the image {image})\n')
    with open(output_path, 'w', encoding='utf-8') as f:
        f.write(head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    return output_path
