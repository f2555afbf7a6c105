"""Echo benchmark: the cost of our request path against a bare gRPC chain.

Side by side in one run (ratios, not absolute times -- the machine is shared):

1. **bare chain**: a grpc.aio client -> a proxy process -> a server process,
   passing the very bytes one 1-doc request of ours carries; the limit for a
   path with one gateway hop.
2. **ours**: an echo Executor behind a Deployment (replicas=1 and 3), the same
   number of single-doc requests through ``Client.post`` with the same window.
3. **Flow of two echo Executors** (when ``runtime.flow`` is present).

Also prints time to ready (replicas=1 and 3) and the memory of all processes.

    python benchmarks/echo.py [--requests 2000] [--window 16]
"""
from __future__ import annotations

import argparse
import asyncio
import os
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


def bare_chain(n: int, window: int) -> float:
    frame = protocol.pack({'endpoint': '/echo', 'parameters': {}},
                          encode_docs(DocList[TextDoc]([TextDoc(text='hello')])))
    server, sport = _start_bare('server')
    proxy, pport = _start_bare('proxy', f'127.0.0.1:{sport}')
    try:
        return asyncio.run(_bare_client(pport, frame, n, window))
    finally:
        for p in (proxy, server):
            p.stdin.close()
            p.wait(5)


def ours(orchestration, n: int, window: int) -> float:
    docs = DocList[TextDoc]([TextDoc(text='hello') for _ in range(n)])
    orchestration.post('/echo', docs[:50], request_size=1, prefetch=window)   # warm up
    t0 = time.perf_counter()
    out = orchestration.post('/echo', docs, request_size=1, prefetch=window)
    rate = n / (time.perf_counter() - t0)
    assert len(out) == n
    return rate


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
    args = ap.parse_args(argv)
    n, w = args.requests, args.window
    rows = []
    bare = bare_chain(n, w)
    rows.append(('bare grpc client -> proxy -> server', bare, 1.0))
    for replicas in (1, 3):
        t0 = time.perf_counter()
        with Deployment(name='echo', replicas=replicas) as dep:
            ready = time.perf_counter() - t0
            rate = ours(dep, n, w)
            procs, rss, pss = memory(dep)
        rows.append((f'Deployment replicas={replicas}', rate, rate / bare))
        print(f'time to ready, replicas={replicas}: {ready:.2f} s; {procs} processes, '
              f'{rss:.0f} MB RSS, {pss:.0f} MB PSS')
    try:
        from orchestra_nb import Flow
    except ImportError:
        Flow = None
    if Flow is not None:
        with Flow().add(name='a').add(name='b') as flow:
            rate = ours(flow, n, w)
        one = rows[1][1]
        rows.append(('Flow of 2 echo Executors', rate, rate / bare))
        print(f'Flow(2) / Deployment(1): {rate / one:.2f} (target >= 0.6)')
    print(f'\n{n} single-doc requests, {w} in flight (Jina 3.34 here: 754 req/s replicas=1, '
          '610 replicas=3, 417 Flow of 2)')
    print(f'{"setup":<40}{"req/s":>10}{"x bare":>10}')
    for name, rate, ratio in rows:
        print(f'{name:<40}{rate:>10.0f}{ratio:>10.2f}')
    print('target: Deployment replicas=1 >= 0.70 x bare')


if __name__ == '__main__':
    main()
