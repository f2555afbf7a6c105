"""durability='fsync': acknowledged RAFT writes are on disk on a majority before the ack.

Real replicas, a real pysyncobj cluster. The order of fsyncs and acks is read from the
replicas' own trace (``ORCHESTRA_DURABILITY_TRACE``, runtime/raft/durable.py): each replica
writes a line, stamped with the machine-wide monotonic clock, right after each real
``fsync``/``msync`` returns and right before each write's reply is sent.
"""
import collections
import glob
import os
import signal
import threading

import pytest
from docarray.documents import TextDoc

from conftest import wait_until
from orchestra_nb import Client, Deployment
from runtime.raft.durable import TRACE_ENV
from sample_executors import KV


def read_traces(folder):
    """replica file -> list of (event, t_ns, fields)."""
    out = {}
    for path in glob.glob(os.path.join(folder, '*.trace')):
        rows = []
        with open(path) as f:
            for line in f:
                parts = line.split()
                rows.append((parts[0], int(parts[1]), parts[2:]))
        out[os.path.basename(path)] = rows
    return out


def replica_of(trace_file):
    """'kv_rep-1-1234.trace' -> 'kv_rep-1' (a restarted replica has a new pid: same replica)."""
    return trace_file.rsplit('-', 1)[0]


def docs_for(n, big_every=2, prefix='d'):
    """Docs whose requests alternate large (> 2 KB: the body moves as a payload) and small (inline)."""
    return [TextDoc(id=f'{prefix}{i:04d}', text=f'value {i}' + ('.' * 3000 if i % big_every == 0 else ''))
            for i in range(n)]


def post_concurrently(port, docs, threads=4):
    """Post one doc per request from ``threads`` clients at once (so fsyncs can be shared)."""
    acked, errors = [], []

    def run(chunk):
        c = Client(port=port)
        try:
            for d in chunk:
                c.post('/index', d, timeout=60)
                acked.append(d.id)
        except Exception as e:
            errors.append(repr(e))
        finally:
            c.close()

    ts = [threading.Thread(target=run, args=(docs[k::threads],)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not any(t.is_alive() for t in ts), 'writers did not finish within 120 s'
    return acked, errors


@pytest.mark.slow
def test_every_acknowledged_write_is_on_disk_on_a_majority_before_the_ack(tmp_path):
    trace = str(tmp_path / 'trace')
    docs = docs_for(40)
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=str(tmp_path / 'ws'),
                    env={TRACE_ENV: trace}) as dep:
        assert dep.durability == 'fsync'   # the default
        acked, errors = post_concurrently(dep.port, docs)
        assert not errors and len(acked) == len(docs), errors
    traces = read_traces(trace)
    assert len({replica_of(f) for f in traces}) == 3, sorted(traces)
    journal = collections.defaultdict(list)     # replica -> [(t, index on disk)]
    payloads = collections.defaultdict(dict)    # replica -> {rid: t on disk}
    applied, acks = {}, []
    for f, rows in traces.items():
        rep = replica_of(f)
        for event, t, fields in rows:
            if event == 'journal':
                journal[rep].append((t, int(fields[0])))
            elif event == 'payloads':
                for rid in fields[0].split(','):
                    payloads[rep].setdefault(rid, t)
            elif event == 'applied':
                applied[(rep, fields[0])] = int(fields[1])
            elif event == 'ack':
                acks.append((rep, t, fields[0]))
    assert len(acks) == len(docs), f'{len(acks)} acks traced for {len(docs)} writes'
    large = 0
    for rep, t_ack, rid in acks:
        index = applied[(rep, rid)]
        on_disk = [r for r, flushes in journal.items() if any(t < t_ack and i >= index for t, i in flushes)]
        assert len(on_disk) >= 2, (f'write {rid} (log index {index}) was acknowledged by {rep} while its log '
                                   f'entry was on disk on {on_disk} only')
        if any(rid in p for p in payloads.values()):   # a large body: moved as a payload
            large += 1
            bodies = [r for r, p in payloads.items() if rid in p and p[rid] < t_ack]
            assert len(bodies) >= 2, f'write {rid} acknowledged by {rep} with its body on disk on {bodies} only'
    assert large == sum(len(d.text) > 2048 for d in docs), 'every large body was traced as synced'
    flushes = sum(len(v) for v in journal.values())
    print(f'{len(acks)} acks, {flushes} journal flushes on 3 replicas, {large} large bodies')


def test_durability_none_syncs_nothing(tmp_path):
    trace = str(tmp_path / 'trace')
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=str(tmp_path / 'ws'),
                    durability='none', env={TRACE_ENV: trace}) as dep:
        acked, errors = post_concurrently(dep.port, docs_for(6), threads=2)
        assert not errors and len(acked) == 6
    events = collections.Counter(e for rows in read_traces(trace).values() for e, _, _ in rows)
    assert events['ack'] == 6 and events['journal'] == 0 and events['payloads'] == 0, events


@pytest.mark.slow
def test_restart_after_sigkill_of_every_replica_keeps_every_acknowledged_write(tmp_path):
    ws = str(tmp_path / 'ws')
    cfg = {'snapshot_threshold': 16}   # compaction (dump + snapshot + journal cut) happens during the run
    acked, stop = [], threading.Event()
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=ws, raft_configuration=cfg) as dep:
        def writer(k):
            c = Client(port=dep.port)
            i = 0
            while not stop.is_set():
                d = TextDoc(id=f'w{k}-{i:05d}', text=f'v {i}' + ('.' * 3000 if i % 2 else ''))
                try:
                    c.post('/index', d, timeout=10)
                    acked.append(d.id)
                except Exception:   # refused around the kill: never acknowledged, so never checked
                    pass
                i += 1
            c.close()

        ts = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(3)]
        for t in ts:
            t.start()
        try:
            wait_until(lambda: len(acked) >= 60, 60, '60 acknowledged writes before the kill')
            for r in dep.stages[0].replicas:   # every replica at once, mid-write
                os.kill(r.process.pid, signal.SIGKILL)
            n_killed = len(acked)
            wait_until(lambda: all((r.get('raft') or {}).get('ready') for r in dep.status()['replicas'])
                       and len(acked) >= n_killed + 10, 90,
                       'the replicas to be restarted from the workspace and accept writes again')
        finally:
            stop.set()
            for t in ts:
                t.join(60)
        assert not any(t.is_alive() for t in ts)
    # a fresh Deployment on the same workspace: every acknowledged write is there, on every replica
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=ws, raft_configuration=cfg) as dep:
        for i, r in enumerate(dep.stages[0].replicas):
            host, port = r.address.rsplit(':', 1)
            c = Client(host=host, port=int(port))
            held = set(c.post('/ids').id)
            c.close()
            missing = set(acked) - held
            assert not missing, f'replica {i} lost {len(missing)} acknowledged writes: {sorted(missing)[:5]}'
    print(f'{len(acked)} writes acknowledged, all kept after SIGKILL of every replica')


def test_durability_is_checked_everywhere(tmp_path):
    with pytest.raises(ValueError, match=r"durability='sometimes': allowed: 'fsync', 'none'"):
        Deployment(durability='sometimes')
    from runtime.config import load_spec
    spec = load_spec('jtype: Deployment\nwith:\n  durability: none\n  stateful: true\n  replicas: 3\n')
    assert spec['with']['durability'] == 'none'
    from runtime.cli import build_parser
    ns = build_parser().parse_args(['deployment', '--uses', 'x:Y', '--durability', 'none'])
    assert ns.durability == 'none'
    with pytest.raises(SystemExit):
        build_parser().parse_args(['deployment', '--uses', 'x:Y', '--durability', 'sometimes'])
