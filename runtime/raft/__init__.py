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
127.0.0.1 unless the Deployment's ``host`` says otherwise, and every message is
encrypted and authenticated with the Deployment's secret (or ``raft_password``).
Replica-to-replica ``Control`` calls carry the same secret. See ``docs/security.md``.

**The door.** The rest of orchestra-nb imports RAFT from this package only
(``from runtime.raft import make_consensus``); the modules below are its inside.

**Code map**:

- ``settings``: ``RaftSettings``, read from a replica's ``ReplicaSpec.raft`` in one place (``settings_from_spec``).
- ``config``: ``raft_configuration`` -- hashicorp-style names -> pysyncobj ``SyncObjConf``, checks.
- ``plan``: the Deployment hooks -- ``validate_stateful``, ``place_raft`` (this machine's RAFT ports,
  folders), ``plan_raft`` (the replicas' RAFT specs from a layout).
- ``common``: ``RaftNotReady``, ``Outcome`` (a proposal's outcome), ``_short`` and file helpers.
- ``records``: ``Record`` (a NamedTuple; plain tuples in pysyncobj's log), its JSON form for the dump.
- ``decisions``: the write path's decisions as plain functions and a state machine (``ApplyLedger``),
  and the messages pysyncobj's thread posts to the applier; driven in process by tests.
- ``node``: ``Consensus``, which composes the parts below, and ``make_consensus``.

The parts, each an object owning its state:

- ``syncobj``: the replicated log -- pysyncobj behind ``RaftLog`` (the only importer of pysyncobj).
- ``proposer``: group commit -- records proposed together in one log entry.
- ``writes``: ``Writes`` -- how a ``@write`` reaches the log and when it is acknowledged; barriers.
- ``bodies``: ``Bodies`` -- the request bodies: ``payloads`` (``PayloadStore``, segment files) and
  ``pushers`` (one peer's gRPC channel and its batched pushes).
- ``apply``: the ``Applier`` -- committed entries run on the Executor's thread, in log order.
- ``snapshots``: ``Snapshots`` and ``SnapshotStore`` -- taking, restoring, serving, fetching.
- ``control``: ``PeerControl`` -- answering the other replicas' ``Control`` calls.
- ``dump``: ``CompactionDump`` -- pysyncobj's compaction dump: the records since the latest snapshot.
- ``skip``: the operator's list of poison entries to apply as no-ops.
- ``durable``: fsync helpers and the test-only trace of fsyncs and acks.
"""
from runtime.raft.common import RaftNotReady
from runtime.raft.config import (DEFAULT_OPTIONS, DEFAULT_PYSYNCOBJ, HASHICORP_KEYS, PYSYNCOBJ_KEYS, RESERVED_KEYS,
                                 check_syncobj_conf, normalize_raft_configuration, valid_raft_keys)
from runtime.raft.node import Consensus, make_consensus
from runtime.raft.payloads import PayloadStore
from runtime.raft.plan import (MIN_REPLICAS, normalize_peer_ports, place_raft, plan_raft, raft_root,
                               require_cryptography, validate_stateful)
from runtime.raft.records import INLINE_PAYLOAD_BYTES
from runtime.raft.settings import RaftSettings, settings_from_spec
from runtime.raft.skip import SKIP_FILE, add_skipped
from runtime.raft.snapshots import SnapshotStore

__all__ = [
    'MIN_REPLICAS', 'HASHICORP_KEYS', 'PYSYNCOBJ_KEYS', 'RESERVED_KEYS', 'DEFAULT_PYSYNCOBJ', 'DEFAULT_OPTIONS',
    'valid_raft_keys', 'normalize_raft_configuration', 'check_syncobj_conf',
    'normalize_peer_ports', 'validate_stateful', 'require_cryptography', 'raft_root', 'place_raft',
    'plan_raft',
    'PayloadStore', 'SnapshotStore', 'INLINE_PAYLOAD_BYTES', 'RaftNotReady', 'Consensus', 'make_consensus',
    'RaftSettings', 'settings_from_spec', 'SKIP_FILE', 'add_skipped',
]
