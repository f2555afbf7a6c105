"""The Deployment hooks of ``stateful=True``: checks up front and the per-replica plan.

``validate_stateful`` checks a Deployment's arguments (replicas, ``peer_ports``,
``raft_configuration``, ``raft_password``); ``place_raft`` picks this machine's RAFT ports
(remembered in ``<workspace>/<name>/.raft/peers.json``) and folders (private: 0700) -- a
:class:`~runtime.plan.RaftLayout`, the side effects done once, at start; ``plan_raft`` (pure)
puts a layout in each replica's spec (``ReplicaSpec.raft``, a :class:`~runtime.specs.RaftSpec`)
and names the file that keeps the Deployment's secret (``StagePlan.secret_file``;
:mod:`runtime.secrets`). Relies on :mod:`runtime.raft.config`.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from runtime.raft.common import _write_json
from runtime.raft.config import normalize_raft_configuration
from runtime.secrets import SECRET_FILE_NAME, private_dir, private_tree
from runtime.plan import RaftLayout
from runtime.specs import RaftPeer, RaftSpec

log = logging.getLogger('orchestra.raft')

#: RAFT needs a majority to elect a leader; 3 replicas survive one failure.
MIN_REPLICAS = 3


def _check_ports(ports: Any, what: str, replicas: int) -> List[int]:
    if not isinstance(ports, (list, tuple)):
        raise ValueError(f'{what}={ports!r}: must be a list of {replicas} ports, one per replica')
    if len(ports) != replicas:
        raise ValueError(f'{what} has {len(ports)} ports but replicas={replicas}: '
                         f'give one RAFT port per replica')
    out = []
    for p in ports:
        if isinstance(p, str) and p.isdigit():
            p = int(p)
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise ValueError(f'{what}: {p!r} is not a port (an integer from 1 to 65535)')
        out.append(p)
    return out


def normalize_peer_ports(peer_ports: Any, replicas: int, shards: int) -> Optional[Dict[int, List[int]]]:
    """``peer_ports`` -> {shard: [port per replica]} (None when omitted); raises ValueError.

    With one shard a plain list is accepted; with shards, a dict shard -> list.
    """
    if peer_ports is None:
        return None
    if isinstance(peer_ports, dict):
        out: Dict[int, List[int]] = {}
        for key, ports in peer_ports.items():
            try:
                shard = int(key)
            except (TypeError, ValueError):
                raise ValueError(f'peer_ports keys are shard numbers, got {key!r}') from None
            if not 0 <= shard < shards:
                raise ValueError(f'peer_ports has shard {shard!r} but shards={shards} (shards are 0..{shards - 1})')
            out[shard] = _check_ports(ports, f'peer_ports[{key!r}]', replicas)
        missing = [s for s in range(shards) if s not in out]
        if missing:
            raise ValueError(f'peer_ports has no ports for shard(s) {missing}: with shards={shards} '
                             f'give a dict {{shard: [one port per replica]}} for every shard')
    elif isinstance(peer_ports, (list, tuple)):
        if shards > 1:
            raise ValueError(f'peer_ports={list(peer_ports)!r} is a list but shards={shards}: each shard is its '
                             f'own RAFT cluster, so give a dict {{0: [{replicas} ports], 1: [...], ...}}')
        out = {0: _check_ports(peer_ports, 'peer_ports', replicas)}
    else:
        raise ValueError(f'peer_ports={peer_ports!r}: a list of ports (one per replica), '
                         'or with shards a dict shard -> list')
    flat = [p for s in sorted(out) for p in out[s]]
    dup = sorted({p for p in flat if flat.count(p) > 1})
    if dup:
        raise ValueError(f'peer_ports uses port(s) {dup} more than once; every replica needs its own RAFT port')
    return out


def validate_stateful(dep: Any) -> None:
    """Check a ``stateful=True`` Deployment's arguments up front (Jina crashes here instead)."""
    if getattr(dep, 'external', False):
        raise ValueError('stateful=True cannot be used with external=True: orchestra-nb must run the '
                         'replicas itself to connect their RAFT nodes')
    if dep.replicas < MIN_REPLICAS:
        raise ValueError(
            f'stateful=True needs replicas >= {MIN_REPLICAS}, got replicas={dep.replicas}: RAFT commits a write '
            f'once a majority of replicas stores it, and with fewer than {MIN_REPLICAS} replicas losing one '
            f'stops every write. Use replicas=3 (or 5), or stateful=False for independent replicas.')
    dep._raft_peer_ports = normalize_peer_ports(dep.peer_ports, dep.replicas, dep.shards)
    dep._raft_conf, dep._raft_options = normalize_raft_configuration(dep.raft_configuration)
    pw = dep.raft_password
    if pw is not None and (not isinstance(pw, (str, bytes)) or not pw):
        raise ValueError('raft_password must be a non-empty string')
    require_cryptography()   # RAFT traffic is always encrypted: with raft_password, else the secret


def require_cryptography() -> None:
    """pysyncobj's encryption needs ``cryptography``; say how to get it."""
    try:
        import cryptography  # noqa: F401
        del cryptography   # only whether it imports matters
        from runtime.raft.syncobj import HAS_CRYPTO
    except ImportError:
        HAS_CRYPTO = False
    if not HAS_CRYPTO:
        raise ImportError("stateful=True needs the 'cryptography' package for pysyncobj's encryption of "
                          "RAFT traffic: pip install cryptography")


def raft_root(workspace: str, name: str) -> str:
    """Where a Deployment's RAFT files live: ``<workspace>/<name>/.raft``."""
    return os.path.join(workspace, name.replace('/', '_'), '.raft')


def _ephemeral_range() -> Tuple[int, int]:
    try:
        with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int, host: str = '127.0.0.1') -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as pysyncobj and gRPC bind: TIME_WAIT is fine
    try:
        s.bind((host if host not in ('', '0.0.0.0') else '127.0.0.1', port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _free_ports(n: int, host: str = '127.0.0.1', avoid: Sequence[int] = ()) -> List[int]:
    """``n`` distinct free ports, chosen below the OS's ephemeral range when there is room:
    a port picked now is bound a moment later by a child process, and ports the OS hands out
    (to ``bind(0)`` or outgoing connections) cannot take it in between."""
    import random
    low, _ = _ephemeral_range()
    ports: List[int] = []
    if low > 20000:
        candidates = random.sample(range(20000, low), min(low - 20000, 50 * n + 50))
        for p in candidates:
            if len(ports) == n:
                break
            if p not in avoid and p not in ports and _bindable(p, host):
                ports.append(p)
    socks = []
    try:   # fallback: let the OS pick
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host if host not in ('', '0.0.0.0') else '127.0.0.1', 0))
            socks.append(s)
            p = s.getsockname()[1]
            if p not in avoid and p not in ports:
                ports.append(p)
    finally:
        for s in socks:
            s.close()
    return ports


def _remembered_ports(root: str, replicas: int, shards: int) -> Optional[Dict[int, List[int]]]:
    try:
        with open(os.path.join(root, 'peers.json')) as f:
            saved = json.load(f)
        ports = {int(k): [int(p) for p in v] for k, v in saved['peer_ports'].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if sorted(ports) != list(range(shards)) or any(len(v) != replicas for v in ports.values()):
        log.warning('the RAFT ports remembered in %s are for another shape; choosing new ones', root)
        return None
    return ports


def place_raft(executor: Any) -> RaftLayout:
    """This machine's RAFT layout for a stateful Executor (its checked arguments,
    ``runtime.deployment.ExecutorArgs``), with the side effects, once, at start: a workspace if
    none was given, private folders, ports chosen (or remembered) and written to
    ``<workspace>/<name>/.raft/peers.json``."""
    workspace = executor.workspace
    if workspace is None:   # state must live somewhere: a folder for this Deployment object
        import tempfile
        workspace = tempfile.mkdtemp(prefix=f'orchestra-raft-{executor.name}-')
        log.warning('stateful Deployment %r has no workspace; using %s (pass workspace=... to keep '
                    'the state across Python sessions)', executor.name, workspace)
    root = raft_root(workspace, executor.name)
    private_dir(os.path.dirname(root))   # <workspace>/<name>: the replicas' folders go in there too
    private_dir(root)
    private_tree(root)   # files an earlier version left readable by others
    bind_host = executor.host or '127.0.0.1'
    replicas, shards = executor.replicas, executor.shards
    ports = executor.raft_peer_ports
    if ports is None:
        ports = _remembered_ports(root, replicas, shards) or {}
        for s in range(shards):   # remembered ports taken by something else meanwhile: new ones
            if s in ports and not all(_bindable(p, bind_host) for p in ports[s]):
                log.warning('RAFT ports %s remembered for %s shard %d are in use now; choosing new ones '
                            '(the journal is kept)', ports[s], executor.name, s)
                del ports[s]
        taken = [p for v in ports.values() for p in v]
        for s in range(shards):
            if s not in ports:
                ports[s] = _free_ports(replicas, bind_host, avoid=taken)
                taken += ports[s]
    _write_json(os.path.join(root, 'peers.json'),
                {'peer_ports': {str(s): p for s, p in ports.items()}, 'replicas': replicas, 'shards': shards})
    connect_host = '127.0.0.1' if bind_host in ('0.0.0.0', '::', '') else bind_host
    all_raft = [p for s in sorted(ports) for p in ports[s]]
    grpc_ports = _free_ports(shards * replicas, avoid=all_raft)
    return RaftLayout(workspace=workspace, peer_ports={s: tuple(p) for s, p in ports.items()},
                      grpc_ports=tuple(grpc_ports), bind_host=bind_host, connect_host=connect_host)


def plan_raft(executor: Any, plan: Any, layout: RaftLayout) -> None:
    """Give every replica of a stateful stage what its RAFT node needs (``ReplicaSpec.raft``), from
    ``layout``; pure: nothing is read from or written to this machine."""
    root = raft_root(layout.workspace, executor.name)
    plan.secret_file = os.path.join(root, SECRET_FILE_NAME)
    ports = layout.peer_ports
    position = 0
    for s, shard in enumerate(plan.shards):
        members = []
        for j, replica in enumerate(shard):
            spec = replace(replica.spec, workspace=layout.workspace)
            if not spec.port:
                spec = replace(spec, port=layout.grpc_ports[position])
            shard[j] = replica = replace(replica, spec=spec)
            position += 1
            members.append(RaftPeer(replica=replica.replica, name=replica.name,
                                    raft=f'{layout.connect_host}:{ports[s][replica.replica]}',
                                    grpc=f'127.0.0.1:{replica.spec.port}'))
        for j, (replica, me) in enumerate(zip(shard, members)):
            shard[j] = replace(replica, spec=replace(replica.spec, raft=RaftSpec(
                replica=replica.replica, shard=s, name=replica.name,
                address=me.raft, bind=f'{layout.bind_host}:{ports[s][replica.replica]}',
                peers=tuple(m for m in members if m is not me),
                dir=os.path.join(root, f'shard-{s}', f'rep-{replica.replica}'),
                conf=dict(executor.raft_conf), options=dict(executor.raft_options),
                password=executor.raft_password,   # None: the Deployment's secret (ReplicaSpec.secret)
                read_consistency=executor.read_consistency, durability=executor.durability)))
