"""One replica's RAFT node: ``Consensus`` (pysyncobj glue, writes, reads, readiness), ``make_consensus``.

``Consensus`` composes one replica's parts -- each an object owning its state, reached
through its methods: ``Bodies`` (:mod:`runtime.raft.bodies`), ``Snapshots``
(:mod:`runtime.raft.snapshots`), the ``Applier`` (:mod:`runtime.raft.apply`), ``PeerControl``
(:mod:`runtime.raft.control`), the ``CompactionDump`` (:mod:`runtime.raft.dump`), the
``ApplyLedger`` (:mod:`runtime.raft.decisions`), the proposer and pysyncobj's ``RaftLog``
(:mod:`runtime.raft.syncobj`), and ``Writes`` (:mod:`runtime.raft.writes`: how a ``@write``
reaches the log and when it is acknowledged). Itself it starts and stops them, gates reads
and readiness on barrier records and hands pysyncobj's callbacks to the parts.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from typing import IO, Any, Dict, Optional, Sequence, Set, Tuple

from runtime.applying import ApplyingMark
from runtime.raft.apply import Applier
from runtime.raft.bodies import Bodies
from runtime.raft.common import Outcome, RaftNotReady
from runtime.raft.control import PeerControl
from runtime.raft.decisions import Action, Apply, ApplyLedger, Mark
from runtime.raft.dump import CompactionDump
from runtime.raft.durable import Trace
from runtime.raft.proposer import _Proposer
from runtime.raft.records import Record
from runtime.raft.settings import PeerAddress, RaftSettings, settings_from_spec
from runtime.raft.skip import read_skipped, skip_file
from runtime.raft.snapshots import Snapshots, SnapshotStore
from runtime.raft.syncobj import LEADER, ROLES, RaftLog, SyncObjConf, quiet_pysyncobj, shrink_journal
from runtime.raft.writes import Writes

log = logging.getLogger('orchestra.raft')

#: how long ``close`` waits for a snapshot under way (an Executor's state written in part is useless)
CLOSE_SNAPSHOT_WAIT_S = 30.0


class Consensus:
    """One replica's RAFT node, payload store, snapshots and applier; see :mod:`runtime.raft`.

    Created by :func:`make_consensus`; the worker calls :meth:`write` for ``@write``
    endpoints, :meth:`before_read` before reads, :meth:`control` for peer requests,
    :meth:`status` for ``describe()`` and :meth:`close` on shutdown. It composes the parts
    (``Bodies``, ``Snapshots``, ``Applier``, ``PeerControl``, ``CompactionDump``, the ledger,
    the proposer and pysyncobj's ``RaftLog``), each owning its state.

    Threads: the asyncio loop owns everything unless marked; "pysyncobj thread" ones are
    written there. Plain ints and strings are read across threads without locks.
    """

    # -- configuration (``RaftSettings``: runtime.raft.settings) ---------------------------------
    server: Any                          # the worker's server: executor, pool (executor thread), endpoints
    settings: RaftSettings               # this replica's RAFT settings (from ``ReplicaSpec.raft``)
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
    applying: ApplyingMark               # the entry being applied, for the owner if we die (runtime.applying)
    peer_control: PeerControl            # answers peers' Control calls (runtime.raft.control)
    writes: Writes                       # orders @write requests and barriers through the log (runtime.raft.writes)
    dump: CompactionDump                 # the records since the latest snapshot: pysyncobj's dump (runtime.raft.dump)
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
        self.dump = CompactionDump(self.name, self.ledger, self._post, self.durable)
        self.snapshots = Snapshots(self.name, SnapshotStore(os.path.join(self.dir, 'snapshots'), durable=self.durable),
                                   server.executor, server.pool, self.ledger, self.bodies, self.peers,
                                   trailing_logs=self.options['trailing_logs'],
                                   restore_on_start=not self.options['no_snapshot_restore_on_start'],
                                   on_covered=self.dump.covered)
        self.applying = ApplyingMark(os.path.join(self.dir, 'applying'))   # read by the owner if we die
        self.applier = Applier(self.name, self.replica, self.peers, self.ledger, self.bodies, self.snapshots,
                               server, self.trace, self.applying)
        self.peer_control = PeerControl(self.name, self.bodies, self.snapshots, self.status, self._leading,
                                        self._propose)
        self.writes = Writes(self.name, self.replica, self.peers, self.options['write_timeout'], self.bodies,
                             self.applier, self._propose, self._leader_peer, self.status, lambda: self._closing,
                             self._spawn, self.trace)
        self._last_marked = 0
        self.ready_seconds = None

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


    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Restore the newest local snapshot, start pysyncobj, then wait until caught up."""
        t0 = time.monotonic()
        self.loop = asyncio.get_running_loop()
        self.server.report(event='applying_file', path=self.applying.path)
        self.bodies.start(self.loop)
        quiet_pysyncobj(self.options['log_level'])
        self.snapshots.start(self.loop)
        if self.snapshots.any_local():
            await self.loop.run_in_executor(self.server.pool, self.snapshots.restore_local)
        self.applier.start(self.loop)
        self.node = self._make_node()
        self.node.add_on_tick(self._on_tick)
        self._proposer = _Proposer(self.loop, self.node.propose, self.options['max_append_entries'])
        self.writes.start(self.loop)
        try:
            await asyncio.to_thread(self.node.wait_bound)
        except Exception:
            raise OSError(f'{self.name}: cannot listen for RAFT on {self.settings.bind}: the port is in use or '
                          'not available (choose other peer_ports, or omit them to let orchestra-nb pick)') from None
        self._started.set()
        log.info('%s: RAFT node on %s, peers %s; restored snapshot index %d; catching up',
                 self.name, self.settings.address, ', '.join(p.raft for p in self.peers), self.ledger.snapshot_index)
        progress = asyncio.ensure_future(self._report_progress(t0))
        try:
            await self.writes.commit(self.writes.barrier(), None, 'the readiness barrier')
        finally:
            progress.cancel()
        self.ready_seconds = time.monotonic() - t0
        self._ready.set()
        log.info('%s: RAFT ready in %.2f s (%s, term %s, applied index %d, %d writes applied)', self.name,
                 self.ready_seconds, self.role, self.node.term, self.ledger.applied_index, self.ledger.writes_applied)

    def _make_node(self) -> RaftLog:
        shrink_journal(os.path.join(self.dir, 'journal.bin'), self.durable)
        conf = SyncObjConf(**self.settings.syncobj,
                           # pysyncobj encrypts and authenticates every message (Fernet) with this
                           password=self.settings.password,
                           journalFile=os.path.join(self.dir, 'journal.bin'),
                           fullDumpFile=os.path.join(self.dir, 'dump.json'),
                           serializer=self.dump.serialize, deserializer=self.dump.deserialize,
                           onStateChanged=self._on_state_changed,
                           useFork=False, autoTick=True, dynamicMembershipChange=False,
                           bindAddress=self.settings.bind)
        node = RaftLog(self._on_commit, self.settings.address, [p.raft for p in self.peers], conf)
        if self.durable:   # the journal on disk before any message reflects it (runtime.raft.durable)
            node.make_durable(conf.journalFile, conf.fullDumpFile,
                              (lambda index: self.trace('journal', index)) if self.trace.enabled else None)
        return node

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
        for t in list(self._background):
            t.cancel()
        await self.applier.close(RaftNotReady(f'{self.name} is shutting down'))
        await self.snapshots.finish(CLOSE_SNAPSHOT_WAIT_S)   # cut short, a snapshot leaves tmp-* behind
        if (self.node is not None and self._ready.is_set() and self.ledger.applied_index > self.ledger.snapshot_index
                and self.snapshots.quick):
            try:   # a fresh snapshot makes the next start faster (only when quick: the log covers us)
                await asyncio.wait_for(asyncio.shield(self.snapshots.take(last=True)), CLOSE_SNAPSHOT_WAIT_S)
            except Exception:
                pass
        if self.node is not None:
            node, self.node = self.node, None
            join = node.destroy()
            if join is not None:
                await asyncio.to_thread(join, 2.0)
        await self.bodies.close()
        self.trace.close()
        self.applying.close()

    # -- the worker's hooks ------------------------------------------------------------------
    async def write(self, endpoint: str, parameters: dict, body: bytes,
                    request_id: Optional[str] = None) -> Tuple[Dict[str, Any], bytes]:
        """Order a ``@write`` request through RAFT; return its reply once applied here (``Writes.write``)."""
        await self._started.wait()
        if self._closing:
            raise RaftNotReady(f'{self.name} is shutting down')
        header, reply = await self.writes.write(endpoint, parameters, body, request_id)
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
        await self.writes.commit(self.writes.barrier(), self.options['write_timeout'], 'a strong read')

    def status(self) -> Dict[str, Any]:
        """role, term, commit_index, applied_index, writes_applied, leader, ... (JSON-able)."""
        st: Dict[str, Any] = {
            'role': self.role, 'term': None, 'commit_index': None, 'applied_index': self.ledger.applied_index,
            'writes_applied': self.ledger.writes_applied, 'writes_skipped': self.ledger.writes_skipped,
            'leader': None, 'leader_address': None,
            'ready': self._ready.is_set(), 'snapshot_index': self.ledger.snapshot_index,
            'address': self.settings.address, 'peers': {p.name: False for p in self.peers},
            'log_entries': None, 'payloads_stored': len(self.bodies),
            'payloads_fetched': self.applier.fetched, 'snapshots_installed': self.snapshots.installed,
            'proposals': {'entries': self._proposer.entries, 'records': self._proposer.records}
            if self._proposer else None,
            'encrypted': bool(self.settings.password), 'ready_seconds': self.ready_seconds,
        }
        node = self.node
        if node is not None:
            try:
                addr = node.leader_address()
                st['term'] = node.term
                st['commit_index'] = node.commit_index
                st['log_entries'] = node.log_size()
                st['role'] = 'leader' if node.is_leader() else self.role
                st['leader_address'] = addr
                st['leader'] = self._names.get(addr, addr)
                st['peers'] = {p.name: node.is_connected(p.raft) for p in self.peers}
            except Exception:   # racing pysyncobj's thread: report what we have
                pass
        return st
    async def control(self, header: Dict[str, Any], body: bytes) -> bytes:
        """A peer replica's ``Control`` call (the server checked its secret): see ``PeerControl``."""
        return await self.peer_control.answer(header, body)

    def _leading(self) -> bool:
        """Whether this node leads now and may propose (for ``PeerControl``)."""
        node = self.node
        return node is not None and self._proposer is not None and not self._closing and node.is_leader()

    def _propose(self, record: Record) -> 'asyncio.Future[Outcome]':
        assert self._proposer is not None
        return self._proposer.submit(record)

    def _leader_peer(self) -> Optional[PeerAddress]:
        """The peer that leads now, as our node sees it (None: we lead, or no leader)."""
        node = self.node
        try:
            addr = node.leader_address() if node is not None else None
        except Exception:
            return None
        return next((p for p in self.peers if p.raft == addr), None)

    def _spawn(self, coro: Any) -> asyncio.Task:
        """A background task, cancelled at close; its exception is retrieved (no 'never retrieved' noise)."""
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(lambda t: (self._background.discard(t), t.cancelled() or t.exception()))
        return t
    # -- pysyncobj's thread ------------------------------------------------------------------
    def _post(self, action: Action) -> None:
        self.applier.post_from_thread(action)

    def _on_commit(self, index: int, records: Sequence[Sequence[Any]]) -> None:
        recs = [Record.from_wire(r) for r in records]   # the log's plain tuples (see runtime.raft.records)
        self.dump.committed(index, recs)
        self._post(Apply(index, recs))

    def _on_tick(self) -> None:
        node = self.node
        if node is None:
            return
        last = node.last_applied
        if last != self._last_marked:
            self._last_marked = last
            self._post(Mark(last))

    def _on_state_changed(self, old: int, new: int) -> None:
        self.role = ROLES.get(new, str(new))
        if new == LEADER:
            log.info('%s: became the RAFT leader', self.name)


def make_consensus(server: Any) -> Consensus:
    """A stateful replica's RAFT node, from its spec (read once: :func:`settings_from_spec`).

    The worker keeps it as ``server.consensus`` before it awaits :meth:`Consensus.start`, so no
    request reaches the Executor around RAFT while the node starts.

    >>> server.consensus = make_consensus(server)   # doctest: +SKIP
    >>> await server.consensus.start()              # doctest: +SKIP
    """
    return Consensus(server, settings_from_spec(server.spec.raft, server.secret, server.name))
