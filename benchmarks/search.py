"""Search benchmark: Jina's scale-out workload (issue 5), our setups side by side, against the targets.

    python benchmarks/search.py                 # small: 10,000 docs, 500 queries (about a minute)
    python benchmarks/search.py --full          # the seed workload: 100,000 docs, 1,000 queries
    python benchmarks/search.py --full --rounds 3 --markdown --json results.json

Setups (same syntax as ``orchestra bench --setups``): ``1`` one replica, ``3s`` three
RAFT-replicated replicas, ``1b`` one replica with dynamic batching on ``/search``. Each
round runs every setup once, one after the other; with ``--rounds N`` the table shows the
median of the rounds per setup (this machine is shared: read ratios, not absolute times).

Targets (2-core machine, full size)::

    index 100k, 1 replica                 <= 3 s
    search QPS, 1 replica                 >= 200
    index 100k, 3 RAFT replicas           <= 2 x the 1-replica time
    search QPS, 3 RAFT replicas           >= 1.3 x the 1-replica QPS
    search QPS, 1 replica with batching   >= 2 x the unbatched 1-replica QPS
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from runtime.bench import BenchResult, SetupResult, compare  # noqa: E402

FULL = {'docs': 100_000, 'queries': 1000}
SMALL = {'docs': 10_000, 'queries': 500}
SETUPS = '1,3s,1b'


def median_result(rounds: List[BenchResult]) -> BenchResult:
    """Per setup, the median of each figure over the rounds (per-replica counts of the median-QPS round)."""
    first = rounds[0]
    merged = []
    for i in range(len(first.setups)):
        runs = [r.setups[i] for r in rounds]
        ok = [x for x in runs if x.error is None] or runs
        by_qps = sorted(ok, key=lambda x: x.search_qps or 0.0)
        mid = by_qps[len(by_qps) // 2]
        out = SetupResult(**{k: v for k, v in vars(mid).items()})

        def med(attr: str, ok: list = ok) -> Optional[float]:
            vals = [getattr(x, attr) for x in ok if getattr(x, attr) is not None]
            return statistics.median(vals) if vals else None
        for attr in ('index_seconds', 'replicated_seconds', 'search_seconds', 'search_qps', 'p50_ms', 'p99_ms'):
            setattr(out, attr, med(attr))
        out.checks = dict(mid.checks, rounds_ok=sum(1 for x in runs if x.ok), rounds=len(runs))
        merged.append(out)
    return BenchResult(merged, dict(first.workload, rounds=len(rounds)), first.machine)


def _find(result: BenchResult, replicas: int, stateful: bool, batching: bool) -> Optional[SetupResult]:
    for s in result.setups:
        if s.replicas == replicas and s.stateful == stateful and (s.batching is not None) == batching:
            return s
    return None


def _paired(rounds: List[BenchResult], num: tuple, den: tuple, attr: str, den_attr: Optional[str] = None):
    """Median over rounds of ``num.attr / den.den_attr``, both measured in the same round (side by side)."""
    ratios = []
    for r in rounds:
        a, b = _find(r, *num), _find(r, *den)
        x, y = (a and getattr(a, attr)), (b and getattr(b, den_attr or attr))
        if x and y:
            ratios.append(x / y)
    return statistics.median(ratios) if ratios else None


def targets(result: BenchResult, rounds: Optional[List[BenchResult]] = None) -> List[Dict[str, Any]]:
    """Each target: what, target, measured, met (None when a setup is missing).

    Ratios are medians of the per-round ratios (setups measured side by side in one round).
    """
    rounds = rounds or [result]
    ONE, RAFT, BATCHED = (1, False, False), (3, True, False), (1, False, True)
    one = _find(result, *ONE)
    docs = result.workload['docs']
    scale = docs / FULL['docs']
    rows = []

    def add(what: str, target: str, measured: Optional[float], limit: Optional[float], higher: bool, unit: str):
        met = None if measured is None or limit is None else (measured >= limit if higher else measured <= limit)
        rows.append({'what': what, 'target': target, 'measured': None if measured is None else f'{measured:.2f}{unit}',
                     'met': met})

    idx_limit = 3.0 * scale
    add(f'index {docs} docs, 1 replica', f'<= {idx_limit:.2f} s' + ('' if scale == 1 else ' (3 s x docs/100k)'),
        one and one.index_seconds, idx_limit, False, ' s')
    add('search QPS, 1 replica', '>= 200', one and one.search_qps, 200.0, True, '')
    add(f'index {docs} docs, 3 RAFT replicas', '<= 2 x 1-replica',
        _paired(rounds, RAFT, ONE, 'index_seconds'), 2.0, False, ' x')
    ratio = _paired(rounds, RAFT, ONE, 'replicated_seconds', 'index_seconds')
    if ratio is not None:
        add('  (until every replica holds every doc)', '<= 2 x 1-replica', ratio, 2.0, False, ' x')
    add('search QPS, 3 RAFT replicas', '>= 1.3 x 1-replica', _paired(rounds, RAFT, ONE, 'search_qps'), 1.3, True, ' x')
    add('search QPS, 1 replica + dynamic batching', '>= 2 x unbatched',
        _paired(rounds, BATCHED, ONE, 'search_qps'), 2.0, True, ' x')
    return rows


def targets_table(rows: List[Dict[str, Any]], markdown: bool = False) -> str:
    mark = {True: 'met', False: 'MISSED', None: '-'}
    if markdown:
        out = ['| | target | measured | |', '|---|---|---|---|']
        out += [f"| {r['what'].strip()} | {r['target']} | {r['measured'] or '-'} | {mark[r['met']]} |" for r in rows]
        return '\n'.join(out)
    w = max(len(r['what']) for r in rows)
    out = [f"{'target':<{w}}  {'wanted':<28}  {'measured':<10}"]
    out += [f"{r['what']:<{w}}  {r['target']:<28}  {(r['measured'] or '-'):<10}  {mark[r['met']]}" for r in rows]
    return '\n'.join(out)


def results_markdown(result: BenchResult) -> str:
    rows = result.rows()
    cols = list(rows[0]) if rows else []
    out = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    out += ['| ' + ' | '.join(r[c] for c in cols) + ' |' for r in rows]
    return '\n'.join(out)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('--full', action='store_true', help='the seed workload: 100,000 docs, 1,000 queries')
    p.add_argument('--docs', type=int, default=None)
    p.add_argument('--queries', type=int, default=None)
    p.add_argument('--dim', type=int, default=128)
    p.add_argument('--setups', default=SETUPS, help=f'default {SETUPS!r}')
    p.add_argument('--uses', default=None, help='Executor, "pkg.mod:Class" (default ExactNNSearch)')
    p.add_argument('--concurrency', type=int, default=32)
    p.add_argument('--rounds', type=int, default=1, help='run every setup N times; report medians')
    p.add_argument('--json', default=None, help='write every round and the medians as JSON')
    p.add_argument('--markdown', action='store_true', help='also print Markdown tables (for benchmarks/README.md)')
    p.add_argument('--no-progress', action='store_true')
    a = p.parse_args(argv)
    size = dict(FULL if a.full else SMALL)
    size['docs'] = a.docs or size['docs']
    size['queries'] = a.queries or size['queries']
    rounds = []
    t0 = time.time()
    for i in range(max(1, a.rounds)):
        r = compare(setups=a.setups, dim=a.dim, uses=a.uses, concurrency=a.concurrency, seed=i,
                    progress=not a.no_progress, **size)
        rounds.append(r)
        if a.rounds > 1:
            print(f'--- round {i + 1} of {a.rounds}\n{r.table()}\n', flush=True)
    result = median_result(rounds) if len(rounds) > 1 else rounds[0]
    rows = targets(result, rounds)
    print(result.table())
    print()
    print(targets_table(rows))
    print(f'\n({time.time() - t0:.0f} s in all)')
    if a.markdown:
        print('\n' + results_markdown(result) + '\n\n' + targets_table(rows, markdown=True))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump({'median': result.to_dict(), 'rounds': [r.to_dict() for r in rounds], 'targets': rows},
                      f, indent=2)
    return 0 if result.ok else 1


if __name__ == '__main__':
    sys.exit(main())
