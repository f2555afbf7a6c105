"""What one replica's RAFT node is told: ``RaftSettings``, read from the replica's config in one place.

:func:`settings_from_config` is the only reader of ``config['raft']`` (built by
:func:`runtime.raft.plan.plan_stateful`) and of the secret RAFT uses; everything inside
:mod:`runtime.raft` gets typed values from the ``RaftSettings`` it returns. Swapping the dict
for a typed spec touches this function only. Relies on :mod:`runtime.raft.config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple, Union

from runtime.raft.config import DEFAULT_OPTIONS


@dataclass(frozen=True)
class PeerAddress:
    """Another replica of the shard: its number, name, RAFT address and gRPC address."""

    replica: int
    name: str
    raft: str
    grpc: str


@dataclass(frozen=True)
class RaftSettings:
    """One replica's RAFT settings, typed.

    >>> s = settings_from_config({'raft': {'replica': 0, 'name': 'kv/rep-0', 'self': '127.0.0.1:7000',
    ...                                    'bind': '127.0.0.1:7000', 'dir': '/tmp/x', 'peers': []}})
    >>> (s.replica, s.durable, s.read_consistency)
    (0, True, 'eventual')
    """

    replica: int                      # this replica's number in the shard (a record's origin)
    name: str                         # this replica's name (logs, errors, peers' replies)
    address: str                      # our RAFT address, as peers reach it
    bind: str                         # where our RAFT node listens
    dir: str                          # this replica's RAFT folder
    peers: Tuple[PeerAddress, ...]    # the shard's other replicas
    secret: str                       # the Deployment's secret: peers' ``control`` calls carry it
    password: Union[str, bytes, None]   # what pysyncobj encrypts with (raft_password, else the secret)
    durable: bool                     # durability='fsync'
    read_consistency: str             # 'eventual' or 'strong', for reads that do not say
    syncobj: Mapping[str, Any] = field(default_factory=dict)   # pysyncobj ``SyncObjConf`` keywords
    options: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_OPTIONS))   # orchestra-nb's

    @property
    def write_timeout(self) -> float:
        return float(self.options['write_timeout'])


def settings_from_config(config: Dict[str, Any], default_name: str = '') -> RaftSettings:
    """A replica's config (``config['raft']``, ``config['secret']``) -> ``RaftSettings``.

    Raises ``ValueError`` naming what is missing when the config has no RAFT part.
    """
    cfg = config.get('raft')
    if not cfg:
        raise ValueError('a stateful replica needs config["raft"] (built by runtime.raft.plan_stateful)')
    secret = config.get('secret') or ''
    return RaftSettings(
        replica=int(cfg['replica']), name=cfg.get('name') or default_name,
        address=cfg['self'], bind=cfg['bind'], dir=cfg['dir'],
        peers=tuple(PeerAddress(int(p['replica']), p['name'], p['raft'], p['grpc']) for p in cfg['peers']),
        secret=secret, password=cfg.get('password') or secret or None,
        durable=cfg.get('durability', 'fsync') == 'fsync',
        read_consistency=cfg.get('read_consistency') or 'eventual',
        syncobj=dict(cfg.get('conf') or {}),
        options=dict(DEFAULT_OPTIONS, **(cfg.get('options') or {})))
