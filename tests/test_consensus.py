"""Stateful replicas kept consistent with RAFT (pysyncobj): real processes, real TCP.

Waits are on the replicas' ``applied_index`` / ``writes_applied`` (never a fixed sleep),
each with a timeout and a message. Replicas are queried directly (not through the
gateway) to check what each one holds.
"""
import os
import threading
import time
import uuid

import grpc

import numpy as np
import pytest
from docarray import DocList
from docarray.documents import TextDoc
from docarray.index.backends.in_memory import InMemoryExactNNIndex

from conftest import free_ports, wait_until
from orchestra_nb import Client, Deployment, Executor, requests, write
from runtime import protocol
from runtime.codec import encode_docs
from runtime.raft import normalize_raft_configuration, valid_raft_keys


# -- the Jina docs' first example (imports changed only) ------------------------------
class MyStateStatefulExecutor(Executor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._docs_dict = {}

    @requests(on=['/index'])
    @write
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for doc in docs:
            self._docs_dict[doc.id] = doc

    @requests(on=['/search'])
    def search(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for doc in docs:
            self.logger.debug(f'Searching against {len(self._docs_dict)} documents')
            doc.text = self._docs_dict[doc.id].text


# -- the Jina docs' second example (imports changed only) -----------------------------
class QueryDoc(TextDoc):
    matches: DocList[TextDoc] = DocList[TextDoc]()


class ExactNNSearch(Executor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._index = InMemoryExactNNIndex[TextDoc]()

    @requests(on=['/index'])
    @write  # I add write decorator to indicate that calling this endpoint updates the inner state
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        self.logger.info(f'Indexing Document in index with {len(self._index)} documents indexed')
        self._index.index(docs)

    @requests(on=['/search'])
    def search(self, docs: DocList[QueryDoc], **kwargs) -> DocList[QueryDoc]:
        self.logger.info(f'Searching Document in index with {len(self._index)} documents indexed')
        for query in docs:
            docs, scores = self._index.find(query, search_field='embedding', limit=100)
            query.matches = docs


# KV: the key-value Executor the fault tests read back (tests/sample_executors.py)
from sample_executors import KV  # noqa: E402


# -- helpers --------------------------------------------------------------------------
def rafts(dep):
    """Each replica's raft record (None while it does not answer)."""
    return [r.get('raft') for r in dep.status()['replicas']]


def converged(dep, writes):
    """True when every replica is ready, applied ``writes`` writes, and all sit at the same index."""
    rs = rafts(dep)
    return (all(r and r['ready'] and r['writes_applied'] == writes for r in rs)
            and len({r['applied_index'] for r in rs}) == 1)


def wait_converged(dep, writes, timeout=30.0):
    wait_until(lambda: converged(dep, writes), timeout,
               f'every replica to apply {writes} writes (now: {[(r or {}).get("writes_applied") for r in rafts(dep)]})')


def direct(dep, i):
    """A Client talking to replica ``i`` itself."""
    host, port = dep.stages[0].replicas[i].address.rsplit(':', 1)
    return Client(host=host, port=int(port))


def leader_name(dep, after_term=None):
    """The one leader's name (None while there is none, or more than one claims it).

    ``after_term``: only a leader elected in a later term counts -- after a leader is killed,
    the supervisor may restart it fast enough to win the next election itself.
    """
    names = {r['name']: r.get('raft') for r in dep.status()['replicas']}
    leaders = [n for n, r in names.items() if r and r['role'] == 'leader'
               and (after_term is None or r['term'] > after_term)]
    return leaders[0] if len(leaders) == 1 else None


def leader_term(dep, name):
    return next(r['raft']['term'] for r in dep.status()['replicas'] if r['name'] == name and r.get('raft'))


# -- behaviour ------------------------------------------------------------------------
def test_first_example_converges_on_every_replica(tmp_path):
    ports = free_ports(3)
    d = Deployment(name='stateful_executor', uses=MyStateStatefulExecutor, replicas=3, stateful=True,
                   workspace=str(tmp_path / 'raft'), peer_ports=ports)
    with d:
        docs = DocList[TextDoc]([TextDoc(text=f'doc {i}') for i in range(50)])
        d.post('/index', docs, request_size=5)
        wait_converged(d, 10)
        st = rafts(d)
        assert sorted(r['role'] for r in st) == ['follower', 'follower', 'leader']
        assert len({r['leader'] for r in st}) == 1 and len({r['term'] for r in st}) == 1
        assert all(r['commit_index'] >= r['applied_index'] > 0 for r in st)
        assert {r['address'] for r in st} == {f'127.0.0.1:{p}' for p in ports}
        for i in range(3):   # every replica holds every doc
            c = direct(d, i)
            out = c.post('/search', DocList[TextDoc]([TextDoc(id=x.id) for x in docs]))
            c.close()
            assert out.text == docs.text
        # a per-request strong read, through the gateway, sees a write that just completed
        c = Client(port=d.port)
        for i in range(5):
            c.post('/index', TextDoc(id=f'new{i}', text=f'fresh {i}'))
            assert c.post('/search', TextDoc(id=f'new{i}'), consistency='strong').text == [f'fresh {i}']
        c.close()


def test_exact_nn_search_example_small(tmp_path):
    port, *peer_ports = free_ports(4)
    d = Deployment(name='indexer', port=port, uses=ExactNNSearch, workspace=str(tmp_path / 'raft'),
                   replicas=3, stateful=True, peer_ports=peer_ports,
                   raft_configuration={'snapshot_threshold': 3})   # snapshots of docarray's index too
    with d:
        c = Client(port=port)
        rng = np.random.default_rng(0)
        index_docs = DocList[TextDoc](
            [TextDoc(text=f'I am document {i}', embedding=rng.random(128)) for i in range(300)])
        c.post(on='/index', inputs=index_docs, request_size=100)
        wait_converged(d, 3)
        wait_until(lambda: all(r['snapshot_index'] > 0 for r in rafts(d)), 30,
                   'every replica to snapshot its InMemoryExactNNIndex')
        search_da = DocList[QueryDoc](
            [QueryDoc(text=f'I am document {i}', embedding=index_docs[i].embedding) for i in range(3)])
        responses = c.post(on='/search', inputs=search_da, request_size=1)
        assert len(responses) == 3
        for i, res in enumerate(responses):
            assert len(res.matches) == 100
            assert res.matches[0].id == index_docs[i].id
        for i in range(3):   # each replica answers from all 300 docs
            r = direct(d, i)
            out = r.post('/search', search_da[:1])
            r.close()
            assert out[0].matches[0].id == index_docs[0].id and len(out[0].matches) == 100
        c.close()


@pytest.mark.slow
def test_restart_from_workspace_keeps_state_and_accepts_writes(tmp_path):
    ws = str(tmp_path / 'ws')
    cfg = {'snapshot_threshold': 4}   # compact the log (and snapshot the Executor) during the run
    # long texts: requests over 2 KB move over gRPC, the others ride inside their RAFT record
    docs = [TextDoc(id=f'd{i}', text=f'text {i}' + ('.' * 1500 if i % 4 < 2 else '')) for i in range(60)]
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=ws, raft_configuration=cfg) as dep:
        dep.post('/index', DocList[TextDoc](docs[:40]), request_size=2)
        wait_converged(dep, 20)
        wait_until(lambda: all(r['snapshot_index'] > 0 for r in rafts(dep)), 30,
                   'every replica to write a snapshot (log compaction)')
        ports = dep.peer_ports_used
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=ws, raft_configuration=cfg) as dep:
        assert dep.peer_ports_used == ports            # omitted peer_ports: remembered in the workspace
        for i in range(3):                             # caught up before start() returned
            c = direct(dep, i)
            held = c.post('/ids')
            c.close()
            assert held.id == sorted(d.id for d in docs[:40]), f'replica {i} after restart'
        assert all(r['writes_applied'] == 20 for r in rafts(dep))
        dep.post('/index', DocList[TextDoc](docs[40:]), request_size=5)
        wait_converged(dep, 24)
        for i in range(3):
            c = direct(dep, i)
            got = c.post('/get', DocList[TextDoc]([TextDoc(id=d.id) for d in docs]))
            c.close()
            assert got.text == [d.text for d in docs]


def leftovers(ws):
    """Temporary files and folders under a workspace's RAFT folders (snapshot or transfer cut short)."""
    out = []
    for folder, dirs, files in os.walk(ws):
        out += [os.path.join(folder, n) for n in dirs + files
                if n.startswith(('tmp-', 'incoming-')) or n.endswith('.tmp')]
    return out


def test_whole_cluster_restarts_from_its_workspace_again_and_again(tmp_path):
    """pysyncobj < 0.3.16 randomly failed to start after a complete cluster reboot (its issues
    201/202): restart all three replicas from the workspace four times in a row, writing each
    time; every start holds all writes so far, and a clean close leaves nothing temporary."""
    ws = str(tmp_path / 'ws')
    cfg = {'snapshot_threshold': 4}   # compaction and snapshots between the restarts
    written = []
    for run in range(4):
        with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=ws,
                        raft_configuration=cfg) as dep:
            for i in range(3):   # caught up with everything written before this start
                c = direct(dep, i)
                held = c.post('/ids')
                c.close()
                assert held.id == sorted(d.id for d in written), f'run {run}: replica {i} after restart'
            batch = [TextDoc(id=f'r{run}-{k}', text=f'run {run} doc {k}' + ('.' * 3000 if k % 2 else ''))
                     for k in range(12)]
            dep.post('/index', DocList[TextDoc](batch), request_size=2)
            written += batch
            want = 6 * (run + 1)
            wait_until(lambda: all(r and r['ready'] and r['writes_applied'] == want for r in rafts(dep)),  # noqa: B023
                       30, f'run {run}: every replica to apply its writes')
        assert leftovers(ws) == [], f'run {run}: temporary files after a clean close'


def _bytes_under(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_a_compacted_replica_workspace_stays_within_twice_its_state(tmp_path):
    """Journal, dump, bodies and snapshots together: at most 2x the state a snapshot holds
    (one snapshot kept, the journal cut at start, bodies a snapshot covers dropped)."""
    ws = str(tmp_path / 'ws')
    cfg = {'snapshot_threshold': 4, 'trailing_logs': 0}
    for run in range(2):   # the second start cuts the journal and drops emptied body segments
        with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=ws, raft_configuration=cfg) as dep:
            docs = [TextDoc(id=f'r{run}-{k}', text='x' * 4000 + str(k)) for k in range(100)]
            dep.post('/index', DocList[TextDoc](docs), request_size=5)
            wait_until(lambda: all(r and r['writes_applied'] == 20 * (run + 1) for r in rafts(dep)), 30,  # noqa: B023
                       'every replica to apply the writes')
    for rep in range(3):
        folder = os.path.join(ws, 'kv', '.raft', 'shard-0', f'rep-{rep}')
        snapshots = [n for n in os.listdir(os.path.join(folder, 'snapshots')) if not n.endswith('.tar')]
        assert len(snapshots) == 1, f'rep-{rep} keeps {snapshots}'
        state = _bytes_under(os.path.join(folder, 'snapshots', snapshots[0]))
        assert state > 700_000   # 200 docs of 4 KB
        assert _bytes_under(folder) <= 2 * state, f'rep-{rep}: {_bytes_under(folder)} bytes for a {state}-byte state'


@pytest.mark.slow
def test_leader_killed_during_writes_loses_no_acknowledged_write(tmp_path):
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=str(tmp_path),
                    raft_configuration={'snapshot_threshold': 16}) as dep:
        old_leader = wait_until(lambda: leader_name(dep), 20, 'a RAFT leader')
        acked, failed, stop = [], [], threading.Event()

        def writer():
            c = Client(port=dep.port)
            i = 0
            while not stop.is_set():
                doc = TextDoc(id=f'w{i:05d}', text=f'value {i}' + ('.' * 3000 if i % 2 else ''))
                try:
                    c.post('/index', doc, timeout=30)
                    acked.append(doc.id)
                except Exception as e:   # allowed during the failover; must not be acknowledged
                    failed.append((doc.id, repr(e)))
                i += 1
            c.close()

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            wait_until(lambda: len(acked) >= 30, 30, '30 acknowledged writes before the kill')
            plan = next(r for r in dep.stages[0].replicas if r.name == old_leader)
            old_pid = plan.process.pid
            old_term = leader_term(dep, old_leader)
            before = len(acked)
            t_kill = time.monotonic()
            plan.process.kill()   # SIGKILL
            new_leader = wait_until(lambda: leader_name(dep, after_term=old_term), 20,
                                    f'a leader elected after term {old_term}')
            failover = time.monotonic() - t_kill
            wait_until(lambda: len(acked) >= before + 30, 30, 'writes to continue after the leader died')
            wait_until(lambda: plan.process.pid != old_pid and
                       any(r['name'] == old_leader and (r.get('raft') or {}).get('ready')
                           for r in dep.status()['replicas']), 60,
                       'the supervisor to restart the killed replica and that replica to catch up')
        finally:
            stop.set()
            t.join(60)
        assert not t.is_alive()
        print(f'failover: new leader {new_leader} {failover:.2f} s after SIGKILL of {old_leader}; '
              f'{len(acked)} writes acknowledged, {len(failed)} failed')
        wait_until(lambda: len({r['applied_index'] for r in rafts(dep)}) == 1
                   and all(r['ready'] for r in rafts(dep)), 60, 'all replicas at the same applied index')
        for i in range(3):
            c = direct(dep, i)
            held = set(c.post('/ids').id)
            c.close()
            missing = set(acked) - held
            assert not missing, f'replica {i} lost acknowledged writes {sorted(missing)[:10]}'


def test_strong_read_consistency_and_raft_password(tmp_path):
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=str(tmp_path),
                    read_consistency='strong', raft_password='correct horse battery staple') as dep:
        for i in range(20):   # sequential reads spread over every replica, followers included
            dep.post('/index', TextDoc(id=f'k{i}', text=f'v{i}'))
            assert dep.post('/get', TextDoc(id=f'k{i}')).text == [f'v{i}']
        st = rafts(dep)
        assert all(r['encrypted'] for r in st)
        assert sum(r['requests'].get('/get', 0) for r in dep.status()['replicas']) == 20
        assert all(r['requests'].get('/get', 0) > 0 for r in dep.status()['replicas'])
        # a request retried on another replica (same request_id, as the gateway resends it) applies once
        wait_converged(dep, 20)
        frame = protocol.pack({'endpoint': '/index', 'parameters': {}, 'request_id': uuid.uuid4().hex},
                              encode_docs(DocList[TextDoc]([TextDoc(id='once', text='x' * 3000)])))
        for i in (0, 1, 2):
            with grpc.insecure_channel(dep.stages[0].replicas[i].address) as ch:
                header, _ = protocol.unpack(ch.unary_unary(protocol.CALL)(frame, timeout=30))
            assert header['ok'], header
        wait_converged(dep, 21)


def gateway_leader(dep):
    """The replica the gateway sends writes to (it learns the leader from the replicas' Info)."""
    shard = dep.status()['gateway']['nodes'][dep.name]['shards'][0]
    return next((r['name'] for r in shard if r.get('leads')), None)


def test_writes_go_to_the_raft_leader_and_reads_spread(tmp_path):
    """The gateway sends each @write to the leader (the fewest hops), reads idle first to any replica."""
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=str(tmp_path)) as dep:
        for attempt in range(3):   # a leader change mid-way (a starved CI machine) sends a few elsewhere: again
            leader = wait_until(lambda: leader_name(dep), 20, 'a RAFT leader')
            wait_until(lambda leader=leader: gateway_leader(dep) == leader, 10,
                       f'the gateway to learn that {leader} leads')
            term = leader_term(dep, leader)
            before = {r['name']: dict(r['requests']) for r in dep.status()['replicas']}
            dep.post('/index', DocList[TextDoc]([TextDoc(id=f'k{attempt}-{i}', text='v') for i in range(40)]),
                     request_size=1, prefetch=8)
            for i in range(30):
                dep.post('/get', TextDoc(id=f'k{attempt}-{i}'))
            after = {r['name']: dict(r['requests']) for r in dep.status()['replicas']}
            if leader_name(dep) == leader and leader_term(dep, leader) == term:
                break
        writes = {n: after[n].get('/index', 0) - before[n].get('/index', 0) for n in after}
        reads = {n: after[n].get('/get', 0) - before[n].get('/get', 0) for n in after}
        assert writes[leader] == 40 and sum(writes.values()) == 40, writes
        assert all(n > 0 for n in reads.values()), reads
        wait_converged(dep, 40 * (attempt + 1))


# -- validation and configuration -------------------------------------------------------------
@pytest.mark.parametrize('replicas', [1, 2])
def test_stateful_needs_three_replicas(replicas):
    with pytest.raises(ValueError, match=r'replicas >= 3.*RAFT'):
        Deployment(uses=KV, replicas=replicas, stateful=True)


@pytest.mark.parametrize('kwargs, message', [
    ({'peer_ports': [7001, 7002]}, r'2 ports but replicas=3'),
    ({'peer_ports': [7001, 7002, 7001]}, r'more than once'),
    ({'peer_ports': [7001, 7002, 'x']}, r'not a port'),
    ({'peer_ports': 7001}, r'a list of ports'),
    ({'peer_ports': [7001, 7002, 7003], 'shards': 2}, r'is a list but shards=2.*dict'),
    ({'peer_ports': {0: [7001, 7002, 7003]}, 'shards': 2}, r'no ports for shard\(s\) \[1\]'),
    ({'peer_ports': {0: [7001, 7002, 7003], 5: [7004, 7005, 7006]}, 'shards': 2}, r'shard 5'),
    ({'raft_configuration': {'heartbeat_timout': 100}}, r"unknown key 'heartbeat_timout'.*did you mean "
                                                         r"'heartbeat_timeout'.*Valid keys: .*snapshot_threshold"),
    ({'raft_configuration': {'journalFile': '/tmp/x'}}, r'set by orchestra-nb'),
    ({'raft_configuration': {'password': 'x'}}, r'raft_password'),
    ({'raft_configuration': {'heartbeat_timeout': 'soon'}}, r'duration'),
    ({'raft_configuration': {'heartbeat_timeout': 50, 'commit_timeout': 100}}, r'3 x commit_timeout'),
    ({'raft_configuration': ['heartbeat_timeout']}, r'must be a dict'),
    ({'raft_password': ''}, r'non-empty'),
])
def test_stateful_validation_errors(kwargs, message):
    kwargs = dict({'uses': KV, 'replicas': 3, 'stateful': True}, **kwargs)
    with pytest.raises(ValueError, match=message):
        Deployment(**kwargs)


def test_raft_configuration_mapping():
    conf, opts = normalize_raft_configuration({
        'heartbeat_timeout': 500, 'ElectionTimeout': '2s', 'commit_timeout': '50ms',
        'snapshot_interval': 30, 'snapshot_threshold': 100, 'batch_applych': True,
        'leader_lease_timeout': 1500, 'max_append_entries': 8, 'trailing_logs': 10,
        'LogLevel': 'info', 'connectionRetryTime': 0.25})
    assert conf['raftMinTimeout'] == 0.5 and conf['raftMaxTimeout'] == 2.0
    assert conf['appendEntriesPeriod'] == 0.05 and conf['leaderFallbackTimeout'] == 1.5
    assert conf['logCompactionMinTime'] == 30.0 and conf['logCompactionMinEntries'] == 100
    assert conf['appendEntriesUseBatch'] is True and conf['connectionRetryTime'] == 0.25
    assert opts == dict(opts, max_append_entries=8, trailing_logs=10, log_level='INFO')
    # defaults tuned for latency: no per-heartbeat batching; pysyncobj's own names pass through
    default, _ = normalize_raft_configuration(None)
    assert default['appendEntriesUseBatch'] is False
    assert normalize_raft_configuration({'raftMinTimeout': 0.6})[0]['raftMaxTimeout'] > 0.6
    assert {'heartbeat_timeout', 'snapshot_threshold', 'trailing_logs', 'raftMinTimeout'} <= set(valid_raft_keys())
    with pytest.raises(ValueError, match='twice'):
        normalize_raft_configuration({'heartbeat_timeout': 500, 'raftMinTimeout': 0.5})


def test_plan_gives_each_replica_its_raft_settings(tmp_path):
    dep = Deployment(name='kv', uses=KV, replicas=3, shards=2, stateful=True, workspace=str(tmp_path),
                     peer_ports={0: [7101, 7102, 7103], '1': [7104, 7105, 7106]},
                     raft_configuration={'heartbeat_timeout': 600, 'snapshot_threshold': 50})
    plan = dep.stage_plan()
    cfgs = [[r.spec.raft for r in shard] for shard in plan.shards]
    assert [c.address for c in cfgs[1]] == ['127.0.0.1:7104', '127.0.0.1:7105', '127.0.0.1:7106']
    assert [p.raft for p in cfgs[0][0].peers] == ['127.0.0.1:7102', '127.0.0.1:7103']
    assert all(c.bind.startswith('127.0.0.1:') for s in cfgs for c in s)   # never 0.0.0.0 by default
    assert cfgs[0][0].conf['raftMinTimeout'] == 0.6
    assert cfgs[0][0].conf['logCompactionMinEntries'] == 50
    assert len({c.dir for s in cfgs for c in s}) == 6
    assert plan.secret_file == str(tmp_path / 'kv' / '.raft' / 'secret')   # the secret is kept there
    assert (tmp_path / 'kv' / '.raft').stat().st_mode & 0o777 == 0o700
    grpc = {p.grpc for p in cfgs[0][0].peers}
    assert grpc == {f'127.0.0.1:{r.spec.port}' for r in plan.shards[0][1:]}


def test_payload_and_snapshot_stores(tmp_path):
    from runtime.raft import PayloadStore, SnapshotStore
    store = PayloadStore(str(tmp_path / 'payloads'))
    a, b, c = (uuid.uuid4().hex for _ in range(3))
    for rid in (a, b, c):
        store.put(rid, rid.encode() * 10)
    store.applied(a, 5)
    store.applied(b, 9)
    assert store.get(a) == a.encode() * 10 and store.cached(a) is None   # applied: disk only
    with pytest.raises(ValueError):
        store.put('../../etc/passwd', b'x')                              # ids from peers are checked
    again = PayloadStore(str(tmp_path / 'payloads'))                     # a restart finds them all
    assert again.get(b) == b.encode() * 10 and len(again) == 3
    assert again.gc(upto_index=5) == 1 and again.get(a) is None and again.get(b) and again.get(c)
    snaps = SnapshotStore(str(tmp_path / 'snaps'))
    tmp = snaps.new_tmp()
    (tmp_path / 'snaps' / tmp.rsplit('/', 1)[1] / 'state').write_bytes(b'state')
    (tmp_path / 'snaps' / tmp.rsplit('/', 1)[1] / 'meta.json').write_text('{"index": 7}')
    snaps.commit(tmp, 7)
    other = SnapshotStore(str(tmp_path / 'peer'))                        # a transfer to a peer
    index, path = other.unpack(snaps.tar(7))
    assert index == 7 and other.latest() == (7, path) and open(f'{path}/state', 'rb').read() == b'state'


def test_second_deployment_on_the_same_workspace_is_refused(tmp_path):
    ws = str(tmp_path)
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=ws) as dep:
        dep.post('/index', TextDoc(id='a', text='b'))
        other = Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=ws, timeout_ready=20)
        with pytest.raises(Exception, match='in use by another running replica'):
            other.start()
        assert dep.post('/get', TextDoc(id='a')).text == ['b']   # the first one is untouched


def test_jina_volumes_is_the_stateful_workspace_across_a_restart(tmp_path):
    """Jina's `volumes=['HOST:/workspace']` on a stateful Deployment: the host folder holds the state."""
    volumes = [f'{tmp_path / "vol"}:/workspace/raft']
    docs = DocList[TextDoc]([TextDoc(id=f'v{i}', text=f'kept {i}') for i in range(6)])
    with Deployment(name='vol', uses=MyStateStatefulExecutor, replicas=3, stateful=True, volumes=volumes) as dep:
        assert dep.workspace == str(tmp_path / 'vol')
        dep.post('/index', docs, request_size=2)
    assert (tmp_path / 'vol').is_dir() and any((tmp_path / 'vol').iterdir())
    with Deployment(name='vol', uses=MyStateStatefulExecutor, replicas=3, stateful=True, volumes=volumes) as dep:
        out = dep.post('/search', DocList[TextDoc]([TextDoc(id=d.id) for d in docs]), consistency='strong')
        assert out.text == [d.text for d in docs]
