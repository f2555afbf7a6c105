"""RAFT-replicated state for ``stateful=True`` Deployments (pysyncobj underneath).

Each replica process of a stateful shard runs one pysyncobj node next to its
Executor. How a write to a ``@write`` endpoint travels (replica R receives a
request of 100 documents):

1. R stores the request body -- the *payload* -- in its workspace (appended to a
   segment file by a writer thread) and pushes it to its peers over gRPC (``Control``
   op ``put_payloads``: one call in flight per peer, bodies queued meanwhile go together).
2. A small *record* ``(request id, endpoint, parameters, size, digest, origin replica)``
   is proposed through RAFT: by the leader, whose push carried it, once the payload is
   stored there too (R + leader: a majority); by R itself when R leads (after a peer
   stored the payload) or when the leader's proposal failed. Records proposed while
   earlier ones are in flight travel together in one log entry (group commit).
3. Once committed, every replica applies the entry in log order on its
   Executor's thread: it takes the payload from its store (or fetches it from a
   peer, checking the digest) and calls the ``@write`` method. R answers the
   client after its own apply.

Bulk documents never ride in pysyncobj's log: measured here, pysyncobj carries
~1 KB entries at ~1,500 writes/s but 50 KB entries at 2-20 writes/s, with stalls.
Bodies up to ``INLINE_PAYLOAD_BYTES`` (2 KB: a few small documents) do ride inside
their record, saving the push round trip for small writes.

**Persistence.** The replica's RAFT folder (``<workspace>/<name>/.raft/shard-S/rep-R``)
holds pysyncobj's journal, its compaction dump, ``snapshots/`` (the Executor's state
written by :meth:`Executor.snapshot`, with the log index it covers) and
``payloads/``. pysyncobj's log compaction writes a small dump that names the latest
Executor snapshot and lists the records since; a replica restarting (or too far
behind the leader) restores that snapshot -- fetching it from a peer when it has no
local copy -- then applies the records after it. A replica only reports ready once
a *barrier* record it proposed after starting has been applied locally, i.e. once it
has applied everything committed before it started.

**Reads.** Reads are served by one replica without consensus (eventual
consistency). ``consistency='strong'`` (per request, or ``Deployment(read_consistency=
'strong')``) first commits a barrier record and waits until it is applied locally.

**Security.** pysyncobj unpickles what its peers send: RAFT ports bind to
127.0.0.1 unless the Deployment's ``host`` says otherwise, and ``raft_password``
turns on pysyncobj's encryption and authentication. Replica-to-replica ``Control``
calls carry a random per-Deployment token. See ``docs/raft.md``.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import tarfile
import threading
import time
import traceback
import uuid
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from runtime import protocol

log = logging.getLogger('orchestra.raft')

#: RAFT needs a majority to elect a leader; 3 replicas survive one failure.
MIN_REPLICAS = 3

# ---------------------------------------------------------------------------------------
# raft_configuration: hashicorp-style names (what Jina's docs point to) -> pysyncobj
# ---------------------------------------------------------------------------------------
_DURATION = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$')
_UNITS = {'ms': 1e-3, 's': 1.0, 'm': 60.0, 'h': 3600.0}


def _duration(unit: float, unit_name: str) -> Callable[[str, Any], float]:
    """A converter: a number in ``unit_name`` or a Go-style duration string ('500ms', '2s')."""
    def convert(key: str, value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f'raft_configuration[{key!r}]={value!r}: expected a duration')
        if isinstance(value, (int, float)):
            seconds = float(value) * unit
        elif isinstance(value, str) and _DURATION.match(value):
            number, suffix = _DURATION.match(value).groups()
            seconds = float(number) * (_UNITS[suffix] if suffix else unit)
        else:
            raise ValueError(f'raft_configuration[{key!r}]={value!r}: expected a number of {unit_name} '
                             "or a duration string such as '500ms' or '2s'")
        if seconds <= 0:
            raise ValueError(f'raft_configuration[{key!r}]={value!r}: must be > 0')
        return seconds
    return convert


def _int(minimum: int) -> Callable[[str, Any], int]:
    def convert(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f'raft_configuration[{key!r}]={value!r}: must be an integer >= {minimum}')
        return value
    return convert


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f'raft_configuration[{key!r}]={value!r}: must be True or False')
    return value


def _choice(*allowed: Any) -> Callable[[str, Any], Any]:
    def convert(key: str, value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f'raft_configuration[{key!r}]={value!r}: allowed: {", ".join(map(repr, allowed))}')
        return value
    return convert


def _log_level(key: str, value: Any) -> str:
    level = str(value).upper()
    if level == 'WARN':
        level = 'WARNING'
    if level == 'TRACE':
        level = 'DEBUG'
    if level not in ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'):
        raise ValueError(f'raft_configuration[{key!r}]={value!r}: a log level such as "INFO" or "WARNING"')
    return level


def _keepalive(key: str, value: Any) -> Optional[tuple]:
    if value is None:
        return None
    if (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return tuple(value)
    raise ValueError(f'raft_configuration[{key!r}]={value!r}: (idle s, interval s, probes) or None')


#: hashicorp/raft names (as Jina's ``raft_configuration`` takes them) ->
#: (setting, converter, meaning). Settings starting with a lower-case letter and
#: containing an upper-case one are pysyncobj ``SyncObjConf`` fields; the others
#: are orchestra-nb's own.
HASHICORP_KEYS: Dict[str, Tuple[str, Callable, str]] = {
    'heartbeat_timeout': ('raftMinTimeout', _duration(1e-3, 'milliseconds'),
                          'ms without a leader before a follower starts an election '
                          '(lower bound of the randomised election timeout)'),
    'election_timeout': ('raftMaxTimeout', _duration(1e-3, 'milliseconds'),
                         'ms: upper bound of the randomised election timeout'),
    'commit_timeout': ('appendEntriesPeriod', _duration(1e-3, 'milliseconds'),
                       'ms between the leader\'s heartbeats (append_entries) when idle'),
    'leader_lease_timeout': ('leaderFallbackTimeout', _duration(1e-3, 'milliseconds'),
                             'ms a leader keeps leading without hearing from a majority'),
    'snapshot_interval': ('logCompactionMinTime', _duration(1.0, 'seconds'),
                          's between snapshots (log compaction) while there are new entries'),
    'snapshot_threshold': ('logCompactionMinEntries', _int(2),
                           'log entries that trigger a snapshot (log compaction)'),
    'batch_apply_ch': ('appendEntriesUseBatch', _bool,
                       'send log entries once per heartbeat (more throughput, +~0.1 s per write)'),
    'max_append_entries': ('max_append_entries', _int(1),
                           'write requests ordered together in one log entry (group commit)'),
    'trailing_logs': ('trailing_logs', _int(0),
                      'log entries whose payloads are kept after a snapshot for slow followers'),
    'log_level': ('log_level', _log_level, "level of pysyncobj's own logger"),
    'no_snapshot_restore_on_start': ('no_snapshot_restore_on_start', _bool,
                                     'do not call Executor.restore() at start (the Executor loads '
                                     'its own state); the log resumes after the snapshot'),
    'write_timeout': ('write_timeout', _duration(1.0, 'seconds'),
                      'orchestra-nb: s a write (or strong read) waits for commit and local apply'),
}
#: other spellings: Jina's flag name, and a few hashicorp names with no separate meaning here
_ALIASES = {'batch_applych': 'batch_apply_ch'}

#: pysyncobj's own SyncObjConf names a user may set (native units: seconds, bytes)
PYSYNCOBJ_KEYS: Dict[str, Callable] = {
    'raftMinTimeout': _duration(1.0, 'seconds'), 'raftMaxTimeout': _duration(1.0, 'seconds'),
    'appendEntriesPeriod': _duration(1.0, 'seconds'), 'connectionTimeout': _duration(1.0, 'seconds'),
    'connectionRetryTime': _duration(1.0, 'seconds'), 'leaderFallbackTimeout': _duration(1.0, 'seconds'),
    'autoTickPeriod': _duration(1.0, 'seconds'), 'logCompactionMinTime': _duration(1.0, 'seconds'),
    'dnsCacheTime': _duration(1.0, 'seconds'), 'dnsFailCacheTime': _duration(1.0, 'seconds'),
    'bindRetryTime': _duration(1.0, 'seconds'),
    'appendEntriesUseBatch': _bool, 'logCompactionSplit': _bool, 'commandsWaitLeader': _bool,
    'appendEntriesBatchSizeBytes': _int(1024), 'sendBufferSize': _int(1024), 'recvBufferSize': _int(1024),
    'logCompactionMinEntries': _int(2), 'logCompactionBatchSize': _int(1024),
    'commandsQueueSize': _int(1), 'maxBindRetries': _int(1),
    'pollerType': _choice('auto', 'select', 'poll'), 'preferredAddrType': _choice('ipv4', 'ipv6', None),
    'tcp_keepalive': _keepalive,
}

#: names orchestra-nb sets itself, with the reason
RESERVED_KEYS: Dict[str, str] = {
    'password': 'use Deployment(raft_password=...)',
    'journalFile': 'the journal lives in the workspace',
    'fullDumpFile': 'snapshots live in the workspace',
    'serializer': 'snapshots go through Executor.snapshot()/restore()',
    'deserializer': 'snapshots go through Executor.snapshot()/restore()',
    'serializeChecker': 'snapshots go through Executor.snapshot()/restore()',
    'onReady': 'used to gate readiness', 'onStateChanged': 'used for status()',
    'onCodeVersionChanged': 'not used', 'autoTick': 'always on',
    'useFork': 'always False: forking next to a gRPC server is unsafe',
    'bindAddress': 'derived from host and peer_ports',
    'dynamicMembershipChange': 'the members are fixed by replicas and peer_ports',
    'shutdown_on_remove': 'the members are fixed by replicas and peer_ports (no removal)',
}

#: pysyncobj settings unless the user overrides them (each measured or reasoned in docs/raft.md)
DEFAULT_PYSYNCOBJ: Dict[str, Any] = {
    'appendEntriesUseBatch': False,   # else every write waits for the 0.1 s heartbeat (~10 writes/s)
    'connectionRetryTime': 0.5,       # default 5 s: a restarted replica would wait that long for peers
    'leaderFallbackTimeout': 5.0,     # default 30 s
    'logCompactionMinEntries': 8192,  # hashicorp's snapshot_threshold
    'logCompactionMinTime': 120.0,    # hashicorp's snapshot_interval
    'bindRetryTime': 0.5, 'maxBindRetries': 10,   # a busy RAFT port fails within ~5 s, with its name
}
DEFAULT_OPTIONS: Dict[str, Any] = {
    'max_append_entries': 64, 'trailing_logs': 1024, 'log_level': 'WARNING',
    'no_snapshot_restore_on_start': False, 'write_timeout': 60.0,
}


def _snake(name: str) -> str:
    return re.sub(r'(?<=[a-z0-9])(?=[A-Z])', '_', name).lower()


def valid_raft_keys() -> List[str]:
    """Every key ``raft_configuration`` accepts (hashicorp-style and pysyncobj's)."""
    return sorted(HASHICORP_KEYS) + sorted(_ALIASES) + sorted(PYSYNCOBJ_KEYS)


def normalize_raft_configuration(cfg: Optional[Dict[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``raft_configuration`` -> (pysyncobj ``SyncObjConf`` kwargs, orchestra-nb options), defaults included.

    >>> conf, opts = normalize_raft_configuration({'heartbeat_timeout': 500, 'snapshot_threshold': 100})
    >>> conf['raftMinTimeout'], conf['logCompactionMinEntries']
    (0.5, 100)
    """
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ValueError(f'raft_configuration={cfg!r}: must be a dict of setting -> value')
    conf = dict(DEFAULT_PYSYNCOBJ)
    options = dict(DEFAULT_OPTIONS)
    seen: Dict[str, str] = {}
    for key, value in cfg.items():
        if not isinstance(key, str):
            raise ValueError(f'raft_configuration keys are strings, got {key!r}')
        if key in RESERVED_KEYS or _snake(key) in RESERVED_KEYS:
            raise ValueError(f'raft_configuration[{key!r}] is set by orchestra-nb: '
                             f'{RESERVED_KEYS.get(key) or RESERVED_KEYS[_snake(key)]}')
        if key in PYSYNCOBJ_KEYS:
            target, value = key, PYSYNCOBJ_KEYS[key](key, value)
        else:
            name = _ALIASES.get(key, key)
            if name not in HASHICORP_KEYS:
                name = _ALIASES.get(_snake(key), _snake(key))   # HeartbeatTimeout -> heartbeat_timeout
            if name not in HASHICORP_KEYS:
                import difflib
                close = difflib.get_close_matches(key, valid_raft_keys(), n=1)
                hint = f'; did you mean {close[0]!r}?' if close else ''
                raise ValueError(f'raft_configuration has an unknown key {key!r}{hint}. Valid keys: '
                                 f'{", ".join(valid_raft_keys())} (see docs/raft.md)')
            target, convert, _ = HASHICORP_KEYS[name]
            value = convert(key, value)
        if target in seen:
            raise ValueError(f'raft_configuration sets {target} twice: {seen[target]!r} and {key!r}')
        seen[target] = key
        if target in DEFAULT_OPTIONS:
            options[target] = value
        else:
            conf[target] = value
    # hashicorp's heartbeat_timeout alone: keep pysyncobj's min < max, and its other invariants
    if 'raftMinTimeout' in seen and 'raftMaxTimeout' not in seen:
        conf['raftMaxTimeout'] = max(conf['raftMinTimeout'] * 2, conf.get('raftMaxTimeout', 1.4))
    if 'raftMaxTimeout' in seen and 'connectionTimeout' not in seen:
        conf['connectionTimeout'] = max(conf.get('connectionTimeout', 3.5), conf['raftMaxTimeout'])
    check_syncobj_conf(conf)
    return conf, options


def check_syncobj_conf(conf: Dict[str, Any]) -> None:
    """Build pysyncobj's ``SyncObjConf`` and run its checks; a broken invariant -> ValueError."""
    from pysyncobj import SyncObjConf
    c = SyncObjConf(**conf)
    rules = [
        (c.raftMinTimeout > c.appendEntriesPeriod * 3,
         'heartbeat_timeout (raftMinTimeout) must exceed 3 x commit_timeout (appendEntriesPeriod)'),
        (c.raftMaxTimeout > c.raftMinTimeout,
         'election_timeout (raftMaxTimeout) must exceed heartbeat_timeout (raftMinTimeout)'),
        (c.leaderFallbackTimeout > c.appendEntriesPeriod,
         'leader_lease_timeout (leaderFallbackTimeout) must exceed commit_timeout (appendEntriesPeriod)'),
        (c.connectionTimeout >= c.raftMaxTimeout,
         'connectionTimeout must be >= election_timeout (raftMaxTimeout)'),
    ]
    for ok, why in rules:
        if not ok:
            raise ValueError(f'raft_configuration: {why} (got raftMinTimeout={c.raftMinTimeout}, '
                             f'raftMaxTimeout={c.raftMaxTimeout}, appendEntriesPeriod={c.appendEntriesPeriod}, '
                             f'leaderFallbackTimeout={c.leaderFallbackTimeout}, '
                             f'connectionTimeout={c.connectionTimeout})')
    try:
        c.validate()
    except AssertionError:
        raise ValueError(f'raft_configuration: pysyncobj rejects these settings: '
                         f'{ {k: v for k, v in conf.items()} }') from None


# ---------------------------------------------------------------------------------------
# Deployment hooks: validation and the per-replica plan
# ---------------------------------------------------------------------------------------
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
    if pw is not None:
        if not isinstance(pw, (str, bytes)) or not pw:
            raise ValueError('raft_password must be a non-empty string')
        require_cryptography()


def require_cryptography() -> None:
    """pysyncobj's encryption needs ``cryptography``; say how to get it."""
    try:
        import cryptography  # noqa: F401
        from pysyncobj.encryptor import HAS_CRYPTO
    except ImportError:
        HAS_CRYPTO = False
    if not HAS_CRYPTO:
        raise ImportError("raft_password needs the 'cryptography' package for pysyncobj's encryption: "
                          "pip install 'orchestra-nb[raft-password]' (or pip install cryptography)")


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


def plan_stateful(dep: Any, plan: Any) -> None:
    """Give every replica of a stateful Deployment what its RAFT node needs (in ``config['raft']``)."""
    if dep.workspace is None:   # state must live somewhere: a folder for this Deployment object
        import tempfile
        dep.workspace = tempfile.mkdtemp(prefix=f'orchestra-raft-{dep.name}-')
        log.warning('stateful Deployment %r has no workspace; using %s (pass workspace=... to keep '
                    'the state across Python sessions)', dep.name, dep.workspace)
        for r in plan.replicas:
            ra = r.config.get('runtime_args')
            if isinstance(ra, dict):
                ra['workspace'] = dep.workspace
    root = raft_root(dep.workspace, dep.name)
    os.makedirs(root, exist_ok=True)
    bind_host = dep.host or '127.0.0.1'
    ports = dep._raft_peer_ports
    if ports is None:
        ports = _remembered_ports(root, dep.replicas, dep.shards) or {}
        for s in range(dep.shards):   # remembered ports taken by something else meanwhile: new ones
            if s in ports and not all(_bindable(p, bind_host) for p in ports[s]):
                log.warning('RAFT ports %s remembered for %s shard %d are in use now; choosing new ones '
                            '(the journal is kept)', ports[s], dep.name, s)
                del ports[s]
        taken = [p for v in ports.values() for p in v]
        for s in range(dep.shards):
            if s not in ports:
                ports[s] = _free_ports(dep.replicas, bind_host, avoid=taken)
                taken += ports[s]
    _write_json(os.path.join(root, 'peers.json'),
                {'peer_ports': {str(s): p for s, p in ports.items()}, 'replicas': dep.replicas,
                 'shards': dep.shards})
    dep.peer_ports_used = {s: list(p) for s, p in ports.items()}
    connect_host = '127.0.0.1' if bind_host in ('0.0.0.0', '::', '') else bind_host
    token = secrets.token_hex(16)
    all_raft = [p for s in sorted(ports) for p in ports[s]]
    grpc_ports = _free_ports(len(plan.replicas), avoid=all_raft)
    k = 0
    for s, shard in enumerate(plan.shards):
        members = []
        for r in shard:
            if not r.config.get('port'):
                r.config['port'] = grpc_ports[k]
            k += 1
            members.append({'replica': r.replica, 'name': r.name,
                            'raft': f'{connect_host}:{ports[s][r.replica]}',
                            'grpc': f'127.0.0.1:{r.config["port"]}'})
        for r, me in zip(shard, members):
            r.config['stateful'] = True
            r.config['raft'] = {
                'replica': r.replica, 'shard': s, 'name': r.name,
                'self': me['raft'], 'bind': f'{bind_host}:{ports[s][r.replica]}',
                'peers': [m for m in members if m is not me],
                'dir': os.path.join(root, f'shard-{s}', f'rep-{r.replica}'),
                'conf': dict(dep._raft_conf), 'options': dict(dep._raft_options),
                'password': dep.raft_password, 'token': token,
                'read_consistency': dep.read_consistency,
            }


def _write_json(path: str, obj: Any) -> None:
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# Payloads and snapshots on disk
# ---------------------------------------------------------------------------------------
_RID = re.compile(r'^[0-9a-f]{32}$')


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _check_rid(rid: Any) -> str:
    if not isinstance(rid, str) or not _RID.match(rid):
        raise ValueError(f'not a request id: {rid!r}')
    return rid


_SEG_HEADER = struct.Struct('<2s16s16sI')      # b'PL', request id, digest, body length
_MARK = struct.Struct('<16sQ')                   # request id, log index that applied it


class PayloadStore:
    """Request bodies by request id, appended to segment files (``seg-<n>.log``).

    One file per body cost ~300 us of CPU each on this machine (ext4: create, write,
    rename, later unlink); appending to a segment costs ~20 us. Bodies are written by
    one writer thread, in batches (:meth:`put_nowait`; ``on_written`` is called with the
    request ids of each batch once it is in the page cache), or right away by :meth:`put`.
    ``applied.log`` records which log index applied which body (so :meth:`gc` can drop
    bodies a snapshot covers, across restarts). A segment file is deleted once every body
    in it is dropped. Bodies not yet applied are also kept in memory (up to ``cache_bytes``),
    with the digest they were stored under (so the applier need not hash them again).

    Files are written without fsync: a process crash loses nothing written before it
    (the page cache survives it); a power cut can lose the last writes of a replica.
    A body cut short by a crash is detected (length) when the segment is read at start.
    """

    SEGMENT_BYTES = 32 * 1024 * 1024

    def __init__(self, root: str, cache_bytes: int = 512 * 1024 * 1024,
                 on_written: Optional[Callable[[List[str], Optional[BaseException]], None]] = None):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.on_written = on_written
        self._lock = threading.Lock()        # the index, the cache, the pending bodies
        self._write_lock = threading.Lock()  # the active segment
        self._index: Dict[str, Tuple[int, int, int, str, float]] = {}   # rid -> seg, offset, size, digest, time
        self._live: Dict[int, int] = collections.Counter()             # seg -> bodies indexed in it
        self._applied: Dict[str, int] = {}
        self._legacy: Dict[str, str] = {}    # one-file-per-body payloads of older versions
        self._cache: Dict[str, Tuple[bytes, str]] = {}
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._pending: Dict[str, Tuple[bytes, str]] = {}
        self._queue: Deque[str] = collections.deque()
        self._cv = threading.Condition(self._lock)
        self._writer: Optional[threading.Thread] = None
        self._closed = False
        segs = []
        for name in os.listdir(root):
            if name.endswith('.tmp'):
                _unlink(os.path.join(root, name))
            elif name.startswith('seg-') and name.endswith('.log'):
                segs.append(int(name[4:-4]))
            elif name.startswith('p-'):
                self._legacy[name[2:]] = name
            elif name.startswith('a-'):
                rid = name.rsplit('-', 1)[1]
                self._legacy[rid] = name
                self._applied[rid] = int(name[2:14])
        for seg in sorted(segs):
            self._scan(seg)
        self._read_marks()
        self._seg = max(segs, default=0) + 1   # never append after what a crash may have cut short
        self._seg_size = 0
        self._fd: Optional[int] = None
        self._marks_fd: Optional[int] = None
        self._marks = 0

    # -- files -----------------------------------------------------------------------------
    def _path(self, seg: int) -> str:
        return os.path.join(self.root, f'seg-{seg:08d}.log')

    def _scan(self, seg: int) -> None:
        path = self._path(seg)
        try:
            size = os.path.getsize(path)
            mtime = os.path.getmtime(path)
            with open(path, 'rb') as f:
                offset = 0
                while offset + _SEG_HEADER.size <= size:
                    f.seek(offset)
                    magic, rid, digest, n = _SEG_HEADER.unpack(f.read(_SEG_HEADER.size))
                    if magic != b'PL' or offset + _SEG_HEADER.size + n > size:
                        break   # cut short by a crash: the rest is ignored
                    self._index.setdefault(rid.hex(), (seg, offset + _SEG_HEADER.size, n, digest.hex(), mtime))
                    offset += _SEG_HEADER.size + n
        except OSError:
            return
        self._live[seg] = sum(1 for v in self._index.values() if v[0] == seg)
        if not self._live[seg]:
            del self._live[seg]
            _unlink(path)

    def _read_marks(self) -> None:
        try:
            with open(os.path.join(self.root, 'applied.log'), 'rb') as f:
                data = f.read()
        except OSError:
            return
        for off in range(0, len(data) - _MARK.size + 1, _MARK.size):
            rid, index = _MARK.unpack_from(data, off)
            self._applied[rid.hex()] = index

    def _append(self, items: List[Tuple[str, bytes, str]]) -> None:
        """Append bodies to the active segment (the writer thread, or put())."""
        with self._write_lock:
            if self._fd is None or self._seg_size >= self.SEGMENT_BYTES:
                if self._fd is not None:
                    os.close(self._fd)
                    with self._lock:
                        if not self._live.get(self._seg):
                            _unlink(self._path(self._seg))
                    self._seg += 1
                self._fd = os.open(self._path(self._seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._seg_size = 0
            seg, base = self._seg, self._seg_size
            parts, where, offset = [], [], base
            for rid, data, digest in items:
                parts.append(_SEG_HEADER.pack(b'PL', bytes.fromhex(rid), bytes.fromhex(digest), len(data)))
                parts.append(data)
                offset += _SEG_HEADER.size
                where.append((rid, offset, len(data), digest))
                offset += len(data)
            buf = b''.join(parts)
            view = memoryview(buf)
            while view:
                view = view[os.write(self._fd, view):]
            self._seg_size = offset
        now = time.time()
        with self._lock:
            for rid, off, n, digest in where:
                if rid not in self._index:
                    self._index[rid] = (seg, off, n, digest, now)
                    self._live[seg] += 1

    def _writer_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                rids = list(self._queue)
                self._queue.clear()
                items = [(rid, *self._pending[rid]) for rid in rids if rid in self._pending]
            error: Optional[BaseException] = None
            try:
                if items:
                    self._append(items)
            except Exception as e:
                error = e
                log.exception('writing %d request bodies to %s failed', len(items), self.root)
            with self._lock:
                for rid, _, _ in items:
                    self._pending.pop(rid, None)
                    if error is not None:
                        hit = self._cache.pop(rid, None)
                        if hit is not None:
                            self._cache_bytes -= len(hit[0])
            if self.on_written is not None:
                try:
                    self.on_written(rids, error)
                except Exception:
                    pass

    # -- the API ---------------------------------------------------------------------------
    def has(self, rid: str) -> bool:
        return rid in self._index or rid in self._pending or rid in self._legacy

    def _remember(self, rid: str, data: bytes, digest: str) -> None:
        if rid not in self._cache and self._cache_bytes + len(data) <= self._cache_limit:
            self._cache[rid] = (data, digest)
            self._cache_bytes += len(data)

    def put_nowait(self, rid: str, data: bytes, digest: str) -> bool:
        """Keep a body in memory and queue it for the writer thread; False if already stored or queued."""
        _check_rid(rid)
        with self._cv:
            if rid in self._index or rid in self._pending or rid in self._legacy:
                return False
            self._pending[rid] = (data, digest)
            self._remember(rid, data, digest)
            self._queue.append(rid)
            if self._writer is None:
                self._writer = threading.Thread(target=self._writer_loop, daemon=True, name='payload-writer')
                self._writer.start()
            self._cv.notify()
        return True

    def pending(self, rid: str) -> bool:
        return rid in self._pending

    def put(self, rid: str, data: bytes, digest: Optional[str] = None) -> None:
        """Store a body in the workspace now (page cache); keep it in memory until applied."""
        _check_rid(rid)
        digest = digest or _digest(data)
        with self._lock:
            if rid in self._index or rid in self._pending or rid in self._legacy:
                return
            self._remember(rid, data, digest)
        self._append([(rid, data, digest)])

    def cached(self, rid: str) -> Optional[bytes]:
        hit = self._cache.get(rid)
        return hit[0] if hit is not None else None

    def cached_with_digest(self, rid: str) -> Optional[Tuple[bytes, str]]:
        """(body, the digest it was stored under) while in memory, else None."""
        return self._cache.get(rid)

    def get(self, rid: str) -> Optional[bytes]:
        hit = self._cache.get(rid) or self._pending.get(rid)
        if hit is not None:
            return hit[0]
        where = self._index.get(rid)
        try:
            if where is not None:
                with open(self._path(where[0]), 'rb') as f:
                    f.seek(where[1])
                    data = f.read(where[2])
                return data if len(data) == where[2] else None
            name = self._legacy.get(rid)
            if name is not None:
                with open(os.path.join(self.root, name), 'rb') as f:
                    return f.read()
        except FileNotFoundError:
            return None
        return None

    def applied(self, rid: str, index: int) -> None:
        """Record the log index that applied a body; drop it from memory."""
        with self._lock:
            hit = self._cache.pop(rid, None)
            if hit is not None:
                self._cache_bytes -= len(hit[0])
            if not (rid in self._index or rid in self._pending or rid in self._legacy):
                return
            self._applied[rid] = index
            if self._marks_fd is None:
                self._marks_fd = os.open(os.path.join(self.root, 'applied.log'),
                                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(self._marks_fd, _MARK.pack(bytes.fromhex(rid), index))
            self._marks += 1

    def discard(self, rid: str) -> None:
        """Forget one body (memory and index; its segment goes once nothing in it is left)."""
        with self._lock:
            self._drop(rid)

    def _drop(self, rid: str) -> None:   # with self._lock
        hit = self._cache.pop(rid, None)
        if hit is not None:
            self._cache_bytes -= len(hit[0])
        self._pending.pop(rid, None)
        self._applied.pop(rid, None)
        where = self._index.pop(rid, None)
        if where is not None:
            self._live[where[0]] -= 1
            if self._live[where[0]] <= 0:
                del self._live[where[0]]
                if where[0] != self._seg:
                    _unlink(self._path(where[0]))
        name = self._legacy.pop(rid, None)
        if name is not None:
            _unlink(os.path.join(self.root, name))

    def gc(self, upto_index: int, orphan_age: float = 600.0) -> int:
        """Drop bodies applied at or before ``upto_index``, and unapplied ones older than ``orphan_age`` s."""
        now = time.time()
        removed = 0
        with self._lock:
            for rid in list(self._index) + list(self._legacy):
                index = self._applied.get(rid)
                if index is not None:
                    drop = index <= upto_index
                elif rid in self._index:
                    drop = now - self._index[rid][4] > orphan_age
                else:
                    try:
                        drop = now - os.path.getmtime(os.path.join(self.root, self._legacy[rid])) > orphan_age
                    except OSError:
                        drop = True
                if drop:
                    self._drop(rid)
                    removed += 1
            for name in os.listdir(self.root):   # segments with nothing left in them
                if name.startswith('seg-') and name.endswith('.log'):
                    seg = int(name[4:-4])
                    if seg != self._seg and not self._live.get(seg):
                        _unlink(os.path.join(self.root, name))
            if self._marks > 4 * (len(self._index) + len(self._legacy)) + 1024:   # keep applied.log small
                keep = b''.join(_MARK.pack(bytes.fromhex(r), i) for r, i in self._applied.items()
                                if r in self._index or r in self._legacy)
                path = os.path.join(self.root, 'applied.log')
                tmp = f'{path}.{uuid.uuid4().hex[:8]}.tmp'
                with open(tmp, 'wb') as f:
                    f.write(keep)
                if self._marks_fd is not None:
                    os.close(self._marks_fd)
                    self._marks_fd = None
                os.replace(tmp, path)
                self._marks = len(keep) // _MARK.size
        return removed

    def close(self) -> None:
        """Write what is queued, stop the writer thread, close the files."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._writer is not None:
            self._writer.join(5.0)
        with self._write_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        with self._lock:
            if self._marks_fd is not None:
                os.close(self._marks_fd)
                self._marks_fd = None

    def __len__(self) -> int:
        return len(self._index) + len(self._legacy) + sum(1 for r in self._pending if r not in self._index)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class SnapshotStore:
    """``snap-<index>/`` folders: ``state`` (written by Executor.snapshot) and ``meta.json``."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):   # leftovers of a snapshot or transfer cut short
            if name.startswith(('tmp-', 'incoming-')) or name.endswith('.tmp'):
                path = os.path.join(root, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _unlink(path)

    def list(self) -> List[Tuple[int, str]]:
        """Complete snapshots, oldest first."""
        out = []
        for name in os.listdir(self.root):
            if name.startswith('snap-') and os.path.isdir(os.path.join(self.root, name)):
                path = os.path.join(self.root, name)
                if os.path.exists(os.path.join(path, 'meta.json')):
                    out.append((int(name[5:]), path))
        return sorted(out)

    def latest(self) -> Optional[Tuple[int, str]]:
        snaps = self.list()
        return snaps[-1] if snaps else None

    def new_tmp(self) -> str:
        path = os.path.join(self.root, f'tmp-{uuid.uuid4().hex[:12]}')
        os.makedirs(path)
        return path

    def commit(self, tmp: str, index: int) -> str:
        final = os.path.join(self.root, f'snap-{index:012d}')
        if os.path.exists(final):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return final

    def prune(self, keep: int = 2) -> None:
        snaps = self.list()
        for _, path in snaps[:-keep] if keep else snaps:
            shutil.rmtree(path, ignore_errors=True)
            _unlink(path + '.tar')

    def tar(self, index: int) -> str:
        """The snapshot as one uncompressed tar file (built once, for transfer to a peer)."""
        path = os.path.join(self.root, f'snap-{index:012d}')
        out = path + '.tar'
        if not os.path.exists(out):
            tmp = f'{out}.{uuid.uuid4().hex[:8]}.tmp'
            with tarfile.open(tmp, 'w') as t:
                t.add(path, arcname='snap')
            os.replace(tmp, out)
        return out

    def unpack(self, tar_path: str) -> Tuple[int, str]:
        """A transferred tar -> a local snapshot folder; returns (index, path)."""
        tmp = self.new_tmp()
        with tarfile.open(tar_path) as t:
            try:
                t.extractall(tmp, filter='data')   # no paths outside tmp, no devices or links out
            except TypeError:   # a Python without extraction filters
                t.extractall(tmp)
        inner = os.path.join(tmp, 'snap')
        with open(os.path.join(inner, 'meta.json')) as f:
            index = int(json.load(f)['index'])
        final = self.commit(inner, index)
        shutil.rmtree(tmp, ignore_errors=True)
        return index, final


# ---------------------------------------------------------------------------------------
# pysyncobj glue
# ---------------------------------------------------------------------------------------
from pysyncobj import SyncObj, SyncObjConf, replicated  # noqa: E402

_ROLES = {0: 'follower', 1: 'candidate', 2: 'leader'}
_SUCCESS = 0
_TIMED_OUT = -1
_REFUSED = -2
#: pysyncobj's FAIL_REASON codes, and ours, by name (for logs)
_OUTCOMES = {0: 'committed', 1: 'queue full', 2: 'no leader', 3: 'discarded', 4: 'not leader',
             5: 'leader changed', 6: 'denied', 7: 'unknown outcome', -1: 'no answer', -2: 'refused'}


class _RaftNode(SyncObj):
    """The pysyncobj object: its only replicated method appends a batch of records."""

    def __init__(self, consensus: 'Consensus', self_address: str, others: List[str], conf: SyncObjConf):
        self._consensus = consensus
        super().__init__(self_address, others, conf)

    @replicated
    def append_records(self, records):
        # pysyncobj applies entries one by one; this entry's index is the next one
        self._consensus._on_commit(self.raftLastApplied + 1, records)


class _DivergedFilter(logging.Filter):
    """pysyncobj logs CRITICAL "state machine may have diverged" whenever a follower
    truncates and re-appends entries the leader re-sent -- routine under load, and
    harmless here (entries are applied once, by index). Count them at DEBUG instead."""

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if 'may have diverged' in str(record.msg):
            _DivergedFilter.count += 1
            log.debug('pysyncobj re-appended already applied entries (%d so far)', _DivergedFilter.count)
            return False
        return True


def _quiet_pysyncobj(level: str) -> None:
    lg = logging.getLogger('pysyncobj')
    lg.setLevel(level)
    sync_logger = logging.getLogger('pysyncobj.syncobj')
    if not any(isinstance(f, _DivergedFilter) for f in sync_logger.filters):
        sync_logger.addFilter(_DivergedFilter())


#: request bodies up to this size ride inside the RAFT record (pysyncobj carries ~1 KB entries
#: at thousands per second); larger ones move between replicas over gRPC
INLINE_PAYLOAD_BYTES = 2048


def _inline(rec: Sequence[Any]) -> Optional[bytes]:
    """The body a record carries itself (small writes), or None."""
    return rec[6] if len(rec) > 6 and rec[6] is not None else None


def _record_to_json(rec: Sequence[Any]) -> List[Any]:
    out = list(rec[:6])
    if _inline(rec) is not None:
        out.append(base64.b64encode(rec[6]).decode())
    return out


def _record_from_json(obj: List[Any]) -> tuple:
    rec = tuple(obj[:6])
    return rec + (base64.b64decode(obj[6]),) if len(obj) > 6 and obj[6] is not None else rec


def _entry_to_json(entry: Tuple[bytes, int, int]) -> List[Any]:
    return [base64.b64encode(bytes(entry[0])).decode(), int(entry[1]), int(entry[2])]


def _entry_from_json(obj: List[Any]) -> Tuple[bytes, int, int]:
    return (base64.b64decode(obj[0]), int(obj[1]), int(obj[2]))


class _Peer:
    """Another replica of the shard: its RAFT address and its gRPC address."""

    def __init__(self, replica: int, name: str, raft: str, grpc: str):
        self.replica, self.name, self.raft, self.grpc_address = replica, name, raft, grpc
        self._channel = None
        self._stub = None

    def stub(self):
        if self._stub is None:
            import grpc
            # reconnect fast to a restarted peer (gRPC's default backoff grows to 2 minutes)
            options = protocol.GRPC_OPTIONS + [('grpc.initial_reconnect_backoff_ms', 100),
                                               ('grpc.min_reconnect_backoff_ms', 100),
                                               ('grpc.max_reconnect_backoff_ms', 1000)]
            self._channel = grpc.aio.insecure_channel(self.grpc_address, options=options)
            self._stub = self._channel.unary_unary(protocol.CONTROL)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None


class _Proposer:
    """Group commit: records wait while ``max_in_flight`` entries are being committed,
    then go together in one log entry (at most ``max_batch`` records, ~``max_bytes``)."""

    def __init__(self, consensus: 'Consensus', max_batch: int, max_in_flight: int = 2,
                 max_bytes: int = 32 * 1024, proposal_timeout: float = 5.0):
        self.c = consensus
        self.max_batch, self.max_in_flight, self.max_bytes = max_batch, max_in_flight, max_bytes
        self.proposal_timeout = proposal_timeout
        self.in_flight = 0
        self.entries = 0
        self.records = 0
        self._queue: Deque[Tuple[tuple, asyncio.Future]] = collections.deque()

    def submit(self, record: tuple) -> asyncio.Future:
        """Propose ``record``; the future gets pysyncobj's outcome (0: committed)."""
        fut = self.c.loop.create_future()
        self._queue.append((record, fut))
        self._kick()
        return fut

    def _kick(self) -> None:
        while self.in_flight < self.max_in_flight and self._queue:
            batch: List[Tuple[tuple, asyncio.Future]] = []
            size = 0
            while self._queue and len(batch) < self.max_batch:
                record, fut = self._queue[0]
                if fut.done():
                    self._queue.popleft()
                    continue
                est = 96 + len(record[2] or '') + len(record[1] or '') + len(_inline(record) or b'')
                if batch and size + est > self.max_bytes:
                    break
                self._queue.popleft()
                batch.append((record, fut))
                size += est
            if not batch:
                return
            self._send(batch)

    def _send(self, batch: List[Tuple[tuple, asyncio.Future]]) -> None:
        loop = self.c.loop
        state = {'done': False}
        self.in_flight += 1
        self.entries += 1
        self.records += len(batch)

        def finish(err: int) -> None:
            if state['done']:
                return
            state['done'] = True
            self.in_flight -= 1
            timer.cancel()
            for _, f in batch:
                if not f.done():
                    f.set_result(err)
            self._kick()

        def callback(result: Any, err: int) -> None:   # on pysyncobj's thread
            try:
                loop.call_soon_threadsafe(finish, err)
            except RuntimeError:
                pass   # the loop is closed: shutting down

        timer = loop.call_later(self.proposal_timeout, finish, _TIMED_OUT)
        try:
            self.c.node.append_records([r for r, _ in batch], callback=callback)
        except Exception as e:   # queue full, node destroyed
            log.warning('RAFT proposal refused: %s: %s', type(e).__name__, e)
            finish(_REFUSED)


class _Pusher:
    """Payload pushes to one peer: one call in flight; bodies queued meanwhile go together
    in the next call (``put_payloads``), so a busy replica makes few, larger calls."""

    MAX_BYTES = 8 * 1024 * 1024

    def __init__(self, consensus: 'Consensus', peer: _Peer):
        self.c, self.peer = consensus, peer
        self._queue: Deque[Tuple[str, str, bytes, float, asyncio.Future, Optional[tuple]]] = collections.deque()
        self._task: Optional[asyncio.Task] = None
        self.calls = 0

    def push(self, rid: str, digest: str, body: bytes, deadline: float,
             record: Optional[tuple] = None) -> 'asyncio.Future[Tuple[bool, str, Optional[int]]]':
        """-> (stored, why not, outcome of the peer's proposal of ``record`` or None)."""
        fut = self.c.loop.create_future()
        self._queue.append((rid, digest, body, deadline, fut, record))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
            self.c._background.add(self._task)
            self._task.add_done_callback(self.c._background.discard)
        return fut

    async def _run(self) -> None:
        while self._queue:
            batch, size = [], 0
            while self._queue and (not batch or size + len(self._queue[0][2]) <= self.MAX_BYTES):
                item = self._queue.popleft()
                if item[4].done():
                    continue
                batch.append(item)
                size += len(item[2])
            if not batch:
                continue
            left = min(it[3] for it in batch) - self.c.loop.time()
            try:
                if left <= 0:
                    raise TimeoutError('deadline passed')
                header: Dict[str, Any] = {'op': 'put_payloads', 'items': [[it[0], it[1], len(it[2])] for it in batch]}
                if any(it[5] is not None for it in batch):   # the peer leads: it proposes these records
                    header['records'] = [None if it[5] is None else list(it[5]) for it in batch]
                h, _ = await self.c._call_peer(self.peer, header, b''.join(it[2] for it in batch),
                                               min(max(left, 0.1), 30.0))
                self.calls += 1
                if h.get('ok'):
                    errors = h.get('errors') or [None] * len(batch)
                    proposed = h.get('outcomes') or [None] * len(batch)
                    outcomes = [(e is None, '' if e is None else f'{self.peer.name}: {e}', p)
                                for e, p in zip(errors, proposed)]
                else:
                    why = f'{self.peer.name}: {h.get("error", {}).get("message")}'
                    outcomes = [(False, why, None)] * len(batch)
            except asyncio.CancelledError:
                for it in batch:
                    if not it[4].done():
                        it[4].set_result((False, f'{self.peer.name}: cancelled', None))
                raise
            except Exception as e:
                outcomes = [(False, f'{self.peer.name}: {_short(e)}', None)] * len(batch)
            for it, outcome in zip(batch, outcomes):
                if not it[4].done():
                    it[4].set_result(outcome)


class RaftNotReady(RuntimeError):
    """The replica's RAFT node is not (yet) able to serve this request."""


# ---------------------------------------------------------------------------------------
# The replicated state machine around one Executor
# ---------------------------------------------------------------------------------------
class Consensus:
    """One replica's RAFT node, payload store, snapshots and applier; see the module docstring.

    Created by :func:`attach_consensus`; the worker calls :meth:`write` for ``@write``
    endpoints, :meth:`before_read` before reads, :meth:`control` for peer requests,
    :meth:`status` for ``describe()`` and :meth:`close` on shutdown.
    """

    SEEN_LIMIT = 50_000          # request ids remembered to drop retried duplicates
    SNAPSHOT_CHUNK = 8 * 1024 * 1024

    def __init__(self, server: Any, cfg: Dict[str, Any]):
        self.server = server
        self.cfg = cfg
        self.name: str = cfg.get('name') or server.name
        self.replica: int = int(cfg['replica'])
        self.options = dict(DEFAULT_OPTIONS, **(cfg.get('options') or {}))
        self.token: str = cfg.get('token') or ''
        self.default_consistency: str = cfg.get('read_consistency') or 'eventual'
        self.dir: str = cfg['dir']
        os.makedirs(self.dir, exist_ok=True)
        self._lock_dir()   # before the stores tidy up leftovers in the folder
        self.payloads = PayloadStore(os.path.join(self.dir, 'payloads'), on_written=self._on_written)
        self._disk: Dict[str, asyncio.Future] = {}   # bodies queued for the writer thread
        self.snapshots = SnapshotStore(os.path.join(self.dir, 'snapshots'))
        self.peers = [_Peer(p['replica'], p['name'], p['raft'], p['grpc']) for p in cfg['peers']]
        self._pushers = {p.name: _Pusher(self, p) for p in self.peers}
        self._names = {p.raft: p.name for p in self.peers}
        self._names[cfg['self']] = self.name
        self.node: Optional[_RaftNode] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.role = 'follower'
        # applier state (the loop thread)
        self.applied_index = 0
        self.snapshot_index = 0
        self._actions: Deque[tuple] = collections.deque()
        self._actions_event = asyncio.Event()
        self._waiters: Dict[str, asyncio.Future] = {}
        self._arrivals: Dict[str, asyncio.Event] = {}   # payloads the applier waits for
        self._snapshot_wanted = False
        self._snapshot_failures = 0
        self._applying = False
        # executor-thread state (captured by snapshots)
        self.writes_applied = 0
        self._exec_index = 0
        self._seen: Deque[str] = collections.deque()
        self._seen_set: set = set()
        # records since the latest snapshot, for pysyncobj's compaction dump (tick thread + loop)
        self._records: Dict[int, list] = {}
        self._records_lock = threading.Lock()
        self._last_marked = 0
        self._started = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False
        self._tasks: List[asyncio.Task] = []
        self._background: set = set()
        self._proposer: Optional[_Proposer] = None
        self.ready_seconds: Optional[float] = None
        self.fetched_payloads = 0
        self.installed_snapshots = 0

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Restore the newest local snapshot, start pysyncobj, then wait until caught up."""
        t0 = time.monotonic()
        self.loop = asyncio.get_running_loop()
        _quiet_pysyncobj(self.options['log_level'])
        latest = self.snapshots.latest()
        if latest is not None:
            await self.loop.run_in_executor(self.server.pool, self._restore_local, latest)
        self._proposer = _Proposer(self, self.options['max_append_entries'])
        self._tasks.append(asyncio.ensure_future(self._applier()))
        self.node = self._make_node()
        self.node.addOnTickCallback(self._on_tick)
        try:
            await asyncio.to_thread(self.node.waitBinded)
        except Exception:
            raise OSError(f'{self.name}: cannot listen for RAFT on {self.cfg["bind"]}: the port is in use or '
                          'not available (choose other peer_ports, or omit them to let orchestra-nb pick)') from None
        self._started.set()
        log.info('%s: RAFT node on %s, peers %s; restored snapshot index %d; catching up',
                 self.name, self.cfg['self'], ', '.join(p.raft for p in self.peers), self.snapshot_index)
        progress = asyncio.ensure_future(self._report_progress(t0))
        try:
            await self._commit(self._barrier(), None, 'the readiness barrier')
        finally:
            progress.cancel()
        self.ready_seconds = time.monotonic() - t0
        self._ready.set()
        log.info('%s: RAFT ready in %.2f s (%s, term %s, applied index %d, %d writes applied)', self.name,
                 self.ready_seconds, self.role, self.node.raftCurrentTerm, self.applied_index, self.writes_applied)

    def _lock_dir(self) -> None:
        """One process per RAFT folder (two Deployments on one workspace would corrupt it)."""
        import fcntl
        self._lock_file = open(os.path.join(self.dir, 'lock'), 'a+')
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.seek(0)
            other = self._lock_file.read().strip() or '?'
            self._lock_file.close()
            raise RuntimeError(f'{self.name}: the RAFT folder {self.dir} is in use by another running replica '
                               f'(pid {other}); is another Deployment with the same name and workspace '
                               'running? Stop it, or use another workspace.') from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def _make_node(self) -> _RaftNode:
        conf = SyncObjConf(**self.cfg['conf'],
                           password=self.cfg.get('password') or None,
                           journalFile=os.path.join(self.dir, 'journal.bin'),
                           fullDumpFile=os.path.join(self.dir, 'dump.json'),
                           serializer=self._serialize, deserializer=self._deserialize,
                           onStateChanged=self._on_state_changed,
                           useFork=False, autoTick=True, dynamicMembershipChange=False,
                           bindAddress=self.cfg['bind'])
        return _RaftNode(self, self.cfg['self'], [p.raft for p in self.peers], conf)

    async def _report_progress(self, t0: float) -> None:
        """Every 5 s while not ready: what we wait for (the log tail explains a start that times out)."""
        while True:
            await asyncio.sleep(5.0)
            st = self.status()
            up = [n for n, ok in st['peers'].items() if ok]
            why = ('no leader yet: a majority must be up and connected' if not st['leader']
                   else f'applying the log (applied index {st["applied_index"]}, commit index {st["commit_index"]})')
            log.warning('%s: not ready after %.0f s: %s; RAFT peers connected: %s of %d (%s); role %s, term %s',
                        self.name, time.monotonic() - t0, why, len(up), len(self.peers),
                        ', '.join(f'{p.name} at {p.raft}' for p in self.peers), st['role'], st['term'])

    async def close(self) -> None:
        """Stop applying, take a last snapshot if quick, stop the RAFT node."""
        self._closing = True
        for t in list(self._tasks) + list(self._background):
            t.cancel()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(RaftNotReady(f'{self.name} is shutting down'))
        if self.node is not None and self._ready.is_set() and self.applied_index > self.snapshot_index:
            try:   # a fresh snapshot makes the next start faster; the log covers us if it is cut short
                await asyncio.wait_for(self.loop.run_in_executor(
                    self.server.pool, self._snapshot_sync, self.applied_index), 1.0)
            except Exception:
                pass
        if self.node is not None:
            node, self.node = self.node, None
            node.destroy()
            thread = getattr(node, '_SyncObj__thread', None)
            if thread is not None:
                await asyncio.to_thread(thread.join, 2.0)
        for p in self.peers:
            try:
                await p.close()
            except Exception:
                pass
        await asyncio.to_thread(self.payloads.close)

    # -- the worker's hooks ------------------------------------------------------------------
    async def write(self, endpoint: str, parameters: dict, body: bytes,
                    request_id: Optional[str] = None) -> Tuple[Dict[str, Any], bytes]:
        """Order a ``@write`` request through RAFT; return its reply once applied here.

        ``request_id`` (32 hex digits, set by :class:`~runtime.client.Client`) makes a retried
        request idempotent: whichever copy commits first is applied, later ones are skipped.
        """
        await self._started.wait()
        if self._closing:
            raise RaftNotReady(f'{self.name} is shutting down')
        params = json.dumps(parameters or {}, sort_keys=True, separators=(',', ':'))
        if len(params) > 32 * 1024:
            raise ValueError(f'parameters of a write to {endpoint!r} are {len(params)} bytes as JSON; '
                             'stateful writes accept up to 32 KB of parameters (send data as documents)')
        timeout = self.options['write_timeout']
        t0 = self.loop.time()
        deadline = t0 + timeout
        rid = request_id if isinstance(request_id, str) and _RID.match(request_id) else uuid.uuid4().hex
        digest = _digest(body)
        delegate: Optional[Callable[[], Any]] = None
        if len(body) <= INLINE_PAYLOAD_BYTES:   # small: the log entry carries it (journaled by pysyncobj)
            record = (rid, endpoint, params, len(body), digest, self.replica, bytes(body))
        else:                                   # large: stored on a majority first, ordered by id
            record = (rid, endpoint, params, len(body), digest, self.replica)
            await self._store(rid, body, digest)   # in our workspace before any peer may propose it
            leader = self._leader_peer()
            pushes = {p.name: self._spawn(self._push(p, rid, digest, body, deadline,
                                                     record if p is leader else None)) for p in self.peers}
            if leader is None:   # we lead (or no leader yet): a majority holds it, then we propose
                await self._majority(pushes, deadline)
            else:                # the leader proposes it once stored there (R + leader: a majority)
                async def delegate() -> int:
                    ok, _, outcome = await pushes[leader.name]
                    if ok and outcome == _SUCCESS:
                        return _SUCCESS
                    await self._majority(pushes, deadline)   # else: stored on a majority, we propose
                    return _REFUSED if outcome is None else outcome
        t1 = self.loop.time()
        trace: List[Any] = []
        header, reply = await self._commit(record, max(0.1, deadline - t1), f'write to {endpoint!r}', trace,
                                           delegate if delegate is not None else None)
        took = self.loop.time() - t0
        if took > 2.0:   # say where the time went: the payload's majority, or the log
            log.warning('%s: slow write to %s: %.2f s (payload on a majority %.2f s, commit and apply %.2f s; '
                        'proposal outcomes %s; %s, leader %s)', self.name, endpoint, took, t1 - t0,
                        took - (t1 - t0), trace, self.role, self.status().get('leader'))
        return dict(header), reply

    async def before_read(self, header: Dict[str, Any]) -> None:
        """Reads wait until this replica has caught up; strong ones until it applied all committed."""
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), self.options['write_timeout'])
            except asyncio.TimeoutError:
                raise RaftNotReady(f'{self.name} has not caught up with the RAFT log within '
                                   f'{self.options["write_timeout"]:.0f} s: {json.dumps(self.status())}') from None
        consistency = header.get('consistency') or self.default_consistency
        if consistency == 'strong':
            await self.wait_applied_commit()
        elif consistency != 'eventual':
            raise ValueError(f"consistency={consistency!r}: allowed: 'eventual', 'strong'")

    async def wait_applied_commit(self) -> None:
        """Return once everything committed when called is applied here (a barrier through the log)."""
        await self._started.wait()
        await self._commit(self._barrier(), self.options['write_timeout'], 'a strong read')

    def status(self) -> Dict[str, Any]:
        """role, term, commit_index, applied_index, writes_applied, leader, ... (JSON-able)."""
        st: Dict[str, Any] = {
            'role': self.role, 'term': None, 'commit_index': None, 'applied_index': self.applied_index,
            'writes_applied': self.writes_applied, 'leader': None, 'leader_address': None,
            'ready': self._ready.is_set(), 'snapshot_index': self.snapshot_index,
            'address': self.cfg['self'], 'peers': {p.name: False for p in self.peers},
            'log_entries': None, 'payloads_stored': len(self.payloads),
            'payloads_fetched': self.fetched_payloads, 'snapshots_installed': self.installed_snapshots,
            'proposals': {'entries': self._proposer.entries, 'records': self._proposer.records}
            if self._proposer else None,
            'encrypted': bool(self.cfg.get('password')), 'ready_seconds': self.ready_seconds,
        }
        node = self.node
        if node is not None:
            try:
                from pysyncobj.node import TCPNode
                leader = node._getLeader()
                st['term'] = node.raftCurrentTerm
                st['commit_index'] = node.raftCommitIndex
                st['log_entries'] = node._getRaftLogSize()
                st['role'] = 'leader' if node._isLeader() else self.role
                addr = getattr(leader, 'address', None)
                st['leader_address'] = addr
                st['leader'] = self._names.get(addr, addr)
                st['peers'] = {p.name: node.isNodeConnected(TCPNode(p.raft)) for p in self.peers}
            except Exception:   # racing pysyncobj's thread: report what we have
                pass
        return st

    async def control(self, header: Dict[str, Any], body: bytes) -> bytes:
        """Requests from peer replicas (payloads, snapshots); authenticated by the cluster token."""
        if not self.token or not hmac.compare_digest(str(header.get('token', '')), self.token):
            return protocol.pack({'ok': False, 'error': {'type': 'PermissionError', 'where': self.name,
                                                         'message': 'bad or missing RAFT cluster token'}})
        op = header.get('op')
        try:
            if op == 'put_payloads':   # a batch from one peer: [[rid, digest, size], ...] + the bodies
                items = header.get('items') or []
                view, offset, stores = memoryview(body), 0, []
                for rid, digest, size in items:
                    _check_rid(rid)
                    if not isinstance(size, int) or size < 0 or offset + size > len(view):
                        raise ValueError('put_payloads: the sizes do not match the body')
                    # the sender hashed the body it sends (the transport is reliable and authenticated):
                    # kept with the body, so nobody hashes it again
                    stores.append(self._store(rid, bytes(view[offset:offset + size]), str(digest)))
                    offset += size
                    arrived = self._arrivals.get(rid)
                    if arrived is not None:
                        arrived.set()
                results = await asyncio.gather(*stores, return_exceptions=True)
                errors = [None if not isinstance(r, BaseException) else _short(r) for r in results]
                outcomes = await self._propose_for_peer(items, header.get('records'), errors)
                return protocol.pack({'ok': True, 'errors': errors if any(errors) else None, 'outcomes': outcomes})
            if op == 'put_payload':
                rid = _check_rid(header.get('rid'))
                if _digest(body) != header.get('digest'):
                    raise ValueError(f'payload {rid} does not match its digest')
                await self._store(rid, bytes(body), header['digest'])
                arrived = self._arrivals.get(rid)
                if arrived is not None:
                    arrived.set()
                return protocol.pack({'ok': True})
            if op == 'get_payload':
                rid = _check_rid(header.get('rid'))
                data = self.payloads.cached(rid)
                if data is None:
                    data = await asyncio.to_thread(self.payloads.get, rid)
                if data is None:
                    return protocol.pack({'ok': False, 'missing': True})
                data = bytes(data)
                return protocol.pack({'ok': True}, data)
            if op == 'get_snapshot':
                return await self._serve_snapshot(header)
            if op == 'status':
                return protocol.pack({'ok': True, 'status': self.status()})
            raise ValueError(f"unknown RAFT control op {op!r}; allowed: 'put_payloads', 'get_payload', "
                             "'get_snapshot', 'status'")
        except Exception as e:
            return protocol.pack(protocol.error_header(e, self.name))

    # -- proposing -----------------------------------------------------------------------------
    async def _propose_for_peer(self, items: List[Any], records: Optional[List[Any]],
                                errors: List[Optional[str]]) -> Optional[List[Optional[int]]]:
        """A peer's payloads came with their records: if we lead, propose those stored here
        (payload on the peer and here: a majority) -> pysyncobj's outcome per record."""
        if not records:
            return None
        outcomes: List[Optional[int]] = [None] * len(items)
        node = self.node
        leading = node is not None and self._proposer is not None and not self._closing and node._isLeader()
        proposals: Dict[int, asyncio.Future] = {}
        for k, rec in enumerate(records[:len(items)]):
            if rec is None:
                continue
            if errors[k] is not None or not isinstance(rec, list) or len(rec) != 6 or rec[0] != items[k][0]:
                outcomes[k] = _REFUSED
            elif not leading:
                outcomes[k] = 4   # not leader: the peer proposes it itself
            else:
                proposals[k] = self._proposer.submit(tuple(rec))
        if proposals:
            for k, err in zip(proposals, await asyncio.gather(*proposals.values())):
                outcomes[k] = err
        return outcomes

    def _barrier(self) -> tuple:
        return (uuid.uuid4().hex, None, '', 0, '', self.replica)

    async def _commit(self, record: tuple, timeout: Optional[float], what: str,
                      trace: Optional[List[Any]] = None,
                      delegate: Optional[Callable[[], Any]] = None) -> Tuple[Dict[str, Any], bytes]:
        """Propose ``record`` (retrying on leader changes) until applied here; -> its reply.

        ``trace`` collects (pysyncobj outcome, seconds) per proposal, for diagnostics.
        ``delegate``: a coroutine function that has the leader propose the record (the payload
        push carries it) and returns pysyncobj's outcome; on anything but success we propose.
        """
        rid = record[0]
        existing = self._waiters.get(rid)
        if existing is not None and not existing.done():   # the same request again: share its outcome
            done, _ = await asyncio.wait({existing}, timeout=timeout)
            if not done:
                raise TimeoutError(f'{what} was not committed and applied by {self.name} within {timeout:.0f} s')
            return existing.result()
        fut = self.loop.create_future()
        self._waiters[rid] = fut
        deadline = None if timeout is None else self.loop.time() + timeout
        attempt = 0

        def remaining() -> Optional[float]:
            return None if deadline is None else max(0.0, deadline - self.loop.time())

        try:
            if delegate is not None:
                tp = self.loop.time()
                task = self._spawn(delegate())
                done, _ = await asyncio.wait({fut, task}, timeout=remaining(), return_when=asyncio.FIRST_COMPLETED)
                if fut.done():
                    return fut.result()
                if not done:
                    raise TimeoutError(f'{what} was not committed and applied by {self.name} within '
                                       f'{timeout:.0f} s (raft: {json.dumps(self.status())})')
                err = task.result()   # raises if no majority holds the payload
                if trace is not None:
                    trace.append(('by the leader: ' + str(_OUTCOMES.get(err, err)), round(self.loop.time() - tp, 3)))
                if err == _SUCCESS:   # committed by the leader: our applier is about to apply it
                    await asyncio.wait({fut}, timeout=remaining())
                    if fut.done():
                        return fut.result()
                    raise TimeoutError(f'{what} was committed but not applied by {self.name} within '
                                       f'{timeout:.0f} s (raft: {json.dumps(self.status())})')
            while True:
                if self._closing:
                    raise RaftNotReady(f'{self.name} is shutting down')
                proposal = self._proposer.submit(record)
                tp = self.loop.time()
                done, _ = await asyncio.wait({fut, proposal}, timeout=remaining(),
                                             return_when=asyncio.FIRST_COMPLETED)
                if fut.done():
                    return fut.result()
                if not done:
                    break
                err = proposal.result()
                if trace is not None:
                    trace.append((_OUTCOMES.get(err, err), round(self.loop.time() - tp, 3)))
                if err == _SUCCESS:   # committed: our applier is about to apply it
                    await asyncio.wait({fut}, timeout=remaining())
                    if fut.done():
                        return fut.result()
                    break
                attempt += 1
                if attempt in (5, 20) or attempt % 100 == 0:
                    log.info('%s: %s not committed yet (pysyncobj code %s, attempt %d); retrying',
                             self.name, what, err, attempt)
                await asyncio.sleep(min(0.01 * attempt, 0.25))
            raise TimeoutError(f'{what} was not committed and applied by {self.name} within {timeout:.0f} s '
                               f'(raft: {json.dumps(self.status())}); is a majority of replicas up?')
        finally:
            if self._waiters.get(rid) is fut:
                del self._waiters[rid]

    def _spawn(self, coro: Any) -> asyncio.Task:
        """A background task, cancelled at close; its exception is retrieved (no 'never retrieved' noise)."""
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(lambda t: (self._background.discard(t), t.cancelled() or t.exception()))
        return t

    def _leader_peer(self) -> Optional[_Peer]:
        """The peer that leads now, as our node sees it (None: we lead, or no leader)."""
        node = self.node
        try:
            addr = getattr(node._getLeader(), 'address', None) if node is not None else None
        except Exception:
            return None
        return next((p for p in self.peers if p.raft == addr), None)

    async def _majority(self, pushes: Dict[str, asyncio.Task], deadline: float) -> None:
        """Return once a majority of replicas (us included) holds the payload ``pushes`` carry."""
        need = (len(self.peers) + 1) // 2 + 1 - 1
        acks, errors, pending = 0, [], set(pushes.values())
        if need <= 0:
            return
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - self.loop.time()),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for t in done:
                ok, why, _ = t.result()
                if ok:
                    acks += 1
                else:
                    errors.append(why)
            if acks >= need:
                return
        raise RaftNotReady(f'{self.name}: could not store the request on a majority of replicas '
                           f'({acks + 1} of {len(self.peers) + 1}): {"; ".join(errors) or "timed out"}')

    async def _push(self, peer: _Peer, rid: str, digest: str, body: bytes, deadline: float,
                    record: Optional[tuple] = None) -> Tuple[bool, str, Optional[int]]:
        """Store a payload on ``peer`` (retried) -> (stored, why not, outcome of the peer's proposal of
        ``record``: asked on the first try only, None if that try failed)."""
        why, outcome = '', None
        for attempt in range(5):
            if deadline - self.loop.time() <= 0:
                break
            ok, why, out = await self._pushers[peer.name].push(rid, digest, body, deadline,
                                                                record if attempt == 0 else None)
            if attempt == 0:
                outcome = out
            if ok:
                return True, '', outcome
            await asyncio.sleep(0.05 * (attempt + 1))
        return False, why, outcome

    async def _store(self, rid: str, data: bytes, digest: str) -> None:
        """Keep a body in memory and return once the writer thread has put it in the workspace."""
        fut = self._disk.get(rid)
        if fut is None:
            fut = self.loop.create_future()
            self._disk[rid] = fut
            if not self.payloads.put_nowait(rid, data, digest):   # stored already
                del self._disk[rid]
                fut.set_result(None)
        await asyncio.shield(fut)

    def _on_written(self, rids: List[str], error: Optional[BaseException]) -> None:
        """The writer thread stored a batch of bodies (one wake-up of the loop per batch)."""
        try:
            self.loop.call_soon_threadsafe(self._written, rids, error)
        except RuntimeError:
            pass   # loop closed: shutting down

    def _written(self, rids: List[str], error: Optional[BaseException]) -> None:
        for rid in rids:
            fut = self._disk.pop(rid, None)
            if fut is not None and not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(OSError(f'{self.name}: cannot store request {rid}: {error}'))

    async def _call_peer(self, peer: _Peer, header: Dict[str, Any], body: bytes = b'',
                         timeout: float = 30.0) -> Tuple[Dict[str, Any], bytes]:
        header = dict(header, token=self.token, sender=self.name)
        reply = await peer.stub()(protocol.pack(header, body), timeout=timeout)
        h, b = protocol.unpack(reply)
        return h, bytes(b)

    # -- pysyncobj's thread ------------------------------------------------------------------
    def _post(self, action: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self._push_action, action)
        except RuntimeError:
            pass   # loop closed: shutting down

    def _push_action(self, action: tuple) -> None:
        self._actions.append(action)
        self._actions_event.set()

    def _on_commit(self, index: int, records: Sequence[Sequence[Any]]) -> None:
        recs = [tuple(r) for r in records]
        if index > self.snapshot_index:
            with self._records_lock:
                self._records[index] = recs
        self._post(('apply', index, recs))

    def _on_tick(self) -> None:
        node = self.node
        if node is None:
            return
        last = node.raftLastApplied
        if last != self._last_marked:
            self._last_marked = last
            self._post(('mark', last))

    def _on_state_changed(self, old: int, new: int) -> None:
        self.role = _ROLES.get(new, str(new))
        if new == 2:
            log.info('%s: became the RAFT leader', self.name)

    def _serialize(self, path: str, data: Tuple[Any, Any, Any]) -> None:
        """pysyncobj's log compaction: a small dump naming our latest snapshot and the records since."""
        last, prev, cluster = data
        with self._records_lock:
            snap = self.snapshot_index
            recs = sorted((i, r) for i, r in self._records.items() if snap < i <= last[1])
        doc = {'format': 'orchestra-raft-dump/1', 'last': _entry_to_json(last), 'prev': _entry_to_json(prev),
               'cluster': sorted(getattr(n, 'address', str(n)) for n in cluster),
               'snapshot_index': snap, 'origin': self.name,
               'records': [[i, [_record_to_json(x) for x in r]] for i, r in recs]}
        with open(path, 'w') as f:
            json.dump(doc, f, separators=(',', ':'))
        self._post(('snapshot',))

    def _deserialize(self, path: str) -> Tuple[Any, Any, Any]:
        """A dump (ours at restart, or the leader's when we are too far behind) -> pysyncobj's tuple."""
        with open(path) as f:
            doc = json.load(f)
        if doc.get('format') != 'orchestra-raft-dump/1':
            raise ValueError(f'{path} is not an orchestra-nb RAFT dump')
        records = [(int(i), [_record_from_json(x) for x in r]) for i, r in doc['records']]
        with self._records_lock:
            for i, r in records:
                if i > self.snapshot_index:
                    self._records[i] = r
        last = _entry_from_json(doc['last'])
        self._post(('install', int(doc['snapshot_index']), records, last[1]))
        return last, _entry_from_json(doc['prev']), list(doc.get('cluster') or [])

    # -- applying (the loop thread; Executor calls on its thread) -----------------------------
    async def _applier(self) -> None:
        while True:
            await self._actions_event.wait()
            self._actions_event.clear()
            while self._actions:
                try:
                    await self._apply_next()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception('%s: applying the RAFT log failed; retrying in 1 s', self.name)
                    await asyncio.sleep(1.0)
            if self._snapshot_wanted and self.applied_index > self.snapshot_index and not self._closing:
                await self._take_snapshot()

    async def _apply_next(self) -> None:
        head = self._actions[0]
        if head[0] == 'apply':
            batch, n = [], 0
            while self._actions and self._actions[0][0] == 'apply' and n < 256:
                batch.append(self._actions[0])
                n += len(self._actions[0][2])
                self._actions.popleft()
            try:
                await self._apply_entries([(a[1], a[2]) for a in batch])
            except BaseException:
                self._actions.extendleft(reversed(batch))   # not applied: try again, in order
                raise
            return
        kind = head[0]
        if kind == 'mark':      # entries without records (no-ops) up to here are applied
            self.applied_index = max(self.applied_index, head[1])
        elif kind == 'snapshot':
            self._snapshot_wanted = True
        elif kind == 'install':
            await self._install(head[1], head[2], head[3])
        self._actions.popleft()

    async def _apply_entries(self, entries: List[Tuple[int, list]]) -> None:
        items = [(i, rec) for i, recs in entries if i > self.applied_index for rec in recs]
        for i, recs in entries:   # covered by a snapshot already: answer anyone waiting
            if i <= self.applied_index:
                for rec in recs:
                    self._covered(rec)
        prepared: List[Tuple[int, tuple, Optional[bytes]]] = []
        for i, rec in items:
            if i <= self.applied_index:
                self._covered(rec)
                continue
            if rec[1] is None:
                prepared.append((i, rec, None))
                continue
            payload = await self._payload_for(rec, i)
            if payload is None:   # a peer's snapshot covering this entry was installed instead
                for j, r, _ in prepared:
                    self._covered(r)
                prepared = []
                self._covered(rec)
                continue
            prepared.append((i, rec, payload))
        last = max(i for i, _ in entries)
        if prepared:
            self._applying = True
            try:
                results = await self.loop.run_in_executor(self.server.pool, self._apply_sync, prepared, last)
            finally:
                self._applying = False
            for rid, reply in results:
                fut = self._waiters.get(rid)
                if fut is not None and not fut.done():
                    fut.set_result(reply if reply is not None else ({'ok': True}, b''))
        self.applied_index = max(self.applied_index, last)

    def _covered(self, rec: tuple) -> None:
        """A record applied through a snapshot rather than here: answer a local waiter."""
        fut = self._waiters.get(rec[0])
        if fut is not None and not fut.done():
            body = (_inline(rec) or self.payloads.get(rec[0])) if rec[1] is not None else None
            fut.set_result(({'ok': True, 'applied_via_snapshot': True}, body or b''))

    def _apply_sync(self, prepared: List[Tuple[int, tuple, Optional[bytes]]], last: int) -> List[Tuple[str, Any]]:
        """On the Executor's thread: run each record's endpoint, in log order."""
        from runtime.worker import _call_kwargs
        out: List[Tuple[str, Any]] = []
        for index, rec, payload in prepared:
            rid, endpoint = rec[0], rec[1]
            if endpoint is None:
                out.append((rid, None))
                continue
            if rid in self._seen_set:   # a retried request committed twice: apply once
                out.append((rid, ({'ok': True, 'duplicate': True}, payload or b'')))
                continue
            self._remember(rid)
            reply = None
            try:
                ep = self.server.endpoints.lookup(endpoint)
                params = json.loads(rec[2]) if rec[2] else {}
                if rid in self._waiters:
                    reply = self.server.run_endpoint(ep, params, payload)
                else:
                    from runtime.codec import decode_docs
                    docs = decode_docs(payload, ep.input_type)
                    result = ep.method(**_call_kwargs(ep, docs, params))
                    if asyncio.iscoroutine(result):
                        asyncio.run(result)
            except Exception as e:
                log.error('%s: applying %s (log index %d) failed: %s: %s', self.name, endpoint, index,
                          type(e).__name__, e)
                reply = (protocol.error_header(e, self.name, traceback.format_exc()), b'')
            self.writes_applied += 1
            self.payloads.applied(rid, index)
            out.append((rid, reply))
        self._exec_index = max(self._exec_index, last)
        return out

    def _remember(self, rid: str) -> None:
        self._seen.append(rid)
        self._seen_set.add(rid)
        while len(self._seen) > self.SEEN_LIMIT:
            self._seen_set.discard(self._seen.popleft())

    async def _payload_for(self, rec: tuple, index: int) -> Optional[bytes]:
        """The record's body: ours, a peer's (digest checked), or None once a covering snapshot is installed."""
        rid, digest = rec[0], rec[4]
        data = _inline(rec)
        if data is not None:
            return data
        hit = self.payloads.cached_with_digest(rid)
        if hit is not None and hit[1] == digest:   # hashed once, when it was stored
            return hit[0]
        data = hit[0] if hit is not None else await asyncio.to_thread(self.payloads.get, rid)
        if data is not None and _digest(data) == digest:
            return data
        if data is not None:   # same request id, other body (a misbehaving client): take the committed one
            log.warning('%s: the local body of request %s does not match the committed digest; '
                        'fetching it from a peer', self.name, rid)
            await asyncio.to_thread(self.payloads.discard, rid)
        elif rec[5] != self.replica:   # the origin's push is usually a moment away: wait briefly
            arrived = self._arrivals.setdefault(rid, asyncio.Event())
            try:
                if self.payloads.cached(rid) is None:
                    await asyncio.wait_for(arrived.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
            finally:
                self._arrivals.pop(rid, None)
            hit = self.payloads.cached_with_digest(rid)
            if hit is not None and hit[1] == digest:
                return hit[0]
            data = await asyncio.to_thread(self.payloads.get, rid)
            if data is not None and _digest(data) == digest:
                return data
        t0 = time.monotonic()
        warned = False
        while True:
            for peer in sorted(self.peers, key=lambda p: p.replica != rec[5]):   # the origin first
                try:
                    h, body = await self._call_peer(peer, {'op': 'get_payload', 'rid': rid}, timeout=30.0)
                except Exception:
                    continue
                if h.get('ok') and _digest(body) == digest:
                    self.fetched_payloads += 1
                    await self._store(rid, body, digest)
                    return body
            # no peer has it any more (compacted): take a peer's snapshot that covers this entry
            if await self._install_from_peer(index):
                return None
            if not warned and time.monotonic() - t0 > 5.0:
                warned = True
                log.warning('%s: the payload of request %s (log index %d) is on no reachable peer yet; '
                            'retrying', self.name, rid, index)
            await asyncio.sleep(0.2)

    async def _install(self, snapshot_index: int, records: List[Tuple[int, list]], last: int) -> None:
        """A compaction dump: state = a snapshot >= ``snapshot_index`` + ``records`` up to ``last``."""
        t0 = time.monotonic()
        while self.applied_index < snapshot_index:
            if await self._install_from_peer(snapshot_index):
                break
            if time.monotonic() - t0 > 5.0:
                log.warning('%s: waiting for a peer snapshot at index >= %d', self.name, snapshot_index)
                t0 = time.monotonic()
            await asyncio.sleep(0.2)
        todo = [(i, r) for i, r in records if i > self.applied_index]
        if todo:
            await self._apply_entries(todo)
        self.applied_index = max(self.applied_index, last)

    # -- snapshots -------------------------------------------------------------------------------
    def _restore_local(self, latest: Tuple[int, str]) -> None:
        """At start, on the Executor's thread: load the newest local snapshot (older ones if it fails)."""
        for index, path in reversed(self.snapshots.list()):
            try:
                self._restore_sync(path, call_restore=not self.options['no_snapshot_restore_on_start'])
                return
            except Exception as e:
                log.error('%s: snapshot %s cannot be restored (%s: %s); trying an older one',
                          self.name, path, type(e).__name__, e)

    def _restore_sync(self, path: str, call_restore: bool = True) -> None:
        with open(os.path.join(path, 'meta.json')) as f:
            meta = json.load(f)
        if call_restore:
            self.server.executor.restore(os.path.join(path, 'state'))
        self._seen = collections.deque(meta.get('seen') or [])
        self._seen_set = set(self._seen)
        self.writes_applied = int(meta.get('writes_applied', 0))
        index = int(meta['index'])
        self._exec_index = index
        self.applied_index = self.snapshot_index = index   # ints: safe to set from this thread
        with self._records_lock:
            for i in [i for i in self._records if i <= index]:
                del self._records[i]

    def _snapshot_sync(self, requested: int) -> int:
        """On the Executor's thread: write its state and our bookkeeping to ``snap-<index>``."""
        index = max(requested, self._exec_index)
        if any(i == index for i, _ in self.snapshots.list()):
            return index
        tmp = self.snapshots.new_tmp()
        try:
            _snapshot_executor(self.server.executor, os.path.join(tmp, 'state'))
            _write_json(os.path.join(tmp, 'meta.json'),
                        {'index': index, 'writes_applied': self.writes_applied, 'seen': list(self._seen),
                         'replica': self.name, 'created': time.time()})
            self.snapshots.commit(tmp, index)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return index

    async def _take_snapshot(self) -> None:
        self._snapshot_wanted = False
        try:
            index = await self.loop.run_in_executor(self.server.pool, self._snapshot_sync, self.applied_index)
        except Exception as e:
            self._snapshot_failures += 1
            if self._snapshot_failures in (1, 10) or self._snapshot_failures % 100 == 0:
                log.error('%s: Executor.snapshot() failed (%s: %s); the RAFT log keeps growing until it '
                          'succeeds. Override snapshot(path)/restore(path) for state that does not pickle.',
                          self.name, type(e).__name__, e)
            return
        self._snapshot_done(index)

    def _snapshot_done(self, index: int) -> None:
        self.snapshot_index = max(self.snapshot_index, index)
        with self._records_lock:
            for i in [i for i in self._records if i <= self.snapshot_index]:
                del self._records[i]
        self.snapshots.prune(keep=2)
        limit = self.snapshot_index - int(self.options['trailing_logs'])
        if limit > 0:
            t = asyncio.ensure_future(asyncio.to_thread(self.payloads.gc, limit))
            self._background.add(t)
            t.add_done_callback(self._background.discard)

    async def _serve_snapshot(self, header: Dict[str, Any]) -> bytes:
        want = header.get('index')
        snaps = self.snapshots.list()
        if want is not None:
            found = [s for s in snaps if s[0] == int(want)]
        else:
            found = [s for s in snaps if s[0] >= int(header.get('min_index', 0))][-1:]
        if not found:
            return protocol.pack({'ok': False, 'missing': True,
                                  'latest': snaps[-1][0] if snaps else None})
        index = found[0][0]
        offset = int(header.get('offset', 0))

        def chunk() -> Tuple[int, bytes]:
            path = self.snapshots.tar(index)
            with open(path, 'rb') as f:
                f.seek(offset)
                return os.path.getsize(path), f.read(self.SNAPSHOT_CHUNK)

        total, data = await asyncio.to_thread(chunk)
        return protocol.pack({'ok': True, 'index': index, 'total': total}, data)

    async def _install_from_peer(self, min_index: int) -> bool:
        """Fetch a peer's snapshot at index >= ``min_index`` and restore it; False if none has one."""
        for peer in self.peers:
            tmp = os.path.join(self.snapshots.root, f'incoming-{uuid.uuid4().hex[:8]}.tar')
            try:
                index, offset, total = None, 0, None
                with open(tmp, 'wb') as f:
                    while total is None or offset < total:
                        h, body = await self._call_peer(
                            peer, {'op': 'get_snapshot', 'min_index': min_index, 'index': index,
                                   'offset': offset}, timeout=120.0)
                        if not h.get('ok'):
                            break
                        index, total = int(h['index']), int(h['total'])
                        f.write(body)
                        offset += len(body)
                        if not body:
                            break
                if index is None or total is None or offset < total:
                    continue
                got, path = await asyncio.to_thread(self.snapshots.unpack, tmp)
                await self.loop.run_in_executor(self.server.pool, self._restore_sync, path, True)
                self.installed_snapshots += 1
                self._snapshot_done(got)
                log.info('%s: installed the snapshot at index %d from %s', self.name, got, peer.name)
                return True
            except Exception as e:
                log.warning('%s: fetching a snapshot from %s failed: %s', self.name, peer.name, _short(e))
            finally:
                _unlink(tmp)
        return False


def _snapshot_executor(executor: Any, path: str) -> None:
    """``executor.snapshot(path)``; the base class's default pickles with cloudpickle here, so
    state holding classes made at run time (docarray's ``InMemoryExactNNIndex[TextDoc]``) saves too.
    The default ``restore()`` (``pickle.load``) reads it back."""
    from runtime.executor import Executor
    if type(executor).snapshot is not Executor.snapshot:
        executor.snapshot(path)
        return
    import pickle
    import cloudpickle
    from runtime import executor as executor_module
    skip = getattr(executor_module, '_NOT_STATE', {'runtime_args', 'logger', '_workspace_root'})
    state = {k: v for k, v in vars(executor).items() if k not in skip}
    with open(path, 'wb') as f:
        cloudpickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)


def _short(e: BaseException) -> str:
    details = getattr(e, 'details', None)
    if callable(details):
        try:
            return f'{e.code().name}: {details()}'
        except Exception:
            pass
    return f'{type(e).__name__}: {e}'


async def attach_consensus(server: Any) -> Consensus:
    """Give a stateful replica its RAFT node; returns once the replica has caught up.

    ``server.consensus`` is set before anything is awaited, so no request reaches the
    Executor around RAFT while the node starts.
    """
    cfg = server.config.get('raft')
    if not cfg:
        raise ValueError('a stateful replica needs config["raft"] (built by runtime.consensus.plan_stateful)')
    consensus = Consensus(server, cfg)
    server.consensus = consensus
    await consensus.start()
    return consensus
