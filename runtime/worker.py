"""One replica: a grpc.aio server hosting one Executor.

The replica decodes a request's documents into the endpoint's input type,
calls the Executor method on its own single thread (one request at a time, as
in Jina: Executors need not be thread safe) and encodes the result. An
Executor exception becomes an error reply with the remote traceback; the
replica keeps serving.

Started by :mod:`runtime.child` (inside a Deployment), or stand-alone with
``orchestra executor --uses pkg.mod:Class --port P``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional, Tuple

from runtime import protocol
from runtime.batching import Batchers
from runtime.codec import decode_docs, encode_docs  # loaded before ready, not on the first request
from runtime.executor import (Endpoint, EndpointTable, RuntimeArgs, UnknownEndpointError, build_executor,
                              call_endpoint, normalise_result)
from runtime.server import STOP_GRACE_S, start_node_server, stop_event_from
from runtime.telemetry import RequestStats
from runtime.uses import load_executor_class

log = logging.getLogger('orchestra.worker')


class ReplicaServer:
    """Serves one Executor over gRPC; see the module docstring."""

    def __init__(self, config: Dict[str, Any]):
        self.config = config
        ra = config.get('runtime_args') or {}
        self.runtime_args = RuntimeArgs(**ra) if isinstance(ra, dict) else ra
        self.name = config.get('display_name') or self.runtime_args.name
        cls = load_executor_class(config['uses'])
        self.executor = build_executor(cls, config.get('uses_with'), self.runtime_args)
        self.endpoints = EndpointTable(self.executor)
        self.stats = RequestStats()
        # one thread: Executors see one request at a time, as in Jina
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='executor')
        self.consensus = None     # a stateful replica's RAFT node (runtime.raft), from serve()
        self.batchers = Batchers(self.endpoints, self.pool, encode_reply)  # endpoint -> dynamic batcher
        self.port: Optional[int] = None
        #: ``report(event=..., **fields)``: a line on the status pipe to the owner (set by run_worker)
        self.report: Callable[..., None] = lambda **msg: None

    # -- the request path -----------------------------------------------------
    def run_endpoint(self, ep: Endpoint, parameters: dict, body: bytes) -> Tuple[Dict[str, Any], bytes]:
        """Decode, call, encode -- on the executor thread."""
        docs = decode_docs(body, ep.input_type)
        results, out = normalise_result(call_endpoint(ep, docs, parameters), docs, ep.name)
        return encode_reply(results, out)

    async def call(self, frame: bytes, context) -> bytes:
        t0 = time.perf_counter()
        endpoint = '?'
        try:
            header, body = protocol.unpack(frame)
            protocol.check_request_header(header)
            endpoint = header.get('endpoint', '/')
            parameters = header.get('parameters') or {}
            ep = self.endpoints.lookup(endpoint)
            self.stats.started(endpoint)
            try:
                if self.consensus is not None and ep.is_write:
                    reply_header, reply_body = await self.consensus.write(endpoint, parameters, bytes(body),
                                                                           header.get('request_id'))
                elif endpoint in self.batchers:
                    if self.consensus is not None:   # caught up; strong: all committed applied
                        await self.consensus.before_read(header)
                    reply_header, reply_body = await self.batchers[endpoint].submit(parameters, bytes(body))
                else:
                    if self.consensus is not None:   # caught up; strong: all committed applied
                        await self.consensus.before_read(header)
                    loop = asyncio.get_running_loop()
                    reply_header, reply_body = await loop.run_in_executor(
                        self.pool, self.run_endpoint, ep, parameters, body)
            finally:
                self.stats.finished(endpoint, time.perf_counter() - t0)
            reply_header['replica'] = self.name
            return protocol.pack(reply_header, reply_body)
        except Exception as e:
            self.stats.failed(endpoint)
            await protocol.refuse_invalid(context, e)   # ProtocolError -> INVALID_ARGUMENT
            tb = '' if isinstance(e, (UnknownEndpointError, protocol.ProtocolError)) else traceback.format_exc()
            if tb:
                log.error('endpoint %s failed: %s: %s', endpoint, type(e).__name__, e)
            return protocol.pack(protocol.error_header(e, self.name, tb))

    async def info(self, frame: bytes, context) -> bytes:
        return json.dumps(self.describe()).encode()

    async def control(self, frame: bytes, context) -> bytes:
        header, body = protocol.unpack(frame)
        if self.consensus is None:
            return protocol.pack({'ok': False, 'error': {'message': 'not a stateful replica'}})
        return await self.consensus.control(header, bytes(body))

    def describe(self) -> Dict[str, Any]:
        ra = self.runtime_args
        info = {'ready': True, 'name': self.name, 'pid': os.getpid(), 'port': self.port,
                'shard': ra.shard_id, 'replica': ra.replica_id,
                'endpoints': self.endpoints.describe(),
                'cuda_visible_devices': os.environ.get('CUDA_VISIBLE_DEVICES'),
                **self.stats.snapshot()}
        if self.consensus is not None:
            info['raft'] = self.consensus.status()
        if self.batchers:
            info['batching'] = self.batchers.describe()
        return info

    # -- serving ----------------------------------------------------------------
    async def serve(self, host: str, port: int, stop: asyncio.Event, on_ready=None) -> None:
        from runtime.secrets import load_secret
        secret = self.config.get('secret') or load_secret()
        self.config['secret'] = secret   # RAFT (its password, calls to peers) uses the same one
        server, self.port = await start_node_server(host, port, self.call, self.info, self.control, secret)
        try:
            if self.consensus is None and self.config.get('stateful'):
                from runtime.raft import make_consensus
                # kept before anything is awaited: no request reaches the Executor around RAFT
                self.consensus = make_consensus(self)
                await self.consensus.start()
            if on_ready:
                on_ready(self)
            await stop.wait()
        finally:
            await server.stop(grace=STOP_GRACE_S)
            if self.consensus is not None:
                await self.consensus.close()
            self.pool.shutdown(wait=False, cancel_futures=True)
            try:
                self.executor.close()
            except Exception:
                log.exception('Executor.close() failed')


def encode_reply(results: Optional[Dict[str, Any]], docs: Any) -> Tuple[Dict[str, Any], bytes]:
    """A normalised result (:func:`~runtime.executor.normalise_result`) -> ``(reply header, body)``.

    >>> encode_reply({'n': 1}, docs)   # doctest: +SKIP
    ({'ok': True, 'results': {'n': 1}}, b'...')
    """
    header: Dict[str, Any] = {'ok': True}
    if results is not None:
        header['results'] = results
    return header, encode_docs(docs)


def run_worker(spec: Dict[str, Any], status, stopping: threading.Event) -> None:
    """Child-process entry for role 'worker'."""
    config = spec['config']
    ra = config.get('runtime_args') or {}
    ra = ra if isinstance(ra, dict) else vars(ra)
    _pin_blas_threads(config.get('blas_threads'), int(ra.get('replicas') or 1) * int(ra.get('shards') or 1))

    async def main():
        stop = stop_event_from(stopping)
        server = ReplicaServer(config)
        server.report = status.send
        await server.serve(config.get('host', '127.0.0.1'), int(config.get('port') or 0), stop,
                           on_ready=lambda s: status.send(event='ready', port=s.port, pid=os.getpid(),
                                                          endpoints=s.endpoints.names))
    asyncio.run(main())


def default_blas_threads(sharing: int = 1) -> int:
    """BLAS threads per replica when the user sets none (``blas_threads=``).

    The usable cores less one (the gateway and the client need a core; OpenBLAS threads
    spin while they wait, so oversubscribing costs far more than it gains), shared by the
    ``sharing`` replicas of the Deployment; at least 1. Measured on 2 cores, 1 replica:
    2 BLAS threads gave 108-283 QPS where 1 gave 529-643 (benchmarks/README.md).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, (cores - 1) // max(1, sharing))


def _pin_blas_threads(n: Optional[int], sharing: int = 1) -> None:
    """Limit BLAS/OpenMP threads to ``n`` (default: :func:`default_blas_threads`)."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(int(n) if n else default_blas_threads(sharing))
