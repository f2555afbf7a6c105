"""The QPS comparison: Jina's scale-out workload against a list of Deployment setups.

    >>> from runtime.bench import compare
    >>> result = compare(docs=5000, queries=200, setups='1,3s')   # doctest: +SKIP
    >>> print(result)                                              # a text table

The workload is the one of Jina's scale-out page: ``docs`` documents with random
``dim``-d embeddings indexed with ``request_size=100``, then ``queries`` random queries
sent with ``request_size=1`` and ``parameters={'limit': 100}``, ``concurrency`` requests
in flight (the client's window). Every setup gets the very same documents and queries.

For each setup: index seconds (the index post, first request to last reply), for a
stateful setup also the seconds until every replica holds every doc; search QPS and
p50/p99 latency per request as the client sees it; per replica the requests it served
(reads), the write requests it received, and the docs it holds; and correctness checks:

- ``same_count``: every replica of a stateful setup holds the same number of docs (all of
  them); a single replica holds all of them; replicas of a stateless setup hold disjoint
  parts that add up to all of them (so their search results are partial -- as in Jina).
- ``top_match``: a query equal to an indexed doc finds that doc first (checked on a few
  docs; meaningful where a replica holds every doc, i.e. one replica or stateful).

**Setups** (``--setups``): comma-separated tokens ``<replicas>[s][b[<size>]]`` --
``s`` stateful (RAFT), ``b`` dynamic batching on ``/search`` (``b16``: at most 16
requests per call; default 32): ``1,3s,1b,3sb``. Or JSON: a list of objects with
``replicas``, ``stateful``, ``batching`` (``true`` or ``{"max_batch_size", "max_wait_ms"}``),
``blas_threads``, ``name`` and ``options`` (more Deployment arguments).

The command line (``orchestra bench``) is :func:`add_arguments` + :func:`run_from_args`;
the notebook face with plots is ``orchestra_nb.bench``. Nothing here imports matplotlib,
ipywidgets or IPython.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from runtime.args import StrictParser
from runtime.uses import BUILTIN_EXECUTORS

DEFAULT_DOCS = 5000
DEFAULT_QUERIES = 200
DEFAULT_DIM = 128
DEFAULT_SETUPS = '1,3s'
DEFAULT_LIMIT = 100
DEFAULT_CONCURRENCY = 32
INDEX_REQUEST_SIZE = 100
TOP_MATCH_PROBES = 10
DEFAULT_USES = BUILTIN_EXECUTORS['exact_nn']


# --------------------------------------------------------------------------- setups

@dataclass
class Setup:
    """One Deployment configuration to measure."""
    replicas: int = 1
    stateful: bool = False
    batching: Optional[Dict[str, Any]] = None   # {'max_batch_size', 'max_wait_ms'} or None
    blas_threads: Optional[int] = None
    name: str = ''
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 1:
            raise ValueError(f'setup replicas={self.replicas!r}: must be an integer >= 1')
        if self.batching is True:
            self.batching = {}
        if self.batching is False:
            self.batching = None
        if self.batching is not None:
            if not isinstance(self.batching, dict):
                raise ValueError(f'setup batching={self.batching!r}: true, false or '
                                 '{"max_batch_size": n, "max_wait_ms": ms}')
            from runtime.batching import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_WAIT_MS, _check_batching
            self.batching = _check_batching(self.batching.get('max_batch_size', DEFAULT_MAX_BATCH_SIZE),
                                            self.batching.get('max_wait_ms', DEFAULT_MAX_WAIT_MS))
        if not isinstance(self.options, dict):
            raise ValueError(f'setup options={self.options!r}: must be a dict of Deployment arguments')
        if not self.name:
            self.name = self.default_name()

    def default_name(self) -> str:
        name = f'replicas={self.replicas}'
        if self.stateful:
            name += ' RAFT'
        if self.batching is not None:
            name += f' batch{self.batching["max_batch_size"]}'
        return name


_TOKEN = re.compile(r'^(\d+)((?:s|b\d*)*)$')


def parse_setups(spec: Union[str, Sequence[Any], None]) -> List[Setup]:
    """``'1,3s,1b'`` or a JSON list (see the module docstring) or a list of Setup/dict/str -> Setups.

    >>> [s.name for s in parse_setups('1,3s,1b16')]
    ['replicas=1', 'replicas=3 RAFT', 'replicas=1 batch16']
    """
    if spec is None:
        spec = DEFAULT_SETUPS
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith(('[', '{')):
            try:
                loaded = json.loads(text)
            except ValueError as e:
                raise ValueError(f'--setups: not valid JSON ({e})') from None
            return parse_setups(loaded if isinstance(loaded, list) else [loaded])
        tokens = [t.strip() for t in text.split(',') if t.strip()]
        if not tokens:
            raise ValueError('--setups is empty; e.g. "1,3s" (s: stateful, b: dynamic batching)')
        spec = tokens
    out = []
    for item in spec:
        if isinstance(item, Setup):
            out.append(item)
        elif isinstance(item, str):
            out.append(_parse_token(item))
        elif isinstance(item, dict):
            unknown = set(item) - {'replicas', 'stateful', 'batching', 'blas_threads', 'name', 'options'}
            if unknown:
                raise ValueError(f'setup {item!r}: unknown keys {sorted(unknown)}; allowed: replicas, '
                                 'stateful, batching, blas_threads, name, options')
            out.append(Setup(**item))
        else:
            raise ValueError(f'a setup is a string like "3s", a dict or a Setup, got {item!r}')
    if not out:
        raise ValueError('no setups given')
    names = [s.name for s in out]
    seen: Dict[str, int] = {}
    for i, s in enumerate(out):
        if names.count(s.name) > 1:
            seen[names[i]] = seen.get(names[i], 0) + 1
            s.name = f'{names[i]} #{seen[names[i]]}'
    return out


def _parse_token(token: str) -> Setup:
    m = _TOKEN.match(token.strip().lower())
    if not m:
        raise ValueError(f'setup {token!r}: expected <replicas>[s][b[<max batch size>]], e.g. "1", "3s", '
                         '"1b", "3sb16" (s: stateful/RAFT, b: dynamic batching on /search)')
    replicas, flags = int(m.group(1)), m.group(2)
    batching = None
    bm = re.search(r'b(\d*)', flags)
    if bm:
        batching = {'max_batch_size': int(bm.group(1))} if bm.group(1) else {}
    return Setup(replicas=replicas, stateful='s' in flags, batching=batching)


# --------------------------------------------------------------------------- results

@dataclass
class SetupResult:
    """What one setup measured (see the module docstring)."""
    name: str
    replicas: int
    stateful: bool
    batching: Optional[Dict[str, Any]]
    blas_threads: int
    index_seconds: Optional[float] = None
    replicated_seconds: Optional[float] = None
    search_seconds: Optional[float] = None
    search_qps: Optional[float] = None
    p50_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    startup_seconds: Optional[float] = None
    per_replica: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    checks: Dict[str, Any] = field(default_factory=dict)
    cpu_ms_per_query: Dict[str, float] = field(default_factory=dict)   # search phase: client, gateway, replicas
    index_cpu_seconds: Dict[str, float] = field(default_factory=dict)  # index phase (until replicated)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """No error and no failed check."""
        return self.error is None and all(v is not False for k, v in self.checks.items() if k in _PASS_FAIL)


_PASS_FAIL = ('same_count', 'top_match')


@dataclass
class BenchResult:
    """Every setup's figures, the workload and the machine; ``str()`` is a table."""
    setups: List[SetupResult]
    workload: Dict[str, Any]
    machine: Dict[str, Any]

    @property
    def ok(self) -> bool:
        """Every setup ran and passed its correctness checks."""
        return all(s.ok for s in self.setups)

    def __getitem__(self, name: str) -> SetupResult:
        for s in self.setups:
            if s.name == name:
                return s
        raise KeyError(f'no setup named {name!r}; setups: {", ".join(s.name for s in self.setups)}')

    def to_dict(self) -> Dict[str, Any]:
        return {'setups': [asdict(s) for s in self.setups], 'workload': dict(self.workload),
                'machine': dict(self.machine)}

    def to_json(self, indent: Optional[int] = 2) -> str:
        """``{"setups": [{"name", "replicas", "stateful", "index_seconds", "search_qps", "p50_ms",
        "p99_ms", "per_replica", ...}], "workload": {...}, "machine": {...}}``."""
        return json.dumps(self.to_dict(), indent=indent)

    def save_json(self, path: str) -> str:
        with open(path, 'w') as f:
            f.write(self.to_json())
            f.write('\n')
        return path

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> 'BenchResult':
        return cls([SetupResult(**s) for s in data['setups']], dict(data.get('workload') or {}),
                   dict(data.get('machine') or {}))

    def rows(self) -> List[Dict[str, str]]:
        """One formatted row per setup (what the text and HTML tables show)."""
        base = self.setups[0] if self.setups else None
        rows = []
        for s in self.setups:
            rel = ''
            if base is not None and s is not base and s.search_qps and base.search_qps:
                rel = f' ({s.search_qps / base.search_qps:.2f}x)'
            index = _fmt(s.index_seconds, '{:.2f}')
            if s.stateful and s.replicated_seconds is not None:
                index += f' / {s.replicated_seconds:.2f}'
            reads = '/'.join(str(r.get('reads', '?')) for r in s.per_replica.values()) or '-'
            writes = '/'.join(str(r.get('writes', '?')) for r in s.per_replica.values()) or '-'
            applied = '/'.join(str(r['applied_writes']) for r in s.per_replica.values() if 'applied_writes' in r)
            rows.append({
                'setup': s.name,
                'index s': index,
                'search QPS': _fmt(s.search_qps, '{:.1f}') + rel,
                'p50 ms': _fmt(s.p50_ms, '{:.2f}'),
                'p99 ms': _fmt(s.p99_ms, '{:.2f}'),
                'reads served, per replica': reads,
                'write requests received, per replica': writes,
                'writes applied, per replica': applied or '-',
                'CPU ms per query: client / gateway / replicas':
                    ' / '.join(f'{s.cpu_ms_per_query[k]:.2f}' for k in ('client', 'gateway', 'replicas')
                               if k in s.cpu_ms_per_query) or '-',
                'checks': _checks_text(s),
            })
        return rows

    def table(self) -> str:
        rows = self.rows()
        if not rows:
            return '(no setups)'
        cols = list(rows[0])
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
        line = '  '.join(c.ljust(widths[c]) for c in cols)
        out = [line, '  '.join('-' * widths[c] for c in cols)]
        out += ['  '.join(r[c].ljust(widths[c]) for c in cols) for r in rows]
        w = self.workload
        out.append('')
        out.append(f"{w.get('docs')} docs x {w.get('dim')}-d indexed with request_size={w.get('index_request_size')}; "
                   f"{w.get('queries')} queries, request_size=1, limit={w.get('limit')}, "
                   f"{w.get('concurrency')} in flight; uses {w.get('uses')}")
        m = self.machine
        out.append(f"machine: {m.get('cpus')} cores, {m.get('memory_gib')} GiB, {m.get('blas')}, "
                   f"GPU: {m.get('gpu') or 'none'}")
        out.append('index s for RAFT: until the reply / until every replica holds every doc; a write request '
                   'goes to the RAFT leader, which orders it, and every replica applies it; CPU ms per query: '
                   'the search phase, all replicas together')
        for s in self.setups:
            if s.error:
                out.append(f'{s.name}: ERROR {s.error.splitlines()[0]}')
        return '\n'.join(out)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return self.table()


def _fmt(v: Optional[float], pattern: str) -> str:
    return '-' if v is None else pattern.format(v)


def _checks_text(s: SetupResult) -> str:
    if s.error:
        return 'ERROR'
    parts = []
    for k in _PASS_FAIL:
        v = s.checks.get(k)
        parts.append(f'{k} {"ok" if v else ("n/a" if v is None else "FAIL")}')
    return ', '.join(parts)


# --------------------------------------------------------------------------- the workload

def make_workload(docs: int, queries: int, dim: int, seed: int = 0):
    """``(index docs, query docs)``: TextDocs with random float32 embeddings (seeded)."""
    from docarray import DocList
    from docarray.documents import TextDoc
    rng = np.random.default_rng(seed)
    emb = rng.random((docs, dim), dtype=np.float32)
    qemb = rng.random((queries, dim), dtype=np.float32)
    index_docs = DocList[TextDoc]([TextDoc(id=f'doc-{i}', text=f'I am document {i}', embedding=emb[i])
                                   for i in range(docs)])
    query_docs = DocList[TextDoc]([TextDoc(id=f'query-{i}', text=f'I am query {i}', embedding=qemb[i])
                                   for i in range(queries)])
    return index_docs, query_docs


def machine_info() -> Dict[str, Any]:
    """Cores, memory, BLAS and GPUs of this machine (for the record)."""
    import psutil
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count()
    blas = None
    try:
        from threadpoolctl import threadpool_info
        info = [i for i in threadpool_info() if i.get('user_api') == 'blas']
        if info:
            blas = f"{info[0].get('internal_api')} {info[0].get('version')}"
    except Exception:  # pragma: no cover - threadpoolctl is a dependency
        pass
    gpus: List[str] = []
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                gpus.append(name.decode() if isinstance(name, bytes) else str(name))
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    return {'cpus': cpus, 'cpu_count': os.cpu_count(),
            'memory_gib': round(psutil.virtual_memory().total / 2 ** 30, 1),
            'platform': platform.platform(), 'python': platform.python_version(),
            'numpy': np.__version__, 'blas': blas, 'gpu': ', '.join(gpus) or None}


class _NoBar:
    def __init__(self, *a, **k):
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _bar_factory(progress: Any) -> Callable[..., Any]:
    if progress is True:
        from tqdm import tqdm
        return lambda **kw: tqdm(file=sys.stderr, **kw)
    if not progress:
        return _NoBar
    if callable(progress):
        return progress
    raise ValueError(f'progress={progress!r}: True, False or a tqdm-like class')


async def _drive(client, on: str, batches: Sequence[Any], window: int, parameters: Optional[dict],
                 return_type: Any, bar) -> List[float]:
    """Send every batch as one request, ``window`` in flight; -> per-request seconds."""
    sem = asyncio.Semaphore(window)
    latencies = [0.0] * len(batches)

    async def one(i: int, batch) -> None:
        async with sem:
            t0 = time.perf_counter()
            await client.apost(on, batch, request_size=len(batch), parameters=parameters,
                               return_type=return_type)
            latencies[i] = time.perf_counter() - t0
        bar.update(len(batch))

    tasks = [asyncio.ensure_future(one(i, b)) for i, b in enumerate(batches)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    return latencies


def _replica_count(address: str) -> Optional[int]:
    """Docs held by one replica (its ``/count``), or None when it has no such endpoint."""
    from runtime.client import Client, RemoteError
    host, port = address.rsplit(':', 1)
    c = Client(host=host, port=int(port))
    try:
        c.post('/count', timeout=30)
        n = c.last_results.get('count')
        return int(n) if n is not None else None
    except (RemoteError, ConnectionError, TimeoutError):
        return None
    finally:
        c.close()


def _cpu_seconds(procs: Dict[str, Any]) -> Dict[str, float]:
    """User+system CPU seconds so far of the client, the gateway and the replicas (summed).

    CPU per query is what a busy shared machine does not distort much, unlike wall time.
    """
    import psutil
    out: Dict[str, float] = {}
    for role, pids in procs.items():
        total, seen = 0.0, False
        for pid in (pids if isinstance(pids, list) else [pids]):
            if not pid:
                continue
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
                seen = True
            except psutil.Error:
                pass
        if seen:
            out[role] = total
    return out


def _uses_or_default(uses: Any) -> Any:
    return DEFAULT_USES if uses is None else uses


def _uses_for(setup: Setup, uses: Any) -> Any:
    if setup.batching is None:
        return uses
    from runtime.batching import with_dynamic_batching
    from runtime.uses import load_executor_class
    cls = load_executor_class(uses)
    return with_dynamic_batching(cls, '/search', **setup.batching)


def run_setup(setup: Setup, index_docs, query_docs, uses: Any = None, limit: int = DEFAULT_LIMIT,
              concurrency: int = DEFAULT_CONCURRENCY, progress: Any = True, seed: int = 0,
              sync_timeout: float = 60.0) -> SetupResult:
    """Start one Deployment, run the workload against it, check it, stop it.

    The phases fill ``res`` as they go, so a failure keeps what was measured before it.
    """
    from runtime.client import Client
    from runtime.worker import default_blas_threads
    res = SetupResult(name=setup.name, replicas=setup.replicas, stateful=setup.stateful,
                      batching=setup.batching,
                      blas_threads=setup.blas_threads or default_blas_threads(setup.replicas))
    bars = _bar_factory(progress)
    workspace = tempfile.mkdtemp(prefix='orchestra-bench-')
    params = {'limit': limit}
    dep = client = None
    try:
        dep = _start(setup, _uses_or_default(uses), workspace, res)
        client = Client(port=dep.port)       # a client of its own, as in Jina's page
        counts = _index(dep, client, setup, index_docs, bars, sync_timeout, res)
        picks, found = _probe(client, index_docs, params, seed)   # also the warm-up before the timed phase
        before = dep.status()['replicas']
        _search(dep, client, setup, query_docs, concurrency, params, bars, before, res)
        res.per_replica = _per_replica(dep.status()['replicas'], before, counts)
        res.checks.update(_checks(setup, counts, len(index_docs), index_docs, picks, found))
    except Exception as e:
        res.error = f'{type(e).__name__}: {e}'
        if dep is not None:
            res.checks['logs'] = dep.logs(n=20)[-4000:]
    finally:
        if client is not None:
            client.close()
        if dep is not None:
            dep.close()
        shutil.rmtree(workspace, ignore_errors=True)
    return res


def _start(setup: Setup, uses: Any, workspace: str, res: SetupResult) -> Any:
    """Start the setup's Deployment; records ``startup_seconds``."""
    from runtime.deployment import Deployment
    kwargs = dict(name='bench', uses=_uses_for(setup, uses), replicas=setup.replicas,
                  stateful=setup.stateful, workspace=workspace, blas_threads=setup.blas_threads)
    kwargs.update(setup.options)
    dep = Deployment(**kwargs)
    t0 = time.perf_counter()
    dep.start()
    res.startup_seconds = time.perf_counter() - t0
    return dep


def _index(dep: Any, client: Any, setup: Setup, index_docs, bars: Callable[..., Any], sync_timeout: float,
           res: SetupResult) -> Dict[str, Optional[int]]:
    """Index every doc; for a stateful setup wait until every replica holds them all.

    Records ``index_seconds``, ``replicated_seconds`` and ``index_cpu_seconds``; returns the
    docs each replica holds (None where it has no ``/count``).
    """
    from runtime.loop import run_sync
    n_docs = len(index_docs)
    batches = [index_docs[i:i + INDEX_REQUEST_SIZE] for i in range(0, n_docs, INDEX_REQUEST_SIZE)]
    procs = {'client': os.getpid(), 'gateway': dep.gateway.pid if dep.gateway else None,
             'replicas': [r.process.pid for r in dep.stages[0].replicas if r.process]}
    bar = bars(total=n_docs, desc=f'{setup.name}: index', unit='doc', leave=False)
    try:
        cpu0 = _cpu_seconds(procs)
        t0 = time.perf_counter()
        run_sync(_drive(client, '/index', batches, client.prefetch, None, None, bar), None,
                 what=f'indexing {n_docs} docs into {setup.name}')
        res.index_seconds = time.perf_counter() - t0
    finally:
        bar.close()
    addresses = {r.name: r.address for r in dep.stages[0].replicas}
    counts = {name: _replica_count(a) for name, a in addresses.items()}
    if setup.stateful and None not in counts.values():     # until every replica applied every write
        deadline = time.monotonic() + sync_timeout
        while any(c != n_docs for c in counts.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
            counts = {name: _replica_count(a) for name, a in addresses.items()}
        if all(c == n_docs for c in counts.values()):
            res.replicated_seconds = time.perf_counter() - t0
    cpu1 = _cpu_seconds(procs)
    res.index_cpu_seconds = {k: round(cpu1[k] - cpu0[k], 3) for k in cpu1 if k in cpu0}
    return counts


def _probe(client: Any, index_docs, params: Dict[str, Any], seed: int) -> tuple:
    """Query a few indexed docs as they are; -> (the picked doc positions, the answers)."""
    from docarray import DocList

    from runtime.executors.exact_nn import QueryDoc
    n_docs = len(index_docs)
    rng = np.random.default_rng(seed + 1)
    picks = rng.choice(n_docs, size=min(TOP_MATCH_PROBES, n_docs), replace=False) if n_docs else []
    probes = DocList[QueryDoc]([QueryDoc(id=f'probe-{j}', text=index_docs[int(j)].text,
                                         embedding=index_docs[int(j)].embedding) for j in picks])
    found = client.post('/search', probes, request_size=1, parameters=params, return_type=QueryDoc)
    return picks, found


def _search(dep: Any, client: Any, setup: Setup, query_docs, concurrency: int, params: Dict[str, Any],
            bars: Callable[..., Any], before: List[Dict[str, Any]], res: SetupResult) -> None:
    """The timed phase: one query per request; records QPS, p50/p99 and CPU per query.

    ``before`` is the replicas' status just before (their pids).
    """
    from runtime.executors.exact_nn import QueryDoc
    from runtime.loop import run_sync
    procs = {'client': os.getpid(), 'gateway': dep.gateway.pid if dep.gateway else None,
             'replicas': [rec.get('pid') for rec in before]}
    cpu0 = _cpu_seconds(procs)
    qbatches = [query_docs[i:i + 1] for i in range(len(query_docs))]
    bar = bars(total=len(qbatches), desc=f'{setup.name}: search', unit='query', leave=False)
    try:
        t1 = time.perf_counter()
        lat = run_sync(_drive(client, '/search', qbatches, concurrency, params, QueryDoc, bar), None,
                       what=f'{len(qbatches)} queries to {setup.name}')
        res.search_seconds = time.perf_counter() - t1
    finally:
        bar.close()
    cpu1 = _cpu_seconds(procs)
    res.cpu_ms_per_query = {k: round((cpu1[k] - cpu0[k]) * 1e3 / len(qbatches), 3)
                            for k in cpu1 if k in cpu0}
    res.search_qps = len(qbatches) / res.search_seconds if res.search_seconds else None
    if lat:
        res.p50_ms = float(np.percentile(lat, 50) * 1e3)
        res.p99_ms = float(np.percentile(lat, 99) * 1e3)


def _per_replica(after: List[Dict[str, Any]], before: List[Dict[str, Any]],
                 counts: Dict[str, Optional[int]]) -> Dict[str, Dict[str, Any]]:
    """Per replica: reads in the timed phase, writes received, docs held, RAFT role, batches."""
    old = {rec['name']: rec for rec in before}
    out: Dict[str, Dict[str, Any]] = {}
    for rec in after:
        name = rec['name']
        reqs, reqs0 = rec['requests'], old.get(name, {}).get('requests', {})
        entry: Dict[str, Any] = {'reads': int(reqs.get('/search', 0)) - int(reqs0.get('/search', 0)),
                                 'writes': int(reqs.get('/index', 0)), 'docs': counts.get(name)}
        raft = rec.get('raft', {})
        if 'writes_applied' in raft:
            entry['applied_writes'] = raft['writes_applied']
        if raft.get('role'):
            entry['role'] = raft['role']
        batch = rec.get('batching', {}).get('/search')
        if batch:
            b0 = old.get(name, {}).get('batching', {}).get('/search', {})
            nb = batch['batches'] - b0.get('batches', 0)
            nr = batch['requests'] - b0.get('requests', 0)
            entry['batches'] = nb
            entry['mean_batch'] = round(nr / nb, 2) if nb else None
        out[name] = entry
    return out


def _checks(setup: Setup, counts: Dict[str, Optional[int]], n_docs: int, index_docs, picks, found) -> Dict[str, Any]:
    """``same_count`` and ``top_match`` (see the module docstring), with notes."""
    checks: Dict[str, Any] = {}
    held = list(counts.values())
    if None in held:
        checks['same_count'] = None
        checks['same_count_note'] = 'the Executor has no /count endpoint'
    elif setup.stateful or setup.replicas == 1:
        checks['same_count'] = all(c == n_docs for c in held)
    else:
        checks['same_count'] = None
        checks['same_count_note'] = (f'stateless replicas hold disjoint parts: {held} '
                                     f'(sum {sum(held)} of {n_docs})')
        if sum(held) != n_docs:
            checks['same_count'] = False
    hits = sum(1 for j, q in zip(picks, found) if len(q.matches) and q.matches[0].id == index_docs[int(j)].id)
    rate = hits / len(picks) if len(picks) else 1.0
    checks['top_match_rate'] = rate
    checks['top_match'] = (rate == 1.0) if (setup.stateful or setup.replicas == 1) else None
    checks['top_match_len'] = len(found[0].matches) if len(found) else None
    return checks


def compare(docs: int = DEFAULT_DOCS, queries: int = DEFAULT_QUERIES, dim: int = DEFAULT_DIM,
            setups: Union[str, Sequence[Any], None] = None, uses: Any = None, progress: Any = True,
            limit: int = DEFAULT_LIMIT, concurrency: int = DEFAULT_CONCURRENCY, seed: int = 0,
            result_cls: type = None) -> BenchResult:
    """Run the workload against each setup, one after the other; returns a :class:`BenchResult`.

    :param uses: the Executor (class or ``'pkg.mod:Class'``) serving ``/index`` and ``/search``;
        default :class:`~runtime.executors.exact_nn.ExactNNSearch`.
    :param progress: ``True`` (tqdm on stderr), ``False``, or a tqdm-like class (``tqdm.auto.tqdm``).
    """
    for value, what, minimum in ((docs, 'docs', 1), (queries, 'queries', 1), (dim, 'dim', 1),
                                 (limit, 'limit', 1), (concurrency, 'concurrency', 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f'{what}={value!r}: must be an integer >= {minimum}')
    parsed = parse_setups(setups)
    index_docs, query_docs = make_workload(docs, queries, dim, seed)
    # The workload (docs x TextDoc) would make every full GC of this client process walk it:
    # at 100k docs that was half the client's CPU. Freeze it out of the collector meanwhile.
    gc.collect()
    gc.freeze()
    try:
        return _compare(parsed, index_docs, query_docs, uses, limit, concurrency, progress, seed, result_cls,
                        docs, queries, dim)
    finally:
        gc.unfreeze()


def _compare(parsed, index_docs, query_docs, uses, limit, concurrency, progress, seed, result_cls,
             docs, queries, dim) -> BenchResult:
    uses = _uses_or_default(uses)
    uses_name = uses if isinstance(uses, str) else f'{uses.__module__}:{uses.__qualname__}'
    results = []
    overall = _bar_factory(progress)(total=len(parsed), desc='setups', unit='setup')
    try:
        for s in parsed:
            if hasattr(overall, 'set_postfix_str'):
                overall.set_postfix_str(s.name)
            results.append(run_setup(s, index_docs, query_docs, uses=uses, limit=limit,
                                     concurrency=concurrency, progress=progress, seed=seed))
            overall.update(1)
    finally:
        overall.close()
    workload = {'docs': docs, 'queries': queries, 'dim': dim, 'limit': limit, 'concurrency': concurrency,
                'index_request_size': INDEX_REQUEST_SIZE, 'query_request_size': 1, 'seed': seed,
                'uses': uses_name}
    return (result_cls or BenchResult)(results, workload, machine_info())


# --------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``orchestra bench``."""
    parser.add_argument('--docs', type=int, default=DEFAULT_DOCS, help=f'docs to index (default {DEFAULT_DOCS})')
    parser.add_argument('--queries', type=int, default=DEFAULT_QUERIES,
                        help=f'queries to send, one per request (default {DEFAULT_QUERIES})')
    parser.add_argument('--dim', type=int, default=DEFAULT_DIM, help=f'embedding size (default {DEFAULT_DIM})')
    parser.add_argument('--setups', default=DEFAULT_SETUPS,
                        help='comma-separated <replicas>[s][b[<size>]]: s stateful (RAFT), b dynamic batching '
                             f'on /search, e.g. "1,3s,1b"; or a JSON list (default "{DEFAULT_SETUPS}")')
    parser.add_argument('--uses', default=None,
                        help='Executor serving /index and /search, "package.module:Class" '
                             '(default: the built-in ExactNNSearch)')
    parser.add_argument('--limit', type=int, default=DEFAULT_LIMIT, help=f'matches per query (default {DEFAULT_LIMIT})')
    parser.add_argument('--concurrency', type=int, default=DEFAULT_CONCURRENCY,
                        help=f'search requests in flight (default {DEFAULT_CONCURRENCY})')
    parser.add_argument('--seed', type=int, default=0, help='random seed of the workload')
    parser.add_argument('--json', metavar='PATH', default=None, help='write the results as JSON to PATH')
    parser.add_argument('--plot', metavar='PATH', default=None, help='write a PNG of the results to PATH')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    return parser


def run_from_args(args: argparse.Namespace, plotter: Optional[Callable[[BenchResult, str], Any]] = None) -> int:
    """Run ``orchestra bench``: print the table, write ``--json``/``--plot``; 0 when every check passed.

    ``plotter(result, path)`` writes the PNG (``orchestra_nb.bench.save_plot``); ``--plot``
    without one is refused before anything runs. Returns 2 for bad arguments, 1 when a
    setup failed or a correctness check failed.
    """
    if getattr(args, 'plot', None) and plotter is None:
        print('orchestra bench: --plot needs a plotter (matplotlib lives in orchestra_nb): '
              'call run_from_args(args, plotter=orchestra_nb.bench.save_plot)', file=sys.stderr)
        return 2
    try:
        setups = parse_setups(args.setups)
        result = compare(docs=args.docs, queries=args.queries, dim=args.dim, setups=setups, uses=args.uses,
                         progress=not getattr(args, 'no_progress', False), limit=getattr(args, 'limit', DEFAULT_LIMIT),
                         concurrency=getattr(args, 'concurrency', DEFAULT_CONCURRENCY),
                         seed=getattr(args, 'seed', 0))
    except ValueError as e:
        print(f'orchestra bench: {e}', file=sys.stderr)
        return 2
    print(result.table())
    if args.json:
        result.save_json(args.json)
        print(f'wrote {args.json}')
    if args.plot:
        plotter(result, args.plot)
        print(f'wrote {args.plot}')
    for s in result.setups:
        if not s.ok:
            print(f'orchestra bench: setup {s.name!r} ' + (f'failed: {s.error}' if s.error else
                  f'failed a correctness check: {s.checks}'), file=sys.stderr)
    return 0 if result.ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m runtime.bench`` (no plots: those need orchestra_nb)."""
    parser = add_arguments(StrictParser(prog='python -m runtime.bench', description=__doc__.split('\n')[0]))
    return run_from_args(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
