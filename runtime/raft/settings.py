"""What one replica's RAFT node is told: ``RaftSettings``, read from the replica's spec in one place.

:func:`settings_from_spec` is the only reader of ``ReplicaSpec.raft`` (a :class:`~runtime.specs.RaftSpec`
built by :func:`runtime.raft.plan.plan_raft`) and of the secret RAFT uses; everything inside
:mod:`runtime.raft` gets resolved, typed values from the ``RaftSettings`` it returns (options
merged with their defaults, ``durable`` from ``durability``). Relies on :mod:`runtime.raft.config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple, Union

from runtime.raft.config import DEFAULT_OPTIONS
from runtime.specs import RaftPeer, RaftSpec


PeerAddress = RaftPeer   # another replica of the shard: number, name, RAFT and gRPC addresses (one declaration)


@dataclass(frozen=True)
class RaftSettings:
    """One replica's RAFT settings, typed.

    >>> s = settings_from_spec(RaftSpec(replica=0, shard=0, name='kv/rep-0', address='127.0.0.1:7000',
    ...                                 bind='127.0.0.1:7000', peers=(), dir='/tmp/x'), secret='s')
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


def settings_from_spec(raft: Optional[RaftSpec], secret: Optional[str], default_name: str = '') -> RaftSettings:
    """A replica's RAFT spec and the Deployment's secret -> ``RaftSettings``.

    Raises ``ValueError`` when the replica has no RAFT spec (it is not stateful).
    """
    if raft is None:
        raise ValueError('a stateful replica needs ReplicaSpec.raft (built by runtime.raft.plan.plan_raft)')
    secret = secret or ''
    return RaftSettings(
        replica=raft.replica, name=raft.name or default_name, address=raft.address, bind=raft.bind, dir=raft.dir,
        peers=tuple(raft.peers), secret=secret, password=raft.password or secret or None,
        durable=raft.durability == 'fsync', read_consistency=raft.read_consistency,
        syncobj=dict(raft.conf), options=dict(DEFAULT_OPTIONS, **raft.options))
