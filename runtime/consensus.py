"""RAFT-replicated state for ``stateful=True`` Deployments: the names the rest of orchestra-nb imports.

The code lives in the package :mod:`runtime.raft` (its ``__init__`` tells how a write
travels and lists the modules; docs/raft.md has the design). This module keeps the
import path ``runtime.consensus`` working for the Deployment, the worker and the tests.
"""
from runtime.raft.common import RaftNotReady
from runtime.raft.config import (DEFAULT_OPTIONS, DEFAULT_PYSYNCOBJ, HASHICORP_KEYS, PYSYNCOBJ_KEYS, RESERVED_KEYS,
                                 check_syncobj_conf, normalize_raft_configuration, valid_raft_keys)
from runtime.raft.node import Consensus, attach_consensus
from runtime.raft.payloads import PayloadStore
from runtime.raft.plan import (MIN_REPLICAS, normalize_peer_ports, plan_stateful, raft_root, require_cryptography,
                               validate_stateful)
from runtime.raft.records import INLINE_PAYLOAD_BYTES
from runtime.raft.snapshots import SnapshotStore

__all__ = [
    'MIN_REPLICAS', 'HASHICORP_KEYS', 'PYSYNCOBJ_KEYS', 'RESERVED_KEYS', 'DEFAULT_PYSYNCOBJ', 'DEFAULT_OPTIONS',
    'valid_raft_keys', 'normalize_raft_configuration', 'check_syncobj_conf',
    'normalize_peer_ports', 'validate_stateful', 'require_cryptography', 'raft_root', 'plan_stateful',
    'PayloadStore', 'SnapshotStore', 'INLINE_PAYLOAD_BYTES', 'RaftNotReady', 'Consensus', 'attach_consensus',
]
