"""What runs inside an exported container: ``orchestra replica`` and ``orchestra gateway``.

``orchestra replica --config CONFIG --executor NAME --shard S --replica R|--replica-from-hostname
--host 0.0.0.0 --port P [--peer-hosts H0 H1 ...] [--raft-password-from-secret]`` loads the config
the export wrote, builds the Deployment/Flow and asks it for its plan -- the same
``Deployment.stage_plan()`` as a local run -- then serves replica ``(S, R)`` in this process.
A stateful replica's RAFT peers are addressed ``H_i:<its RAFT port>`` (RAFT) and ``H_i:P`` (gRPC)
instead of 127.0.0.1 ports. It needs the per-Deployment secret (``$ORCHESTRA_SECRET_FILE``):
peers authenticate their calls with it and RAFT traffic is encrypted with it (with
``--raft-password-from-secret``, with a RAFT password derived from it instead).

``orchestra gateway --graph JSON --host 0.0.0.0 --port P [P2 ...] [--protocol grpc http ...]``
serves the gateway of the graph the export wrote (``Orchestration.run_plan().gateway`` with
addresses filled in), one door per protocol. A stage marked
``"discover": "dns"`` lists DNS names (a headless Service): each resolves to every replica
behind it, re-resolved every :data:`DNS_REFRESH_S` seconds, so replicas added or removed (e.g.
``kubectl scale``) join or leave the idle-first routing without a restart.

Tests point the resolution at a hosts-like JSON file, ``$ORCHESTRA_HOSTS_FILE``:
``{"name:port": ["127.0.0.1:5001", ...]}``; it maps every address it names (the gateway's
targets, a replica's RAFT peers and its own RAFT address) and is re-read at each resolution.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

from runtime.export.plan import APP_DIR, ExportError, derive, is_flow, read_secret
from runtime.specs import GatewaySpec, RaftSpec, ReplicaSpec, SpecError

log = logging.getLogger('orchestra.export')

#: seconds between two resolutions of a headless Service's name (``$ORCHESTRA_DNS_REFRESH_S``)
DNS_REFRESH_S = 3.0
#: a hosts-like mapping for tests: {"name:port": ["host:port", ...]}
HOSTS_ENV = 'ORCHESTRA_HOSTS_FILE'


# ----------------------------------------------------------------------------- resolution

class Resolver:
    """``name:port`` -> every ``ip:port`` it resolves to (``$ORCHESTRA_HOSTS_FILE`` first)."""

    def __init__(self, hosts_file: Optional[str] = None):
        self.hosts_file = hosts_file if hosts_file is not None else os.environ.get(HOSTS_ENV)

    def _mapping(self) -> Dict[str, List[str]]:
        if not self.hosts_file:
            return {}
        try:
            with open(self.hosts_file, encoding='utf-8') as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ExportError(f'{HOSTS_ENV}={self.hosts_file!r}: cannot read it as JSON ({e})') from None
        return {str(k): [str(v)] if isinstance(v, str) else [str(x) for x in v] for k, v in data.items()}

    def mapped(self, address: str) -> str:
        """One address through the mapping (its first entry), else unchanged: for fixed peers."""
        found = self._mapping().get(address)
        return found[0] if found else address

    def resolve(self, target: str) -> Optional[List[str]]:
        """Every address behind ``target``; ``[]`` when the name does not exist (no replica),
        None when the lookup failed for another reason (keep what was known)."""
        mapping = self._mapping()
        if target in mapping:
            return sorted(mapping[target])
        host, _, port = target.rpartition(':')
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            if e.errno in (socket.EAI_NONAME, getattr(socket, 'EAI_NODATA', socket.EAI_NONAME)):
                return []
            log.warning('resolving %s failed: %s; keeping the replicas known so far', target, e)
            return None
        out = set()
        for family, _, _, _, sockaddr in infos:
            ip = sockaddr[0]
            out.add(f'[{ip}]:{port}' if family == socket.AF_INET6 else f'{ip}:{port}')
        return sorted(out)


async def keep_resolving(shard: Any, targets: List[str], resolver: Resolver, stop: asyncio.Event,
                         interval: float) -> None:
    """Keep ``shard`` (a ReplicaSet) pointed at whatever ``targets`` resolve to, until ``stop``."""
    known: Optional[List[str]] = None
    while not stop.is_set():
        found: List[str] = []
        failed = False
        for t in targets:
            got = await asyncio.to_thread(resolver.resolve, t)
            if got is None:
                failed = True
                break
            found += got
        if not failed and found != known:
            log.info('%s: replicas %s', shard.name, ', '.join(found) or 'none')
            shard.update(found)
            known = found
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass


# ----------------------------------------------------------------------------- the replica

def _ordinal() -> int:
    """A StatefulSet pod's ordinal: the number after the last '-' of its host name."""
    host = os.environ.get('HOSTNAME') or socket.gethostname()
    m = re.search(r'-(\d+)$', host)
    if not m:
        raise ExportError(f'--replica-from-hostname: host name {host!r} does not end in -<ordinal> '
                          '(a StatefulSet pod is named <name>-<i>); pass --replica instead')
    return int(m.group(1))


def _deployment_of(obj: Any, executor: str) -> Any:
    if is_flow(obj):
        known = [e.name for e in obj.entries if e.deployment is not None]
        if executor not in known:
            raise ExportError(f'--executor {executor!r}: the Flow has no Executor of that name with '
                              f'processes; known: {", ".join(known)}')
        return obj[executor]
    if executor != obj.name:
        raise ExportError(f'--executor {executor!r}: the Deployment is named {obj.name!r}')
    return obj


def replica_spec(config_path: str, executor: str, shard: int, replica: Optional[int], host: str, port: int,
                 peer_hosts: Optional[List[str]] = None, raft_password_from_secret: bool = False,
                 resolver: Optional[Resolver] = None) -> ReplicaSpec:
    """The spec of one replica, from the exported config and the local run's plan."""
    from runtime.flow import load
    if os.path.isdir(APP_DIR) and APP_DIR not in sys.path:
        sys.path.append(APP_DIR)          # `uses: module:Class` next to the config
    obj = load(config_path)
    dep = _deployment_of(obj, executor)
    replica = _ordinal() if replica is None else replica
    if not 0 <= shard < dep.shards or not 0 <= replica < dep.replicas:
        raise ExportError(f'{executor!r} has shards 0..{dep.shards - 1} and replicas 0..{dep.replicas - 1}; '
                          f'got shard {shard}, replica {replica}')
    secret = read_secret()
    if raft_password_from_secret:
        if secret is None:
            raise ExportError('--raft-password-from-secret needs the secret file ($ORCHESTRA_SECRET_FILE)')
        dep.raft_password = derive(secret, f'raft-password/{executor}/{shard}')
    stage = dep.stage_plan()             # the local run's plan (stateful: RAFT folders in the workspace)
    spec = replace(stage.shards[shard][replica].spec, host=host, port=port)
    if spec.monitoring:   # a container of its own: the fixed port Prometheus is told (runtime.export.plan)
        from runtime.export.plan import METRICS_PORT
        spec = replace(spec, port_monitoring=METRICS_PORT)
    if spec.raft is not None:
        if not peer_hosts or len(peer_hosts) != dep.replicas:
            raise ExportError(f'{executor!r} is stateful with {dep.replicas} replicas: --peer-hosts needs '
                              f'{dep.replicas} host names, got {peer_hosts or []}')
        if secret is None:   # peers authenticate their calls and encrypt RAFT traffic with it
            raise ExportError(f'{executor!r} is stateful: its replicas need the per-Deployment secret '
                              '($ORCHESTRA_SECRET_FILE, mounted by the exported Compose file / manifests)')
        spec = replace(spec, raft=retarget_raft(spec.raft, dep.peer_ports_used[shard], peer_hosts, replica,
                                                host, port, resolver or Resolver()))
    return spec


def retarget_raft(raft: RaftSpec, raft_ports: List[int], hosts: List[str], replica: int,
                  bind_host: str, grpc_port: int, resolver: Resolver) -> RaftSpec:
    """``plan_raft``'s RAFT spec with peers at ``hosts[i]`` instead of 127.0.0.1 ports."""
    def raft_addr(i: int) -> str:
        return resolver.mapped(f'{hosts[i]}:{raft_ports[i]}')

    peers = tuple(replace(p, raft=raft_addr(p.replica), grpc=resolver.mapped(f'{hosts[p.replica]}:{grpc_port}'))
                  for p in raft.peers)
    return replace(raft, address=raft_addr(replica), bind=f'{bind_host}:{raft_addr(replica).rsplit(":", 1)[1]}',
                   peers=peers)


class _PrintStatus:
    """The status pipe of a child, for a process in the foreground: prints readiness."""

    def __init__(self, what: str):
        self.what = what

    def send(self, **msg: Any) -> None:
        if msg.get('event') == 'ready':
            print(f'{self.what} ready on port {msg.get("port")} (pid {os.getpid()})', flush=True)


def _stopping_on_signals() -> threading.Event:
    stopping = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stopping.set())
    return stopping


def _logging(level: str, name: str) -> None:
    from runtime import child
    child.IN_CHILD = True   # like a replica a Deployment starts: `import orchestra_nb` starts no fork server
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f'{name}@{os.getpid()} %(asctime)s %(levelname)-7s %(message)s', datefmt='%H:%M:%S')
    for noisy in ('grpc', 'asyncio'):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_replica(args: Any) -> int:
    """``orchestra replica``: one replica of an exported setup, in the foreground."""
    _logging(args.log_level, f'{args.executor}/shard-{args.shard}')
    try:
        spec = replica_spec(args.config, args.executor, args.shard,
                            None if args.replica_from_hostname else args.replica,
                            args.host, args.port, args.peer_hosts, args.raft_password_from_secret)
    except (ExportError, ValueError, FileNotFoundError, ImportError) as e:
        print(f'orchestra replica: {e}', file=sys.stderr, flush=True)
        return 2
    from runtime.worker import run_worker
    run_worker({'config': spec.to_dict()}, _PrintStatus(spec.name), _stopping_on_signals())
    return 0


# ----------------------------------------------------------------------------- the gateway

def parse_graph(text: str) -> GatewaySpec:
    """``--graph`` JSON (a :class:`GatewaySpec`'s ``to_dict()``) -> the spec; ExportError says what is wrong."""
    try:
        graph = json.loads(text)
    except ValueError as e:
        raise ExportError(f'--graph: not JSON ({e})') from None
    try:
        return GatewaySpec.from_dict(graph, '--graph')
    except SpecError as e:
        raise ExportError(f'{e} (expected {{"name": ..., "stages": [{{"name": ..., "shards": [[address, ...]], '
                          '...}]}, as `orchestra export` writes it)') from None


async def serve_gateway(graph: GatewaySpec, host: str, port: Any, stop: asyncio.Event, on_ready=None,
                        resolver: Optional[Resolver] = None, refresh_s: Optional[float] = None,
                        protocols: Optional[List[str]] = None) -> None:
    """Serve the gateway of ``graph`` until ``stop``; DNS-discovered shards are kept resolved.
    ``protocols``/``port``: the doors and their ports (a list, same order); default one gRPC port."""
    from runtime.gateway import Gateway, open_listeners
    resolver = resolver or Resolver()
    refresh = refresh_s or float(os.environ.get('ORCHESTRA_DNS_REFRESH_S') or DNS_REFRESH_S)
    dns: List[Tuple[str, int, List[str]]] = []
    stages = []
    for stage in graph.stages:
        if stage.discover == 'dns':
            dns += [(stage.name, i, list(t)) for i, t in enumerate(stage.shards)]
            stage = replace(stage, shards=tuple(() for _ in stage.shards))
        else:   # fixed names (a StatefulSet's pods, Compose services, external hosts): gRPC resolves them
            stage = replace(stage, shards=tuple(tuple(resolver.mapped(a) for a in shard) for shard in stage.shards))
        stages.append(stage)
    ports = tuple(int(p) for p in (port if isinstance(port, (list, tuple)) else [port]))
    spec = replace(graph, host=host, protocols=tuple(protocols or ['grpc']), ports=ports, stages=tuple(stages))
    gw = Gateway(spec)
    from runtime.secrets import load_secret
    gw.secret = gw.secret or load_secret()   # the replicas' records in Info need it (runtime.remote)
    stops = await open_listeners(gw, host, list(spec.protocols), list(spec.ports), control=gw.control)
    metrics = gw.start_metrics(host, graph.port_monitoring) if graph.monitoring else None
    tasks = [asyncio.ensure_future(keep_resolving(gw.stages[n].shards[i], t, resolver, stop, refresh))
             for n, i, t in dns]
    try:
        if on_ready:
            on_ready(gw)
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        if metrics is not None:
            metrics.close()
        await asyncio.gather(*(s() for s in stops))
        await gw.close()


def run_gateway(args: Any) -> int:
    """``orchestra gateway``: the gateway of an exported setup, in the foreground."""
    from runtime.server import stop_event_from
    _logging(args.log_level, 'gateway')
    try:
        graph = parse_graph(args.graph)
        from runtime.args import protocol_ports
        protocol_ports(list(args.protocol or ['grpc']), list(args.port))   # one port per protocol, names checked
    except (ExportError, ValueError) as e:
        print(f'orchestra gateway: {e}', file=sys.stderr, flush=True)
        return 2
    stopping = _stopping_on_signals()

    async def main() -> None:
        protocols = list(args.protocol or ['grpc'])
        await serve_gateway(graph, args.host, list(args.port), stop_event_from(stopping), protocols=protocols,
                            on_ready=lambda gw: print(f'gateway {graph.name} ready on '
                                                      f'{", ".join(f"{p} port {n}" for p, n in gw.ports.items())} '
                                                      f'(pid {os.getpid()})', flush=True))
    asyncio.run(main())
    return 0
