"""HTTP benchmark: echo through our gateway's HTTP door vs Jina 3.34's HTTP gateway, and vs our gRPC path.

Side by side in one run, rounds alternating (ratios, not absolute times -- the machine is shared):

1. **ours, HTTP**: ``Deployment(uses=Echo, protocol=['http', 'grpc'])``; ``POST /echo`` with Jina's body
   ``{"data": [{"text": ...}], "parameters": {}}`` from a lean keep-alive HTTP/1.1 client (this process),
   ``--window`` requests in flight on as many connections.
2. **Jina 3.34, HTTP**: the same Executor written against ``jina`` (``Deployment(protocol='http')``, its
   gateway included), the same client and bodies. It runs in its own virtualenv (``--jina-python``,
   default ``/work/jina-venv/bin/python``); without one this row is skipped, with a line saying so.
3. **ours, gRPC**: the same Deployment's gRPC door through ``Client.post`` (1 doc per request, same window).

Besides requests/s it reports the server side's CPU time per request (gateway + replica processes; Jina's
whole process group), the figure a busy machine distorts least.

(Named ``http_doors.py``, not ``http.py``: a script's folder comes first on ``sys.path``, and a
``benchmarks/http.py`` would hide the standard library's ``http`` from every benchmark here.)

    python benchmarks/http_doors.py [--requests 2000] [--window 16] [--rounds 3] [--markdown]

The Jina venv: ``python3 -m venv /work/jina-venv && /work/jina-venv/bin/pip install jina==3.34.0
'pydantic<=2.10' 'fastapi==0.115.*' 'opentelemetry-instrumentation-fastapi==0.35b0'
'opentelemetry-instrumentation-aiohttp-client==0.35b0' 'opentelemetry-instrumentation-grpc==0.35b0'
'opentelemetry-sdk==1.14.0' 'opentelemetry-api==1.14.0' 'opentelemetry-exporter-otlp==1.14.0'`` (Jina's HTTP
path fails with newer pydantic; without the opentelemetry pins pip finds no consistent set). Jina's Deployment
runs in a process group of its own, killed at the end (with a timeout: it often does not stop by itself).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from docarray import DocList  # noqa: E402
from docarray.documents import TextDoc  # noqa: E402

from runtime.client import Client  # noqa: E402
from runtime.deployment import Deployment  # noqa: E402
from runtime.executor import Executor, requests  # noqa: E402


class Echo(Executor):
    """Returns its docs: the request path is all that is measured."""

    @requests(on='/echo')
    def echo(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        return docs


_JINA = r'''
import sys
from docarray import DocList
from docarray.documents import TextDoc
from jina import Deployment, Executor, requests

class Echo(Executor):
    @requests(on='/echo')
    def echo(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        return docs

with Deployment(uses=Echo, protocol='http', port=int(sys.argv[1]), include_gateway=True) as dep:
    print('READY', flush=True)
    sys.stdin.read()   # lifeline: EOF (the benchmark ended or died) stops it
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the HTTP load

def _request(path: str, body: bytes) -> bytes:
    return (f'POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
            f'Content-Length: {len(body)}\r\n\r\n').encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple:
    head = await reader.readuntil(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(':') for line in lines[1:] if line)}
    if headers.get('transfer-encoding', '').lower() == 'chunked':
        body = b''
        while True:
            size = int((await reader.readuntil(b'\r\n')).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return status, body
    return status, await reader.readexactly(int(headers.get('content-length', 0)))


async def http_load(port: int, n: int, window: int) -> float:
    """``n`` one-doc echo requests over ``window`` keep-alive connections -> requests per second."""
    bodies = [json.dumps({'data': [{'text': f'doc {i}'}], 'parameters': {}}).encode() for i in range(n)]
    conns = [await asyncio.open_connection('127.0.0.1', port) for _ in range(window)]
    # warm up each connection (and check the reply)
    for i, (reader, writer) in enumerate(conns):
        writer.write(_request('/echo', bodies[i % n]))
        status, body = await _read_response(reader)
        text = json.loads(body)['data'][0]['text'] if status == 200 else body[:300]
        if status != 200 or text != f'doc {i % n}':
            raise RuntimeError(f'port {port}: warm-up reply {status}: {text!r}')
    todo = iter(range(n))

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in todo:
            writer.write(_request('/echo', bodies[i]))
            status, body = await _read_response(reader)
            if status != 200:
                raise RuntimeError(f'port {port}: request {i}: {status} {body[:300]!r}')

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    rate = n / (time.perf_counter() - t0)
    for _, w in conns:
        w.close()
    return rate


def grpc_load(port: int, n: int, window: int) -> float:
    """``n`` one-doc requests through ``Client.post`` (``window`` in flight) -> requests per second."""
    c = Client(port=port, prefetch=window)
    try:
        docs = DocList[TextDoc]([TextDoc(text=f'doc {i}') for i in range(n)])
        c.post('/echo', docs[:window], request_size=1)   # warm up
        t0 = time.perf_counter()
        out = c.post('/echo', docs, request_size=1)
        rate = n / (time.perf_counter() - t0)
        assert out[-1].text == f'doc {n - 1}'
        return rate
    finally:
        c.close()


# ----------------------------------------------------------------------------- Jina

class JinaDeployment:
    """Jina's HTTP Deployment of the same Executor, in its own venv and process group."""

    def __init__(self, python: str, timeout: float = 180.0):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile('w+', suffix='-jina.log', delete=False)
        self.proc = subprocess.Popen([python, '-c', _JINA, str(self.port)], stdin=subprocess.PIPE,
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                     env=dict(os.environ, JINA_LOG_LEVEL='ERROR', PYTHONPATH=''))
        deadline = time.monotonic() + timeout
        while True:
            self.log.seek(0)
            if 'READY' in self.log.read():
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                tail = self.log.read()[-3000:]
                self.close()
                raise RuntimeError(f'Jina\'s Deployment did not get ready (log {self.log.name}):\n{tail}')
            time.sleep(0.2)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):   # its gateway/executor processes are in the group
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # what the group may have left
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------- the run

def _cpu_seconds(pids: List[int]) -> float:
    """CPU time (user + system) the processes ``pids`` have used so far."""
    import psutil
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _measured(load, pids: List[int], requests_n: int, cpu: List[float]) -> float:
    """Run ``load()`` (-> requests/s); append the server side's CPU ms per request to ``cpu``."""
    before = _cpu_seconds(pids)
    rate = load()
    cpu.append((_cpu_seconds(pids) - before) / requests_n * 1000)
    return rate


def run(requests_n: int, window: int, rounds: int, jina_python: Optional[str]
        ) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """-> (requests/s per round, server CPU ms per request per round), keyed ours_http, jina_http, ours_grpc."""
    import psutil
    results: Dict[str, List[float]] = {'ours_http': [], 'jina_http': [], 'ours_grpc': []}
    cpu: Dict[str, List[float]] = {k: [] for k in results}
    jina = None
    if jina_python and os.path.exists(jina_python):
        jina = JinaDeployment(jina_python)
    else:
        print(f'Jina row skipped: no Python at {jina_python!r} (see the module docstring)', file=sys.stderr)
    try:
        with Deployment(uses=Echo, protocol=['http', 'grpc']) as dep:
            ours = [dep.gateway.pid] + [r.process.pid for stage in dep.stages for r in stage.replicas]
            theirs = ([jina.proc.pid] + [p.pid for p in psutil.Process(jina.proc.pid).children(recursive=True)]
                      if jina is not None else [])
            for r in range(rounds):
                results['ours_http'].append(_measured(
                    lambda: asyncio.run(http_load(dep.ports['http'], requests_n, window)), ours, requests_n,
                    cpu['ours_http']))
                if jina is not None:
                    results['jina_http'].append(_measured(
                        lambda: asyncio.run(http_load(jina.port, requests_n, window)), theirs, requests_n,
                        cpu['jina_http']))
                results['ours_grpc'].append(_measured(
                    lambda: grpc_load(dep.ports['grpc'], requests_n, window), ours, requests_n, cpu['ours_grpc']))
                print(f'round {r + 1}: ' + ', '.join(f'{k} {v[-1]:.0f}/s' for k, v in results.items() if v),
                      file=sys.stderr, flush=True)
    finally:
        if jina is not None:
            jina.close()
    return results, cpu


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('--requests', type=int, default=2000)
    p.add_argument('--window', type=int, default=16)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--jina-python', default='/work/jina-venv/bin/python')
    p.add_argument('--markdown', action='store_true', help='print the table as Markdown')
    a = p.parse_args(argv)
    load = os.getloadavg()[0]
    results, cpu = run(a.requests, a.window, a.rounds, a.jina_python)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items() if v}
    rows = [('ours, HTTP door', 'ours_http'), ('Jina 3.34, HTTP gateway', 'jina_http'), ('ours, gRPC', 'ours_grpc')]
    print(f'{a.requests} one-doc echo requests, {a.window} in flight, median of {a.rounds} rounds; '
          f'load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores')
    if a.markdown:
        print('| path | requests/s (median) | per round | ours HTTP / this | server CPU ms/request '
              '| this / ours HTTP |')
        print('|---|---|---|---|---|---|')
    for label, key in rows:
        if key not in med:
            continue
        ratio = med['ours_http'] / med[key]
        cpu_ratio = cpu_med[key] / cpu_med['ours_http']
        per_round = ' / '.join(f'{v:.0f}' for v in results[key])
        if a.markdown:
            print(f'| {label} | {med[key]:.0f} | {per_round} | {ratio:.2f} x | {cpu_med[key]:.2f} '
                  f'| {cpu_ratio:.2f} x |')
        else:
            print(f'{label:26s} {med[key]:8.0f}/s ({per_round})  ours HTTP / this: {ratio:.2f} x   '
                  f'server CPU {cpu_med[key]:.2f} ms/request ({cpu_ratio:.2f} x ours HTTP)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
