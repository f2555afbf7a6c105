"""Time to ready of a Deployment: children forked by the zygote vs fresh interpreters.

Side by side in one run (the machine is shared, so the order alternates each round):

- ``subprocess``: ``ORCHESTRA_FORKSERVER=0``, every replica and the gateway is a fresh
  ``python -m runtime.child`` (imports grpc, numpy, docarray: ~0.35 s of CPU each);
- ``forkserver``: forked by this process's preloaded zygote (``runtime/forkserver.py``),
  started before the round (as ``import orchestra_nb`` does);
- ``cold zygote``: the zygote stopped before the Deployment, so it starts on first use
  (what a process gets that starts a Deployment right after ``import orchestra_nb``).

Also prints the CPU seconds the children spent until ready (less sensitive to load).

    python benchmarks/startup.py [--rounds 7] [--replicas 1 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestra_nb import Deployment  # noqa: E402
from runtime import forkserver  # noqa: E402

MODES = ('subprocess', 'forkserver', 'cold zygote')


def one(mode: str, replicas: int) -> tuple:
    """-> (seconds to ready, CPU seconds of the children until ready)."""
    os.environ['ORCHESTRA_FORKSERVER'] = '0' if mode == 'subprocess' else '1'
    if mode == 'cold zygote':
        forkserver.shutdown()
    elif mode == 'forkserver':
        forkserver.prewarm()
        _wait_zygote_ready()
    t0 = time.perf_counter()
    with Deployment(name='startup', replicas=replicas) as dep:
        ready = time.perf_counter() - t0
        procs = [r.process for r in dep.stages[0].replicas] + [dep.gateway]
        assert all(p.via == ('subprocess' if mode == 'subprocess' else 'forkserver') for p in procs), \
            [p.via for p in procs]
        cpu = 0.0
        for p in procs:
            t = psutil.Process(p.pid).cpu_times()
            cpu += t.user + t.system
    return ready, cpu


def _wait_zygote_ready(timeout: float = 30.0) -> None:
    server = forkserver._get()
    with server._lock:
        server._start_locked() and server._wait_ready_locked()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n\n')[0])
    ap.add_argument('--rounds', type=int, default=7)
    ap.add_argument('--replicas', type=int, nargs='+', default=[1, 3])
    args = ap.parse_args(argv)
    results = {(m, r): [] for m in MODES for r in args.replicas}
    one('subprocess', 1)   # warm the file cache and this process's imports
    for i in range(args.rounds):
        order = MODES if i % 2 == 0 else tuple(reversed(MODES))
        for replicas in args.replicas:
            for mode in order:
                results[(mode, replicas)].append(one(mode, replicas))
        print(f'round {i + 1}/{args.rounds}: ' + ', '.join(
            f'{m} r={r} {results[(m, r)][-1][0]:.2f}s' for r in args.replicas for m in MODES), flush=True)
    print(f'\ntime to ready over {args.rounds} rounds (load average {os.getloadavg()[0]:.1f}, '
          f'{os.cpu_count()} cores)')
    print(f'{"mode":<14}{"replicas":>9}{"median s":>10}{"min s":>8}{"max s":>8}{"child CPU s":>13}')
    for replicas in args.replicas:
        for mode in MODES:
            xs = [x for x, _ in results[(mode, replicas)]]
            cpu = statistics.median(c for _, c in results[(mode, replicas)])
            print(f'{mode:<14}{replicas:>9}{statistics.median(xs):>10.3f}{min(xs):>8.3f}'
                  f'{max(xs):>8.3f}{cpu:>13.2f}')
    forkserver.shutdown()


if __name__ == '__main__':
    main()
