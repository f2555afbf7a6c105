"""``raft_configuration``: hashicorp/raft-style names (as Jina takes them) -> pysyncobj.

``normalize_raft_configuration`` turns a user's dict into pysyncobj ``SyncObjConf`` kwargs
plus orchestra-nb's own options (defaults included), and ``check_syncobj_conf`` runs
pysyncobj's invariants so a bad setting fails up front, with its name.
Relies on pysyncobj (through :mod:`runtime.raft.syncobj`, imported when checking).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

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
    from runtime.raft.syncobj import SyncObjConf   # imported lazily: only when checking
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
