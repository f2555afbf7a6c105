"""Echo benchmark: the cost of our request path against a bare gRPC chain.

Side by side in one run (ratios, not absolute times -- the machine is shared):

1. **bare chain**: a grpc.aio client -> a proxy process -> a server process,
   passing the very bytes one 1-doc request of ours carries; the limit for a
   path with one gateway hop.
2. **ours**: an echo Executor behind a Deployment (replicas=1 and 3), the same
   number of single-doc requests through ``Client.post`` with the same window.
3. **Flow of two echo Executors** (when ``runtime.flow`` is present).

Each round runs the bare chain, then each of ours, back to back (``--rounds``); the ratios
are per round, and their medians. Also prints time to ready (replicas=1 and 3) and the
memory of all processes.

    python benchmarks/echo.py [--requests 2000] [--window 16] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import grpc
import psutil
from docarray import DocList
from docarray.documents import TextDoc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestra_nb import Deployment  # noqa: E402
from runtime import protocol  # noqa: E402
from runtime.codec import encode_docs  # noqa: E402

_BARE = r'''
import asyncio, sys, grpc
OPTS = [('grpc.so_reuseport', 0)]
async def main(role, upstream):
    server = grpc.aio.server(options=OPTS)
    if role == 'server':
        async def call(req, ctx):
            return req
    else:
        ch = grpc.aio.insecure_channel(upstream, options=OPTS)
        fwd = ch.unary_unary('/bare.Echo/Call')
        async def call(req, ctx):
            return await fwd(req)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        'bare.Echo', {'Call': grpc.unary_unary_rpc_method_handler(call)}),))
    port = server.add_insecure_port('127.0.0.1:0')
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)   # lifeline
    await server.stop(0)
asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
'''


def _start_bare(role: str, upstream: str = '') -> tuple:
    p = subprocess.Popen([sys.executable, '-c', _BARE, role] + ([upstream] if upstream else []),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return p, int(p.stdout.readline())


async def _bare_client(port: int, frame: bytes, n: int, window: int) -> float:
    async with grpc.aio.insecure_channel(f'127.0.0.1:{port}') as ch:
        call = ch.unary_unary('/bare.Echo/Call')
        await call(frame)   # warm up
        sem = asyncio.Semaphore(window)

        async def one():
            async with sem:
                await call(frame)
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)


def _cpu_s(pids: list) -> float:
    """CPU seconds (user + system, all threads) the processes ``pids`` have used so far."""
    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def bare_chain(n: int, window: int) -> tuple:
    """-> (requests/s, CPU µs per request of client + proxy + server)."""
    frame = protocol.pack({'endpoint': '/echo', 'parameters': {}},
                          encode_docs(DocList[TextDoc]([TextDoc(text='hello')])))
    server, sport = _start_bare('server')
    proxy, pport = _start_bare('proxy', f'127.0.0.1:{sport}')
    pids = [os.getpid(), proxy.pid, server.pid]
    try:
        cpu = _cpu_s(pids)
        rate = asyncio.run(_bare_client(pport, frame, n, window))
        return rate, (_cpu_s(pids) - cpu) / n * 1e6
    finally:
        for p in (proxy, server):
            p.stdin.close()
            p.wait(5)


def ours(orchestration, n: int, window: int) -> tuple:
    """-> (requests/s, CPU µs per request of client + gateway + replicas)."""
    docs = DocList[TextDoc]([TextDoc(text='hello') for _ in range(n)])
    orchestration.post('/echo', docs[:50], request_size=1, prefetch=window)   # warm up
    pids = [os.getpid(), orchestration.gateway.pid] + [r['pid'] for r in orchestration.status()['replicas']]
    cpu = _cpu_s(pids)
    t0 = time.perf_counter()
    out = orchestration.post('/echo', docs, request_size=1, prefetch=window)
    rate = n / (time.perf_counter() - t0)
    assert len(out) == n
    return rate, (_cpu_s(pids) - cpu) / n * 1e6


def memory(orchestration) -> tuple:
    pids = [r['pid'] for r in orchestration.status()['replicas']] + [orchestration.gateway.pid]
    rss = pss = 0
    for pid in pids:
        info = psutil.Process(pid).memory_full_info()
        rss += info.rss
        pss += getattr(info, 'pss', info.rss)
    return len(pids), rss / 2**20, pss / 2**20


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n\n')[0])
    ap.add_argument('--requests', type=int, default=2000)
    ap.add_argument('--window', type=int, default=16, help='requests in flight from the client')
    ap.add_argument('--rounds', type=int, default=3, help='rounds, each: bare chain, then ours, back to back')
    args = ap.parse_args(argv)
    n, w = args.requests, args.window
    try:
        from orchestra_nb import Flow
    except ImportError:
        Flow = None
    setups = []
    try:
        for replicas in (1, 3):
            t0 = time.perf_counter()
            dep = Deployment(name=f'echo{replicas}', replicas=replicas).start()
            setups.append((f'Deployment replicas={replicas}', dep))
            procs, rss, pss = memory(dep)
            print(f'time to ready, replicas={replicas}: {time.perf_counter() - t0:.2f} s; {procs} processes, '
                  f'{rss:.0f} MB RSS, {pss:.0f} MB PSS')
        if Flow is not None:
            setups.append(('Flow of 2 echo Executors', Flow().add(name='a').add(name='b').start()))
        rows = []
        cpu_rows = []
        for r in range(args.rounds):
            bare, bare_cpu = bare_chain(n, w)
            measured = [ours(o, n, w) for _, o in setups]
            rates = [rate for rate, _ in measured]
            rows.append((bare, rates))
            cpu_rows.append((bare_cpu, [cpu for _, cpu in measured]))
            print(f'round {r + 1}: bare {bare:.0f} req/s, {bare_cpu:.0f} µs CPU/request; ' + '; '.join(
                f'{name} {rate:.0f} ({rate / bare:.2f} x bare), {cpu:.0f} µs CPU/request'
                for (name, _), (rate, cpu) in zip(setups, measured))
                + f'; load average {os.getloadavg()[0]:.1f}', flush=True)
    finally:
        for _, o in setups:
            o.close()
    print(f'\n{n} single-doc requests, {w} in flight, {args.rounds} rounds (Jina 3.34 here: 754 req/s replicas=1, '
          '610 replicas=3, 417 Flow of 2)')
    print(f'{"setup":<40}{"median req/s":>14}{"x bare, per round":>30}{"median":>8}')
    print(f'{"bare grpc client -> proxy -> server":<40}{statistics.median(b for b, _ in rows):>14.0f}')
    for k, (name, _) in enumerate(setups):
        ratios = [rates[k] / bare for bare, rates in rows]
        print(f'{name:<40}{statistics.median(rates[k] for _, rates in rows):>14.0f}'
              f'{" ".join(f"{x:.2f}" for x in ratios):>30}{statistics.median(ratios):>8.2f}')
    print('CPU per request, all processes (client, gateway or proxy, replicas or server), median µs: bare '
          f'{statistics.median(c for c, _ in cpu_rows):.0f}; ' + '; '.join(
              f'{name} {statistics.median(cpus[k] for _, cpus in cpu_rows):.0f} '
              f'(bare / ours {statistics.median(c / cpus[k] for c, cpus in cpu_rows):.2f}: the ratio where CPU '
              'is the limit)' for k, (name, _) in enumerate(setups)))
    if Flow is not None:
        flow_vs_dep = statistics.median(rates[-1] / rates[0] for _, rates in rows)
        print(f'Flow(2) / Deployment(1): {flow_vs_dep:.2f} (target >= 0.6)')
    print(f'target: Deployment replicas=1 >= 0.8 x bare; load average now {os.getloadavg()[0]:.1f} '
          f'on {os.cpu_count()} CPUs')


if __name__ == '__main__':
    main()
