"""What one replica's ``Consensus`` knows: every attribute its parts share, declared in one place.

``Consensus`` (:mod:`runtime.raft.node`) derives from ``ConsensusState`` and its parts -- peer
messages (:mod:`runtime.raft.peers`), the applier (:mod:`runtime.raft.apply`), snapshots
(:mod:`runtime.raft.snapshots`). The parts read and write the attributes declared here and
add none of their own (for type checkers they derive from ``ConsensusState``; at run time
from ``object``, as this module imports theirs). Also the actions pysyncobj's thread posts
to the applier. Relies on the stores and :mod:`runtime.raft.links`.
"""
from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import threading
from typing import IO, TYPE_CHECKING, Any, Deque, Dict, List, NamedTuple, Optional, Set, Tuple, Union

from runtime.raft.config import DEFAULT_OPTIONS
from runtime.raft.durable import Trace
from runtime.raft.links import _Peer, _Pusher
from runtime.raft.payloads import PayloadStore
from runtime.raft.records import Record
from runtime.raft.skip import read_skipped, skip_file
from runtime.raft.snapshots import SnapshotStore

if TYPE_CHECKING:
    from runtime.raft.proposer import _Proposer
    from runtime.raft.syncobj import RaftLog


# -- what pysyncobj's thread posts to the applier (the loop thread), in log order -----------------
class _Apply(NamedTuple):
    """Entry ``index`` committed, holding ``records``: apply them."""
    index: int
    records: List[Record]


class _Mark(NamedTuple):
    """pysyncobj applied everything up to ``index`` (entries without records included)."""
    index: int


class _SnapshotDue(NamedTuple):
    """pysyncobj compacted its log: take a snapshot of the Executor soon."""


class _Install(NamedTuple):
    """pysyncobj loaded a compaction dump: the state is a snapshot at ``snapshot_index`` or later,
    then ``records`` (index, records) up to log index ``last``."""
    snapshot_index: int
    records: List[Tuple[int, List[Record]]]
    last: int


_Action = Union[_Apply, _Mark, _SnapshotDue, _Install]


class ConsensusState:
    """The attributes ``Consensus``'s parts share; set up by this one ``__init__``.

    Threads: the asyncio loop owns everything unless marked; "executor thread" ones are
    written by the Executor's thread (while the loop waits on it); "pysyncobj thread" ones
    are written there. Plain ints and strings are read across threads without locks.
    """

    SEEN_LIMIT = 50_000          # request ids remembered to drop retried duplicates

    # -- configuration (from ``config['raft']``, built by ``plan_stateful``) --------------------
    server: Any                          # the worker's server: executor, pool (executor thread), endpoints
    cfg: Dict[str, Any]                  # this replica's ``config['raft']``
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
    payloads: PayloadStore               # request bodies (its writer thread calls ``_PeerMessages._on_written``)
    snapshots: SnapshotStore             # the Executor's snapshots in ``dir/snapshots``
    peers: List[_Peer]                   # the shard's other replicas
    _pushers: Dict[str, _Pusher]         # peer name -> its payload pusher
    _names: Dict[str, str]               # RAFT address -> replica name (ours included)
    _disk: Dict[str, asyncio.Future]     # request id -> done once the writer thread stored the body
    # -- the RAFT node --------------------------------------------------------------------------
    node: Optional['RaftLog']            # pysyncobj, from ``start`` until ``close``
    loop: Optional[asyncio.AbstractEventLoop]   # the worker's loop, from ``start``
    role: str                            # 'follower', 'candidate' or 'leader' (pysyncobj thread)
    _proposer: Optional['_Proposer']     # group commit, from ``start``
    _waiters: Dict[str, asyncio.Future]  # request id -> its (header, body) reply once applied here
    _started: asyncio.Event              # the node is bound and running
    _ready: asyncio.Event                # the readiness barrier is applied: caught up
    _closing: bool                       # ``close`` began: refuse new work
    _tasks: List[asyncio.Task]           # long-running tasks (the applier), cancelled at close
    _background: Set[asyncio.Task]       # short tasks (pushes, gc), cancelled at close
    # -- the applier (loop) ---------------------------------------------------------------------
    applied_index: int                   # log index applied to the Executor (or covered by a snapshot)
    snapshot_index: int                  # log index of the latest snapshot taken or installed
    _actions: Deque[_Action]             # posted by pysyncobj's thread, applied in order
    _actions_event: asyncio.Event        # set when ``_actions`` has news
    _arrivals: Dict[str, asyncio.Event]  # request id -> set when its payload arrives from its origin
    _snapshot_wanted: bool               # pysyncobj compacted: snapshot after the current batch
    _snapshot_failures: int              # consecutive failed snapshots (to log only some)
    _snapshot_running: Optional['asyncio.Future[int]']   # the snapshot on the Executor's thread, if any
    snapshot_seconds: Optional[float]    # how long the latest snapshot took
    # -- executor thread (captured by snapshots) ------------------------------------------------
    writes_applied: int                  # ``@write`` requests applied, since the first start
    _exec_index: int                     # log index the Executor's state includes
    _seen: Deque[str]                    # request ids applied, oldest first (at most ``SEEN_LIMIT``)
    _seen_set: Set[str]                  # the same, for lookups
    skipped_entries: Set[int]            # log indexes applied as no-ops (the operator's skip list, read at start)
    writes_skipped: int                  # records of those entries passed over since this start
    # -- records since the latest snapshot, for pysyncobj's compaction dump (pysyncobj thread + loop)
    _records: Dict[int, List[Record]]    # log index -> its records
    _records_lock: threading.Lock        # guards ``_records``
    _last_marked: int                    # pysyncobj's last applied index last posted as ``_Mark`` (pysyncobj thread)
    # -- figures for ``status()`` ---------------------------------------------------------------
    ready_seconds: Optional[float]       # how long ``start`` took to catch up
    fetched_payloads: int                # bodies fetched from peers by the applier
    installed_snapshots: int             # snapshots installed from peers

    def __init__(self, server: Any, cfg: Dict[str, Any]):
        self.server = server
        self.cfg = cfg
        self.name = cfg.get('name') or server.name
        self.replica = int(cfg['replica'])
        self.options = dict(DEFAULT_OPTIONS, **(cfg.get('options') or {}))
        self.secret = server.config.get('secret') or ''
        self.default_consistency = cfg.get('read_consistency') or 'eventual'
        self.dir = cfg['dir']
        os.makedirs(self.dir, exist_ok=True)
        self._lock_file = self._lock_dir()   # before the stores tidy up leftovers in the folder
        self.durable = cfg.get('durability', 'fsync') == 'fsync'
        self.trace = Trace(self.name)
        self.payloads = PayloadStore(os.path.join(self.dir, 'payloads'), on_written=self._on_written,
                                     durable=self.durable, trace=self.trace if self.trace.enabled else None)
        self.snapshots = SnapshotStore(os.path.join(self.dir, 'snapshots'), durable=self.durable)
        self.peers = [_Peer(p['replica'], p['name'], p['raft'], p['grpc']) for p in cfg['peers']]
        self._pushers = {p.name: _Pusher(self, p) for p in self.peers}   # type: ignore[arg-type]
        self._names = {p.raft: p.name for p in self.peers}
        self._names[cfg['self']] = self.name
        self._disk = {}
        self.node = None
        self.loop = None
        self.role = 'follower'
        self._proposer = None
        self._waiters = {}
        self._started = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False
        self._tasks = []
        self._background = set()
        self.applied_index = 0
        self.snapshot_index = 0
        self._actions = collections.deque()
        self._actions_event = asyncio.Event()
        self._arrivals = {}
        self._snapshot_wanted = False
        self._snapshot_failures = 0
        self._snapshot_running = None
        self.snapshot_seconds = None
        self.writes_applied = 0
        self._exec_index = 0
        self._seen = collections.deque()
        self._seen_set = set()
        self.skipped_entries = read_skipped(skip_file(self.dir))
        self.writes_skipped = 0
        self._records = {}
        self._records_lock = threading.Lock()
        self._last_marked = 0
        self.ready_seconds = None
        self.fetched_payloads = 0
        self.installed_snapshots = 0

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
