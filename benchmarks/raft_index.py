"""RAFT indexing benchmark: one replica against three stateful (RAFT) replicas, side by side.

The Jina scale-out workload's indexing half: ``--docs`` TextDocs with random 128-d
embeddings posted to ``/index`` with ``request_size=100``. Prints the seconds of each
setup, the ratio (target: RAFT <= 2 x one replica at 100k docs), the seconds until all
three replicas hold every doc, and checks that they do. Then small writes (1 doc per
request, a window of 16) per second, one replica against three stateful ones.

    python benchmarks/raft_index.py                # 20k docs (about a minute on 2 cores)
    python benchmarks/raft_index.py --docs 100000  # the full target
    python benchmarks/raft_index.py --durability fsync,none --rounds 3   # durability settings side by side

Uses ``runtime.executors.exact_nn:ExactNNSearch`` when present, else a small array index
defined here. Numbers go in ``benchmarks/README.md``; this machine is shared, so compare
ratios from one run, not absolute times across runs.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np
from docarray import DocList
from docarray.documents import TextDoc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from orchestra_nb import Client, Deployment, Executor, requests, write  # noqa: E402


class ArrayIndex(Executor):
    """A minimal index: ids, texts and one growing float32 matrix."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.ids: List[str] = []
        self.texts: List[str] = []
        self.chunks: List[np.ndarray] = []

    @requests(on='/index')
    @write
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        self.ids.extend(docs.id)
        self.texts.extend(docs.text)
        self.chunks.append(np.stack([np.asarray(d.embedding, dtype=np.float32) for d in docs]))
        return DocList[TextDoc]()

    @requests(on='/count')
    def count(self, **kwargs) -> Dict[str, int]:
        return {'count': len(self.ids)}


def pick_executor() -> Any:
    try:
        from runtime.executors.exact_nn import ExactNNSearch
        return ExactNNSearch
    except ImportError:
        return ArrayIndex


def make_docs(n: int, dim: int, seed: int = 0) -> DocList[TextDoc]:
    emb = np.random.default_rng(seed).random((n, dim), dtype=np.float32)
    return DocList[TextDoc]([TextDoc(text=f'I am document {i}', embedding=emb[i]) for i in range(n)])


def counts(dep: Deployment) -> List[int]:
    """Docs held by each replica, asked directly (not through the gateway)."""
    out = []
    for r in dep.stages[0].replicas:
        host, port = r.address.rsplit(':', 1)
        c = Client(host=host, port=int(port))
        try:
            c.post('/count', inputs=None, timeout=60)
            out.append(int(c.last_results.get('count', -1)))
        finally:
            c.close()
    return out


def wait_counts(dep: Deployment, n: int, timeout: float = 600.0) -> List[int]:
    deadline = time.monotonic() + timeout
    while True:
        got = counts(dep)
        if all(c == n for c in got) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and every process under it, so far.

    Wall-clock ratios on a shared 2-core machine swing with the other users' load; the CPU
    the setup itself spends does not (``psutil``: replicas, gateway, fork server, client)."""
    import psutil
    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def apply_floor(uses: Any, docs: DocList[TextDoc]) -> float:
    """CPU seconds to apply ``docs`` alone, in this process: decode bodies of 100 docs and call the
    Executor's ``/index`` on each -- what every replica must do at least (the floor of RAFT's cost)."""
    from runtime.codec import decode_docs, encode_docs
    if isinstance(uses, str):
        from runtime.uses import load_executor_class
        uses = load_executor_class(uses)
    bodies = [encode_docs(docs[i:i + 100]) for i in range(0, len(docs), 100)]
    executor = uses()
    index = executor.index
    t0 = time.process_time()
    for body in bodies:
        index(decode_docs(body, DocList[TextDoc]))
    return time.process_time() - t0


def index_run(uses: Any, docs: DocList[TextDoc], replicas: int, stateful: bool,
              workspace: Optional[str], durability: Optional[str] = None, broadcast: bool = False) -> Dict[str, Any]:
    """Start a Deployment, index ``docs`` (request_size=100), check every replica's count.

    ``broadcast``: ``replicas`` shards with polling ALL instead -- each gets every doc from the
    gateway, without RAFT or disk: what replicating every doc costs this stack without consensus."""
    kwargs: Dict[str, Any] = dict(uses=uses, replicas=replicas, timeout_ready=120)
    if broadcast:
        kwargs.update(replicas=1, shards=replicas, polling='ALL')
    if stateful:
        kwargs.update(stateful=True, workspace=workspace)
        if durability:
            kwargs.update(durability=durability)
    with Deployment(name='indexer', **kwargs) as dep:
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        dep.post('/index', docs, request_size=100, timeout=600)
        index_s = time.perf_counter() - t0
        index_cpu = cpu_seconds() - c0
        held = wait_counts(dep, len(docs))
        all_s = time.perf_counter() - t0
        raft = [r.get('raft') for r in dep.status()['replicas'] if r.get('raft')]
    return {'index_s': index_s, 'index_cpu': index_cpu, 'all_hold_s': all_s, 'counts': held, 'raft': raft}


def small_writes(uses: Any, replicas: int, stateful: bool, workspace: Optional[str], n: int,
                 durability: Optional[str] = None) -> float:
    """Writes per second: ``n`` requests of one small doc, a window of 16."""
    kwargs: Dict[str, Any] = dict(uses=uses, replicas=replicas, timeout_ready=120)
    if stateful:
        kwargs.update(stateful=True, workspace=workspace)
        if durability:
            kwargs.update(durability=durability)
    docs = make_docs(n, 8, seed=1)
    with Deployment(name='writes', **kwargs) as dep:
        dep.post('/index', docs[:50], request_size=1)   # warm up
        t0 = time.perf_counter()
        dep.post('/index', docs, request_size=1, prefetch=16, timeout=600)
        return n / (time.perf_counter() - t0)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n\n')[0])
    ap.add_argument('--docs', type=int, default=20_000)
    ap.add_argument('--dim', type=int, default=128)
    ap.add_argument('--writes', type=int, default=2000, help='small writes for the writes/s figure (0: skip)')
    ap.add_argument('--executor', default=None, help="'package.module:Class' (default: ExactNNSearch if present)")
    ap.add_argument('--durability', default=None,
                    help="stateful runs with these durability settings, comma-separated and run in turn "
                         "(e.g. 'fsync,none': both, side by side, ratios to the first); default: the default")
    ap.add_argument('--rounds', type=int, default=1,
                    help='rounds, alternating the order of the setups; medians of the ratios')
    ap.add_argument('--broadcast', action='store_true',
                    help='also index into 3 shards with polling ALL each round (every replica gets every doc, '
                         'no RAFT, no disk): the cost of replication alone on this stack')
    args = ap.parse_args(argv)
    if args.durability:
        return compare_durability(args)
    uses = args.executor or pick_executor()
    name = uses if isinstance(uses, str) else f'{uses.__module__}:{uses.__name__}'
    print(f'executor {name}; {args.docs} docs x {args.dim}-d, request_size=100; {os.cpu_count()} CPUs')
    docs = make_docs(args.docs, args.dim)
    # as `orchestra bench` does: the workload held here would make every full GC of this client walk it
    gc.collect()
    gc.freeze()
    floor = sorted(apply_floor(uses, docs) for _ in range(3))[1]
    print(f'apply alone (decode + index, in process): {floor:.2f} CPU s per replica', flush=True)
    ws = tempfile.mkdtemp(prefix='raft-bench-')
    ok = True
    ones: List[float] = []
    threes: List[float] = []
    cpu1: List[float] = []
    cpu3: List[float] = []
    w1s: List[float] = []
    w3s: List[float] = []
    bcs: List[float] = []
    try:
        for k in range(args.rounds):   # alternating which setup goes first: the machine's load drifts
            order = ('one', 'three') if k % 2 == 0 else ('three', 'one')
            for which in order:
                if which == 'one':
                    one = index_run(uses, docs, 1, False, None)
                    ones.append(one['index_s'])
                    cpu1.append(one['index_cpu'])
                    ok = ok and one['counts'] == [args.docs]
                    print(f'round {k} replicas=1          : index {one["index_s"]:7.2f} s '
                          f'(CPU {one["index_cpu"]:.2f} s)'
                          f'   holds {one["counts"]}', flush=True)
                else:
                    three = index_run(uses, docs, 3, True, os.path.join(ws, f'index-{k}'))
                    threes.append(three['index_s'])
                    cpu3.append(three['index_cpu'])
                    ok = ok and all(c == args.docs for c in three['counts'])
                    print(f'round {k} replicas=3 stateful : index {three["index_s"]:7.2f} s '
                          f'(CPU {three["index_cpu"]:.2f} s)'
                          f'   all replicas hold '
                          f'every doc after {three["all_hold_s"]:.2f} s: {three["counts"]}', flush=True)
                    for r in three['raft']:
                        print(f'  raft: {r["role"]:9s} term {r["term"]} applied {r["applied_index"]} '
                              f'writes {r["writes_applied"]} entries {r["proposals"]["entries"]} '
                              f'records {r["proposals"]["records"]} fetched {r["payloads_fetched"]}')
            print(f'round {k} ratio RAFT / single  : {threes[-1] / ones[-1]:.2f}', flush=True)
            if args.broadcast:
                bc = index_run(uses, docs, 3, False, None, broadcast=True)
                bcs.append(bc['index_s'] / ones[-1])
                ok = ok and all(c == args.docs for c in bc['counts'])
                print(f'round {k} 3 shards, polling ALL: index {bc["index_s"]:7.2f} s (CPU {bc["index_cpu"]:.2f} s)'
                      f'   ratio to single {bcs[-1]:.2f}', flush=True)
            if args.writes:
                for which in order:
                    if which == 'one':
                        w1s.append(small_writes(uses, 1, False, None, args.writes))
                    else:
                        w3s.append(small_writes(uses, 3, True, os.path.join(ws, f'writes-{k}'), args.writes))
                print(f'round {k} small writes/s       : replicas=1 {w1s[-1]:7.0f}   replicas=3 stateful '
                      f'{w3s[-1]:7.0f}   ratio {w3s[-1] / w1s[-1]:.2f}', flush=True)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    ratios = sorted(t / o for t, o in zip(threes, ones))
    print(f'index RAFT / single, per round {", ".join(f"{r:.2f}" for r in ratios)}; '
          f'median {ratios[len(ratios) // 2]:.2f} (target <= 1.5); load {os.getloadavg()[0]:.1f}')
    cpu = sorted(t / o for t, o in zip(cpu3, cpu1))
    c1 = sorted(cpu1)[len(cpu1) // 2]
    print(f'index CPU seconds RAFT / single, per round {", ".join(f"{r:.2f}" for r in cpu)}; '
          f'median {cpu[len(cpu) // 2]:.2f} (all processes of the setup); the floor '
          f'(1 replica + 2 more applies) {(c1 + 2 * floor) / c1:.2f}')
    if bcs:
        bc = sorted(bcs)
        print(f'index 3 shards ALL (no RAFT, no disk) / single, per round {", ".join(f"{r:.2f}" for r in bc)}; '
              f'median {bc[len(bc) // 2]:.2f}')
    if w1s:
        wr = sorted(t / o for t, o in zip(w3s, w1s))
        print(f'small writes RAFT / single, per round {", ".join(f"{r:.2f}" for r in wr)}; '
              f'median {wr[len(wr) // 2]:.2f} (target >= 0.5)')
    print('CHECK all replicas hold every doc:', 'OK' if ok else 'FAILED')
    return 0 if ok else 1


def compare_durability(args: argparse.Namespace) -> int:
    """Stateful indexing (and small writes) with each ``--durability`` setting, alternating rounds."""
    modes = [m.strip() for m in args.durability.split(',') if m.strip()]
    uses = args.executor or pick_executor()
    print(f'durability {modes} x {args.rounds} rounds; {args.docs} docs x {args.dim}-d, request_size=100; '
          f'{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}')
    docs = make_docs(args.docs, args.dim)
    ws = tempfile.mkdtemp(prefix='raft-bench-')
    index: Dict[str, List[float]] = {m: [] for m in modes}
    writes: Dict[str, List[float]] = {m: [] for m in modes}
    ok = True
    try:
        for k in range(args.rounds):
            for m in (modes if k % 2 == 0 else modes[::-1]):
                run = index_run(uses, docs, 3, True, os.path.join(ws, f'index-{m}-{k}'), m)
                ok = ok and all(c == args.docs for c in run['counts'])
                index[m].append(run['index_s'])
                line = f'round {k} {m:6s}: index {run["index_s"]:7.2f} s (all hold {run["all_hold_s"]:.2f} s)'
                if args.writes:
                    writes[m].append(small_writes(uses, 3, True, os.path.join(ws, f'writes-{m}-{k}'),
                                                  args.writes, m))
                    line += f'   small writes {writes[m][-1]:6.0f}/s'
                print(line, flush=True)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    base = modes[0]
    for m in modes:
        med = sorted(index[m])[len(index[m]) // 2]
        base_med = sorted(index[base])[len(index[base]) // 2]
        line = f'{m:6s}: index median {med:.2f} s, ratio to {base} {med / base_med:.2f}'
        if writes[m]:
            wm = sorted(writes[m])[len(writes[m]) // 2]
            line += f'; small writes median {wm:.0f}/s, ratio {wm / sorted(writes[base])[len(writes[base]) // 2]:.2f}'
        print(line)
    print('CHECK all replicas hold every doc:', 'OK' if ok else 'FAILED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
