"""The one process plan behind the local run and both exports.

:func:`build_plan` takes a Deployment or Flow and derives everything an export writes from
the local run's own plan, ``Orchestration._plan()`` (the same ``StagePlan``/``ReplicaPlan``
objects a local start uses: names, shards x replicas, each replica's environment, polling,
needs, the gateway's graph: ``Orchestration.run_plan()``) and from the config
spec (``runtime.config.to_spec``), rewritten for containers:

- paths (``py_modules``, Executor YAMLs) point into :data:`APP_DIR`, where Compose bind-mounts
  the config's folder and Kubernetes mounts a ConfigMap;
- ``workspace`` is :data:`WORKSPACE_DIR` (a volume per stateful replica);
- stateful Executors get fixed RAFT ports (``peer_ports``, chosen here when not given) and
  lose ``raft_password`` (a replica derives it from the per-Deployment secret instead: no
  secret is ever written in a manifest, an argument or an environment value);
- ``log_dir``/``stream_logs``/gateway ``host``/``port`` are dropped (containers log to stdout).

Inside a container, ``orchestra replica`` loads that rewritten spec and calls the same
``Deployment.stage_plan()`` (:mod:`runtime.export.serve`): the local run, the manifests and
the containers cannot drift apart.

The plan is built by the very code of a local start (``run_plan``); only its machine-dependent
values (a :class:`~runtime.plan.Placement`) are the containers' instead of this machine's
(:func:`container_placement`): RAFT ports and folders in the containers (fixed ports, the
workspace volume; nothing is picked, made or written here), and no GPU index counted here
(Compose assigns ``CUDA_VISIBLE_DEVICES=RR`` over the Docker host's GPUs, Kubernetes gives each
replica ``nvidia.com/gpu: 1``). A stateful Executor is stateful in the exported graph because
it is in the plan: nothing is patched afterwards.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from runtime.plan import Placement, RaftLayout
from runtime.secrets import SECRET_FILE_ENV, SecretError, load_secret
from runtime.specs import GatewaySpec

#: the image exports use unless told otherwise (``--image`` / ``image=``)
DEFAULT_IMAGE = 'orchestra-nb:latest'
#: the gateway's port inside its container (``port=`` of the Deployment/Flow overrides it)
GATEWAY_PORT = 8080
#: every replica's gRPC port inside its container (``Flow.add(port=...)`` overrides it)
REPLICA_PORT = 8081
#: every /metrics port inside its container (``monitoring=True``; the gateway's: ``port_monitoring`` if given)
METRICS_PORT = 9090
#: first RAFT port when a stateful Executor gives no ``peer_ports`` (Executor i: BASE + 100 i + ...)
RAFT_PORT_BASE = 9000
#: where the rewritten config lives in every container
CONFIG_DIR = '/orchestra/config'
CONFIG_FILE = 'orchestra.yml'
CONFIG_PATH = f'{CONFIG_DIR}/{CONFIG_FILE}'
#: where the user's code (the config's folder) is in every container
APP_DIR = '/orchestra/app'
#: a replica's workspace (a volume for stateful replicas)
WORKSPACE_DIR = '/orchestra/workspace'
#: the environment variable naming the file that holds the per-Deployment secret
SECRET_ENV = SECRET_FILE_ENV   # where every exported process finds the secret (runtime.secrets)
#: Kubernetes stores a ConfigMap in etcd; its data may not exceed 1 MiB
CONFIGMAP_LIMIT_BYTES = 1024 * 1024

_CUDA = 'CUDA_VISIBLE_DEVICES'


class ExportError(ValueError):
    """Something that cannot be exported; the message names it and says what to do."""


# ----------------------------------------------------------------------------- names

def dns_label(text: str) -> str:
    """A Kubernetes/Compose-safe name: lowercase letters, digits and '-', starting with a letter.

    >>> dns_label('My_Indexer')
    'my-indexer'
    """
    out = re.sub(r'[^a-z0-9-]+', '-', str(text).lower()).strip('-')
    if not out or not out[0].isalpha():
        out = 'x-' + out
    return out[:50].rstrip('-')


# ----------------------------------------------------------------------------- the secret

def new_secret() -> str:
    """A fresh random per-Deployment secret for an export (64 hex characters)."""
    return secrets.token_hex(32)


def read_secret() -> Optional[bytes]:
    """The secret from the file named by ``$ORCHESTRA_SECRET_FILE`` (:func:`runtime.secrets.load_secret`),
    as bytes for :func:`derive`; None when the variable is unset."""
    try:
        secret = load_secret()
    except SecretError as e:
        raise ExportError(f'{SECRET_ENV}: {e}') from None
    return secret.encode() if secret is not None else None


def derive(secret: bytes, purpose: str) -> str:
    """A value for one ``purpose`` (e.g. a shard's RAFT password) derived from the secret."""
    return hmac.new(secret, purpose.encode(), hashlib.sha256).hexdigest()


# ----------------------------------------------------------------------------- the plan

@dataclass
class ReplicaExport:
    """One replica process of an exported setup."""
    name: str                      # as in the local run: 'idx/shard-0/rep-1'
    shard: int
    replica: int
    env: Dict[str, str]            # the local plan's environment, without CUDA_VISIBLE_DEVICES


@dataclass
class ExecutorExport:
    """One Executor (a Flow node with processes, or a Deployment) of an exported setup."""
    name: str
    index: int
    shards: int
    replicas: int
    stateful: bool
    port: int                                  # the replicas' gRPC port in their containers
    processes: List[List[ReplicaExport]]       # [shard][replica]
    external: Optional[List[str]] = None       # external Executors: their addresses, no process
    raft_ports: Dict[int, List[int]] = field(default_factory=dict)
    workspace: bool = False
    raft_password: bool = False
    gpu_spec: Optional[str] = None             # CUDA_VISIBLE_DEVICES as given (RR..., a list, or None)
    monitoring: bool = False                   # its replicas serve /metrics on METRICS_PORT

    def workload(self, shard: int) -> str:
        """The DNS-safe name of shard ``shard``'s workload ('indexer', 'indexer-shard-1')."""
        base = dns_label(self.name)
        return f'{base}-shard-{shard}' if self.shards > 1 else base

    def replica_args(self, shard: int, replica: Optional[int] = None,
                     peer_hosts: Optional[List[str]] = None) -> List[str]:
        """The arguments of ``orchestra`` for one replica (``replica=None``: from the pod's ordinal)."""
        args = ['replica', '--config', CONFIG_PATH, '--executor', self.name, '--shard', str(shard)]
        args += ['--replica-from-hostname'] if replica is None else ['--replica', str(replica)]
        args += ['--host', '0.0.0.0', '--port', str(self.port)]
        if self.stateful:
            args += ['--peer-hosts', *(peer_hosts or [])]
        if self.raft_password:
            args += ['--raft-password-from-secret']
        return args

    def gpus_per_replica(self) -> int:
        """GPUs each replica asks for: 1 with ``RR...``, the list's length with an explicit list."""
        spec = (self.gpu_spec or '').strip()
        if not spec:
            return 0
        if spec.startswith('RR'):
            return 1
        return len([d for d in spec.split(',') if d.strip()])

    def compose_devices(self) -> List[Optional[List[str]]]:
        """Per replica (shard-major), the Docker host's device ids, assigned as the local run would.

        ``RR`` and slices need the Docker host's GPU count: NVML here, or ``CUDA_TOTAL_DEVICES``.
        """
        n = self.shards * self.replicas
        spec = (self.gpu_spec or '').strip()
        if not spec:
            return [None] * n
        if not spec.startswith('RR'):
            return [[d.strip() for d in spec.split(',') if d.strip()]] * n
        from runtime.gpu import assign_devices, device_count
        body = spec[2:].strip()
        needs_count = not body or ':' in body
        total = device_count()
        if needs_count and not total:
            raise ExportError(
                f'{self.name!r}: {_CUDA}={spec!r} spreads replicas over every GPU of the Docker host, but '
                'their number is unknown here (no NVML). Set CUDA_TOTAL_DEVICES=<number of GPUs on the '
                f'Docker host> when exporting, or list the devices: {_CUDA}=RR0,1')
        return [[d] if d is not None else None for d in assign_devices(spec, n, total_devices=total)]


@dataclass
class ExportPlan:
    """What an export writes: the Executors' processes, the gateway's graph, the config, the files."""
    name: str
    kind: str                                  # 'Deployment' or 'Flow'
    executors: List[ExecutorExport]
    graph: GatewaySpec                         # the gateway's graph and doors (container ports), no addresses
    spec: Dict[str, Any]                       # the config, rewritten for containers
    app_dir: str
    files: Dict[str, str]                      # path under APP_DIR -> file on this machine

    @property
    def monitoring(self) -> bool:
        """Whether the gateway serves /metrics (``graph.port_monitoring`` in its container)."""
        return self.graph.monitoring

    @property
    def doors(self) -> List[Tuple[str, int]]:
        """(protocol, port) of every door of the gateway, in ``protocol=`` order (default: one gRPC port)."""
        return list(zip(self.graph.protocols, self.graph.ports))

    @property
    def gateway_port(self) -> int:
        """The first door's port."""
        return self.graph.ports[0]

    def gateway_probe(self) -> Tuple[str, int]:
        """The door health checks use: gRPC (``orchestra ping``) if there is one, else HTTP (``GET /``),
        else the WebSocket port (a TCP connect)."""
        doors = dict(self.doors)
        for protocol in ('grpc', 'http', 'websocket'):
            if protocol in doors:
                return protocol, doors[protocol]
        raise AssertionError(f'no door in {self.doors}')

    def gateway_probe_command(self) -> List[str]:
        """A command that exits 0 when the gateway answers (for Compose healthchecks and exec probes)."""
        protocol, port = self.gateway_probe()
        if protocol == 'grpc':
            return ['orchestra', 'ping', f'127.0.0.1:{port}', '--timeout', '3']
        if protocol == 'http':
            return ['python', '-c', f'import urllib.request; urllib.request.urlopen("http://127.0.0.1:{port}/", '
                                    'timeout=3)']
        return ['python', '-c', f'import socket; socket.create_connection(("127.0.0.1", {port}), 3).close()']

    @property
    def secret_name(self) -> str:
        return f'{dns_label(self.name)}-secret'

    def spec_yaml(self) -> str:
        """The rewritten config, as the containers read it from :data:`CONFIG_PATH`."""
        head = ('# written by `orchestra export`: the config every container of this setup reads\n'
                f'# (paths are inside the containers: {APP_DIR}, {WORKSPACE_DIR})\n')
        return head + yaml.safe_dump(self.spec, sort_keys=False, default_flow_style=False, allow_unicode=True)

    def gateway_args(self, targets: Dict[Tuple[str, int], List[str]], discover_dns: Dict[str, bool]) -> List[str]:
        """``orchestra gateway`` arguments; ``targets[(node, shard)]`` are its replicas' addresses and
        ``discover_dns[node]`` says whether each address is a DNS name to resolve to every replica."""
        stages = tuple(dataclasses.replace(
            stage, shards=tuple(tuple(targets.get((stage.name, i), [])) for i in range(len(stage.shards))),
            discover='dns' if discover_dns.get(stage.name) else None) for stage in self.graph.stages)
        graph = dataclasses.replace(self.graph, stages=stages).to_dict()
        args = ['gateway', '--graph', json.dumps(graph, separators=(',', ':'), sort_keys=True),
                '--host', '0.0.0.0', '--port', *(str(port) for _, port in self.doors)]
        if [p for p, _ in self.doors] != ['grpc']:
            args += ['--protocol', *(p for p, _ in self.doors)]
        return args

    def executor(self, name: str) -> ExecutorExport:
        for ex in self.executors:
            if ex.name == name:
                return ex
        raise ExportError(f'no Executor named {name!r}; known: {", ".join(e.name for e in self.executors)}')


def is_flow(obj: Any) -> bool:
    # by its kind, not isinstance: Deployment/Flow call into this package (to_*_yaml), so it
    # must not import them back
    return getattr(obj, 'jtype', None) == 'Flow'


def _entries(obj: Any) -> List[Tuple[str, Any, Optional[int]]]:
    """(name, Deployment or None for a join, fixed replica port) per node, in graph order."""
    if is_flow(obj):
        return [(e.name, e.deployment, e.replica_port) for e in obj.entries]
    return [(obj.name, obj, None)]


def _gpu_spec(dep: Any) -> Optional[str]:
    spec = dep.env.get(_CUDA, os.environ.get(_CUDA)) if not dep.external else None
    return spec if spec else None


def _raft_ports(dep: Any, index: int) -> Dict[int, List[int]]:
    """A stateful Executor's RAFT ports in the containers: ``peer_ports`` as given, else fixed ones
    from :data:`RAFT_PORT_BASE` (Executor ``index``: BASE + 100 index + ...)."""
    given = getattr(dep, '_raft_peer_ports', None)
    if given is not None:
        return {int(s): list(p) for s, p in given.items()}
    base = RAFT_PORT_BASE + 100 * index
    return {s: [base + s * dep.replicas + r for r in range(dep.replicas)] for s in range(dep.shards)}


def container_placement(dep: Any, raft_ports: Dict[int, List[int]], grpc_port: int) -> Placement:
    """The machine-dependent values of ``dep``'s plan in the containers: no GPU index (Compose
    reserves devices, Kubernetes gives ``nvidia.com/gpu: 1``), RAFT in :data:`WORKSPACE_DIR` on
    ``raft_ports``, every replica on ``grpc_port`` in its own container."""
    n = 0 if dep.external else dep.shards * dep.replicas
    raft = None
    if dep.stateful:
        raft = RaftLayout(workspace=WORKSPACE_DIR, peer_ports={s: tuple(p) for s, p in raft_ports.items()},
                          grpc_ports=(grpc_port,) * n, bind_host='0.0.0.0')
    return Placement(devices=(None,) * n, raft=raft)


def local_plan(obj: Any, raft_ports: Optional[Dict[str, Dict[int, List[int]]]] = None) -> Tuple[list, GatewaySpec]:
    """``obj.run_plan()`` -- the plan a local start runs, built by the same code -- with the
    containers' placements (:func:`container_placement`) in place of this machine's: (stages, gateway).
    ``raft_ports``: Executor name -> its RAFT ports (default: :func:`_raft_ports`)."""
    placements = {}
    for i, (name, dep, replica_port) in enumerate(_entries(obj)):
        if dep is not None:
            ports = (raft_ports or {}).get(name) or (_raft_ports(dep, i) if dep.stateful else {})
            placements[name] = container_placement(dep, ports, replica_port or REPLICA_PORT)
    plan = obj.run_plan(placements)
    return list(plan.stages), plan.gateway


def build_plan(obj: Any, app_dir: Optional[str] = None) -> ExportPlan:
    """The export plan of a (not necessarily started) Deployment or Flow; see the module docstring."""
    from runtime.config import to_spec
    if getattr(obj, 'jtype', None) not in ('Deployment', 'Flow'):
        raise ExportError(f'expected a Deployment or a Flow, got {type(obj).__name__}')
    try:
        spec = to_spec(obj)
    except ValueError as e:
        raise ExportError(f'cannot export {obj.name!r}: {e}') from None
    raft_ports = {name: _raft_ports(dep, i) for i, (name, dep, _) in enumerate(_entries(obj))
                  if dep is not None and dep.stateful}
    stages, gateway_spec = local_plan(obj, raft_ports)
    stage_of = {stage.name: stage for stage in stages}
    executors: List[ExecutorExport] = []
    raft_ports_used: List[int] = []
    sections = spec['executors'] if spec['jtype'] == 'Flow' else [spec['with']]
    for i, (name, dep, replica_port) in enumerate(_entries(obj)):
        if dep is None:
            continue
        stage = stage_of[name]
        gpu = _gpu_spec(dep)
        procs = [[ReplicaExport(r.name, r.shard, r.replica,
                                {k: str(v) for k, v in r.env.items() if v is not None and k != _CUDA})
                  for r in shard] for shard in stage.shards]
        ex = ExecutorExport(name=name, index=i, shards=dep.shards, replicas=dep.replicas,
                            stateful=stage.stateful, port=replica_port or REPLICA_PORT, processes=procs,
                            external=list(dep.external_addresses) if dep.external else None,
                            workspace=bool(dep.workspace) or dep.stateful,
                            raft_password=bool(dep.raft_password), gpu_spec=gpu,
                            monitoring=bool(dep.monitoring) and not dep.external)
        if stage.stateful:
            ex.raft_ports = raft_ports[name]
            clash = sorted(set(raft_ports_used) & {p for v in ex.raft_ports.values() for p in v}
                           | {p for v in ex.raft_ports.values() for p in v if p in (ex.port, GATEWAY_PORT)})
            if clash:
                raise ExportError(f'{name!r}: RAFT port(s) {clash} are used twice in this export (by another '
                                  f'Executor, or as a gRPC port {ex.port}/{GATEWAY_PORT}); choose other peer_ports')
            raft_ports_used += [p for v in ex.raft_ports.values() for p in v]
        executors.append(ex)
    if not executors:
        raise ExportError(f'{obj.name!r} has no Executor with processes to export')
    section_of = {s.get('name', obj.name): s for s in sections} if spec['jtype'] == 'Flow' else {obj.name: sections[0]}
    files_refs: List[str] = []
    for ex in executors:
        _collect_files(section_of[ex.name], files_refs)
    base = _app_dir(app_dir, files_refs)
    files: Dict[str, str] = {}
    for ex in executors:
        _rewrite_section(section_of[ex.name], ex, base, files)
    if spec['jtype'] == 'Flow':
        for key in ('log_dir', 'stream_logs', 'host', 'port'):
            spec.get('with', {}).pop(key, None)
        if not spec.get('with'):
            spec.pop('with', None)
    graph = GatewaySpec(name=gateway_spec.name, stages=gateway_spec.stages,
                        max_in_flight_per_replica=gateway_spec.max_in_flight_per_replica,
                        protocols=gateway_spec.protocols, ports=_container_ports(gateway_spec.ports),
                        monitoring=gateway_spec.monitoring,
                        port_monitoring=gateway_spec.port_monitoring or METRICS_PORT if gateway_spec.monitoring else 0)
    return ExportPlan(name=obj.name, kind=spec['jtype'], executors=executors, graph=graph, spec=spec,
                      app_dir=base, files=files)


def _container_ports(given: Tuple[int, ...]) -> Tuple[int, ...]:
    """The port of each door in the containers: the one given, else GATEWAY_PORT, GATEWAY_PORT + 1, ... (0: not given).

    >>> _container_ports((0, 8080, 0))
    (8081, 8080, 8082)
    """
    free = (p for p in range(GATEWAY_PORT, 65536) if p not in given)
    return tuple(port or next(free) for port in given)


# ----------------------------------------------------------------------------- user code and paths

def _collect_files(section: Dict[str, Any], out: List[str]) -> None:
    """Absolute paths a section refers to (py_modules, Executor YAMLs)."""
    for p in section.get('py_modules') or []:
        out.append(p)
    uses = section.get('uses')
    if isinstance(uses, dict):
        out += list(uses.get('py_modules') or [])
        uses = uses.get('jtype')
    if isinstance(uses, str) and os.path.isabs(uses):
        out.append(uses)


def _app_dir(app_dir: Optional[str], refs: List[str]) -> str:
    if app_dir:
        return os.path.abspath(app_dir)
    cwd = os.getcwd()
    if not refs or all(not os.path.relpath(p, cwd).startswith('..') for p in refs):
        return cwd
    return os.path.commonpath([os.path.dirname(p) for p in refs])


def _in_container(path: str, app_dir: str, files: Dict[str, str], what: str) -> str:
    rel = os.path.relpath(path, app_dir)
    if rel.startswith('..') or os.path.isabs(rel):
        raise ExportError(f'{what} {path!r} is outside the folder shipped to the containers ({app_dir}); '
                          'move it next to the config, or build an image FROM the runtime image that '
                          'contains it (docs/scaling-out.md)')
    rel = rel.replace(os.sep, '/')
    files[rel] = path
    return f'{APP_DIR}/{rel}'


def _executor_yaml_refs(path: str) -> List[str]:
    """py_modules named inside an Executor YAML (``jtype: Class``), as absolute paths."""
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return []
    mods = data.get('py_modules') or []
    mods += (data.get('metas') or {}).get('py_modules') or [] if isinstance(data.get('metas'), dict) else []
    mods = [mods] if isinstance(mods, str) else mods
    return [os.path.normpath(os.path.join(os.path.dirname(path), m)) for m in mods if isinstance(m, str)]


def _module_files(uses: str, app_dir: str) -> List[str]:
    """``uses: module:Class`` whose module sits next to the config: its file(s)."""
    top = uses.split(':', 1)[0].split('.')[0]
    if not top.isidentifier() or top in ('runtime', 'orchestra_nb'):   # the toolkit is in the image
        return []
    single = os.path.join(app_dir, top + '.py')
    if os.path.isfile(single):
        return [single]
    pkg = os.path.join(app_dir, top)
    if os.path.isfile(os.path.join(pkg, '__init__.py')):
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(pkg) for f in fs if f.endswith('.py'))
    return []


def _rewrite_section(section: Dict[str, Any], ex: ExecutorExport, app_dir: str, files: Dict[str, str]) -> None:
    """One Executor's spec, made to run in a container (see the module docstring)."""
    for key in ('log_dir', 'stream_logs', 'raft_password'):
        section.pop(key, None)
    if not ex.external:
        section.pop('host', None)
        section.pop('port', None)
    if section.get('py_modules'):
        section['py_modules'] = [_in_container(p, app_dir, files, 'py_modules file') for p in section['py_modules']]
    uses = section.get('uses')
    if isinstance(uses, dict):
        if uses.get('py_modules'):
            uses['py_modules'] = [_in_container(p, app_dir, files, 'py_modules file') for p in uses['py_modules']]
        if isinstance(uses.get('jtype'), str) and os.path.isabs(uses['jtype']):
            uses['jtype'] = _in_container(uses['jtype'], app_dir, files, 'Executor config')
    elif isinstance(uses, str) and os.path.isabs(uses):
        for ref in _executor_yaml_refs(uses):
            _in_container(ref, app_dir, files, f'py_modules file of {uses}')
        section['uses'] = _in_container(uses, app_dir, files, 'Executor config')
    elif isinstance(uses, str) and ':' in uses:
        for f in _module_files(uses, app_dir):
            _in_container(f, app_dir, files, 'module')
    if isinstance(section.get('env'), dict) and _CUDA in section['env']:
        del section['env'][_CUDA]    # the device reservation (Compose) or limit (Kubernetes) replaces it
        if not section['env']:
            del section['env']
    if ex.workspace:
        section['workspace'] = WORKSPACE_DIR
    if ex.stateful:
        section['peer_ports'] = (ex.raft_ports[0] if ex.shards == 1
                                 else {s: list(p) for s, p in sorted(ex.raft_ports.items())})
