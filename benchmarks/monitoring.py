"""Monitoring benchmark: the cost of ``monitoring=True`` on the echo and search request paths.

Side by side in one run: for each workload, a Deployment with monitoring off and one with
monitoring on (both started up front, both replicas=1), measured alternately each round
(off, on, off, on, ...), so load on the shared machine hits both alike. Reports each
round's requests/s and CPU per request (gateway + replicas, psutil: what a busy machine hardly
distorts), the on/off ratios per round and their medians, and the load average.
Prometheus is not scraping during the run (a scrape costs the scraped process a few ms
per interval, not per request).

    python benchmarks/monitoring.py [--requests 2000] [--queries 500] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import psutil
from docarray import DocList
from docarray.documents import TextDoc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestra_nb import Deployment  # noqa: E402
from orchestra_nb.executors import ExactNNSearch  # noqa: E402

WINDOW = 16


def _server_cpu_s(dep: Deployment) -> float:
    """CPU seconds used so far by the gateway and the replicas (what monitoring adds to)."""
    pids = [dep.gateway.pid] + [r['pid'] for r in dep.status()['replicas']]
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def measured(dep: Deployment, run) -> tuple:
    """-> (requests/s, CPU µs per request of gateway + replicas)."""
    cpu = _server_cpu_s(dep)
    t0 = time.perf_counter()
    n = run()
    rate = n / (time.perf_counter() - t0)
    return rate, (_server_cpu_s(dep) - cpu) / n * 1e6


def echo_rate(dep: Deployment, docs: DocList) -> tuple:
    def run() -> int:
        assert len(dep.post('/echo', docs, request_size=1, prefetch=WINDOW)) == len(docs)
        return len(docs)
    return measured(dep, run)


def search_rate(dep: Deployment, queries: DocList) -> tuple:
    def run() -> int:
        out = dep.post('/search', queries, request_size=1, prefetch=WINDOW, parameters={'limit': 10})
        assert len(out) == len(queries)
        return len(queries)
    return measured(dep, run)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    ap.add_argument('--requests', type=int, default=2000, help='echo requests per measurement (1 doc each)')
    ap.add_argument('--queries', type=int, default=500, help='search queries per measurement (1 per request)')
    ap.add_argument('--docs', type=int, default=10_000, help='indexed docs (dim 128) for search')
    ap.add_argument('--rounds', type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    echo_docs = DocList[TextDoc]([TextDoc(text='hello') for _ in range(args.requests)])
    index = DocList[TextDoc]([TextDoc(id=str(i), embedding=v)
                              for i, v in enumerate(rng.standard_normal((args.docs, 128)).astype(np.float32))])
    queries = DocList[TextDoc]([TextDoc(embedding=v)
                                for v in rng.standard_normal((args.queries, 128)).astype(np.float32)])
    print(f'load average before: {os.getloadavg()}')
    for workload, uses, rate, data in (('echo', None, echo_rate, echo_docs),
                                       ('search', ExactNNSearch, search_rate, queries)):
        deps = {flag: Deployment(name=f'{workload}-{"on" if flag else "off"}', uses=uses, monitoring=flag).start()
                for flag in (False, True)}
        try:
            for dep in deps.values():
                if workload == 'search':
                    dep.post('/index', index, request_size=1000)
                rate(dep, data[:100])   # warm up
            ratios, cpu_ratios, rows = [], [], []
            for r in range(args.rounds):
                (off, off_cpu), (on, on_cpu) = rate(deps[False], data), rate(deps[True], data)
                ratios.append(on / off)
                cpu_ratios.append(on_cpu / off_cpu)
                rows.append(f'  round {r + 1}: off {off:5.0f} req/s {off_cpu:5.0f} µs CPU/req, on {on:5.0f} req/s '
                            f'{on_cpu:5.0f} µs CPU/req; on/off throughput {on / off:.3f}, CPU {on_cpu / off_cpu:.3f}')
            print(f'{workload}:')
            print('\n'.join(rows))
            print(f'  median on/off: throughput {statistics.median(ratios):.3f}, '
                  f'server CPU per request {statistics.median(cpu_ratios):.3f}')
        finally:
            for dep in deps.values():
                dep.close()
    print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
    main()
