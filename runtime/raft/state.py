"""What one replica's ``Consensus`` knows: every attribute its parts share, declared in one place.

``Consensus`` (:mod:`runtime.raft.node`) derives from ``ConsensusState`` and two remaining
mixins -- peer messages (:mod:`runtime.raft.control`) and the applier (:mod:`runtime.raft.apply`),
which read and write the attributes declared here and add none of their own (for type checkers
they derive from ``ConsensusState``; at run time from ``object``, as this module imports theirs).
The other parts are objects with their own state, built here and reached through their
methods: ``Bodies`` (:mod:`runtime.raft.bodies`), ``Snapshots`` (:mod:`runtime.raft.snapshots`),
the ``ApplyLedger`` (:mod:`runtime.raft.decisions`: what is applied, and the applier's decisions).
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from typing import IO, TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

from runtime.raft.durable import Trace
from runtime.raft.apply import Applier
from runtime.raft.bodies import Bodies
from runtime.raft.control import PeerControl
from runtime.raft.decisions import ApplyLedger
from runtime.raft.records import Record
from runtime.raft.settings import PeerAddress, RaftSettings
from runtime.raft.skip import read_skipped, skip_file
from runtime.raft.snapshots import Snapshots, SnapshotStore

if TYPE_CHECKING:
    from runtime.raft.proposer import _Proposer
    from runtime.raft.syncobj import RaftLog


class ConsensusState:
    """The attributes ``Consensus``'s parts share; set up by this one ``__init__``.

    Threads: the asyncio loop owns everything unless marked; "executor thread" ones are
    written by the Executor's thread (while the loop waits on it); "pysyncobj thread" ones
    are written there. Plain ints and strings are read across threads without locks.
    """

    # -- configuration (``RaftSettings``: runtime.raft.settings) ---------------------------------
    server: Any                          # the worker's server: executor, pool (executor thread), endpoints
    settings: RaftSettings               # this replica's RAFT settings (from ``config['raft']``)
    name: str                            # this replica's name (logs, errors, peers' replies)
    replica: int                         # this replica's number in the shard (a record's origin)
    options: Dict[str, Any]              # orchestra-nb's RAFT options (``DEFAULT_OPTIONS`` + the user's)
    secret: str                          # the Deployment's secret: peers' ``control`` calls carry it
    default_consistency: str             # 'eventual' or 'strong', for reads that do not say
    dir: str                             # this replica's RAFT folder
    _lock_file: IO[str]                  # held (flock) while this process uses ``dir``
    durable: bool                        # durability='fsync': sync bodies, journal, dump, snapshots (raft.durable)
    trace: Trace                         # the test-only trace of fsyncs and acks (a no-op unless enabled)
    # -- stores and peers ---------------------------------------------------------------------
    bodies: Bodies                       # request bodies: the store, arrivals, pushes to peers (runtime.raft.bodies)
    snapshots: Snapshots                 # the Executor's snapshots in ``dir/snapshots`` (runtime.raft.snapshots)
    peers: Tuple[PeerAddress, ...]       # the shard's other replicas
    _names: Dict[str, str]               # RAFT address -> replica name (ours included)
    # -- the RAFT node --------------------------------------------------------------------------
    node: Optional['RaftLog']            # pysyncobj, from ``start`` until ``close``
    loop: Optional[asyncio.AbstractEventLoop]   # the worker's loop, from ``start``
    role: str                            # 'follower', 'candidate' or 'leader' (pysyncobj thread)
    _proposer: Optional['_Proposer']     # group commit, from ``start``
    _started: asyncio.Event              # the node is bound and running
    _ready: asyncio.Event                # the readiness barrier is applied: caught up
    _closing: bool                       # ``close`` began: refuse new work
    _background: Set[asyncio.Task]       # short tasks (pushes, gc), cancelled at close
    # -- applying -------------------------------------------------------------------------------
    ledger: ApplyLedger                  # what is applied: indexes, request ids, counts (runtime.raft.decisions)
    applier: Applier                     # applies committed entries; a write waits on it (runtime.raft.apply)
    peer_control: PeerControl            # answers peers' Control calls (runtime.raft.control)
    # -- records since the latest snapshot, for pysyncobj's compaction dump (pysyncobj thread + loop)
    _records: Dict[int, List[Record]]    # log index -> its records
    _records_lock: threading.Lock        # guards ``_records``
    _last_marked: int                    # pysyncobj's last applied index last posted as ``Mark`` (pysyncobj thread)
    # -- figures for ``status()`` ---------------------------------------------------------------
    ready_seconds: Optional[float]       # how long ``start`` took to catch up

    def __init__(self, server: Any, settings: RaftSettings):
        self.server = server
        self.settings = settings
        self.name = settings.name or server.name
        self.replica = settings.replica
        self.options = dict(settings.options)
        self.secret = settings.secret
        self.default_consistency = settings.read_consistency
        self.dir = settings.dir
        os.makedirs(self.dir, exist_ok=True)
        self._lock_file = self._lock_dir()   # before the stores tidy up leftovers in the folder
        self.durable = settings.durable
        self.trace = Trace(self.name)
        self.bodies = Bodies(self.name, self.secret, settings.peers, os.path.join(self.dir, 'payloads'),
                             durable=self.durable, trace=self.trace if self.trace.enabled else None)
        self.peers = settings.peers
        self._names = {p.raft: p.name for p in self.peers}
        self._names[settings.address] = self.name
        self.node = None
        self.loop = None
        self.role = 'follower'
        self._proposer = None
        self._started = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False
        self._background = set()
        self.ledger = ApplyLedger(skipped=read_skipped(skip_file(self.dir)))
        self.snapshots = Snapshots(self.name, SnapshotStore(os.path.join(self.dir, 'snapshots'), durable=self.durable),
                                   server.executor, server.pool, self.ledger, self.bodies, self.peers,
                                   trailing_logs=self.options['trailing_logs'],
                                   restore_on_start=not self.options['no_snapshot_restore_on_start'],
                                   on_covered=self._forget_records)
        self.applier = Applier(self.name, self.replica, self.peers, self.ledger, self.bodies, self.snapshots,
                               server, self.trace)
        self.peer_control = PeerControl(self.name, self.bodies, self.snapshots, self.status, self._leading,
                                        self._propose)
        self._records = {}
        self._records_lock = threading.Lock()
        self._last_marked = 0
        self.ready_seconds = None

    def _forget_records(self, index: int) -> None:
        """A snapshot covers the log up to ``index``: the dump need not list those records."""
        with self._records_lock:
            for i in [i for i in self._records if i <= index]:
                del self._records[i]

    def _lock_dir(self) -> IO[str]:
        """One process per RAFT folder (two Deployments on one workspace would corrupt it)."""
        f = open(os.path.join(self.dir, 'lock'), 'a+')
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            other = f.read().strip() or '?'
            f.close()
            raise RuntimeError(f'{self.name}: the RAFT folder {self.dir} is in use by another running replica '
                               f'(pid {other}); is another Deployment with the same name and workspace '
                               'running? Stop it, or use another workspace.') from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        return f
