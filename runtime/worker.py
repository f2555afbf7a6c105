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
from typing import Any, Callable, Dict, Optional, Tuple

from runtime import executor as executor_module
from runtime import protocol
from runtime.batching import Batchers
from runtime.codec import decode_docs, encode_docs  # loaded before ready, not on the first request
from runtime.executor_thread import ExecutorThread
from runtime.executor import (Endpoint, EndpointTable, RuntimeArgs, UnknownEndpointError, build_executor,
                              call_endpoint, executor_parameters, normalise_result)
from runtime.server import STOP_GRACE_S, start_node_server, stop_event_from
from runtime.specs import ReplicaSpec, SpecError
from runtime.telemetry import RequestStats
from runtime.uses import load_executor_class

log = logging.getLogger('orchestra.worker')


class ReplicaServer:
    """Serves one Executor over gRPC; see the module docstring."""

    def __init__(self, spec: ReplicaSpec):
        self.spec = spec
        self.runtime_args = RuntimeArgs(name=spec.deployment, replica_id=spec.replica_id, shard_id=spec.shard_id,
                                        shards=spec.shards, replicas=spec.replicas, workspace=spec.workspace)
        self.name = spec.name
        #: the Deployment's secret (the spec's, else $ORCHESTRA_SECRET_FILE's; set by serve): RAFT uses it too
        self.secret: Optional[str] = spec.secret
        cls = load_executor_class(spec.uses)
        self.executor = build_executor(cls, spec.uses_with, self.runtime_args)
        self.endpoints = EndpointTable(self.executor)
        self.stats = RequestStats()
        # one thread: Executors see one request at a time, as in Jina
        self.pool = ExecutorThread('executor')
        self.consensus = None     # a stateful replica's RAFT node (runtime.raft), from serve()
        self.batchers = Batchers(self.endpoints, self.pool, encode_reply)  # endpoint -> dynamic batcher
        self.port: Optional[int] = None
        # the most common reply, an answer without results: its header packed once (a frame is head + body)
        self._ok_head = protocol.pack({'ok': True, 'replica': self.name})
        #: ``report(event=..., **fields)``: a line on the status pipe to the owner (set by run_worker)
        self.report: Callable[..., None] = lambda **msg: None
        self.metrics: Optional[Any] = None          # runtime.metrics.Metrics with monitoring=True
        self.metrics_server: Optional[Any] = None
        if spec.monitoring:
            self._start_metrics()

    def _start_metrics(self) -> None:
        """Prometheus ``/metrics`` of this replica (runtime.metrics), bound like its gRPC port."""
        from runtime import metrics as m
        labels = m.replica_labels(self.spec.deployment, self.spec.replica_id, self.spec.shard_id)
        self.metrics = m.Metrics('replica', labels)
        self.metrics.add_collector(m.ScrapeCollector([
            m.in_flight_reader(labels, lambda: self.stats.in_flight, 'replica'),
            m.raft_reader(labels, lambda: self.consensus.status() if self.consensus is not None else None),
            m.process_reader(labels),
            m.gpu_reader(labels, os.environ.get('CUDA_VISIBLE_DEVICES')),
            m.batch_reader(labels, lambda: self.batchers)]))
        m.install(self.metrics)
        executor_module.call_observer = m.call_observer(self.metrics)
        self.metrics_server = m.serve_metrics(self.metrics, self.spec.host, self.spec.port_monitoring)

    # -- the request path -----------------------------------------------------
    def run_endpoint(self, ep: Endpoint, parameters: dict, body: bytes) -> Tuple[Dict[str, Any], bytes]:
        """Decode, call, encode -- on the executor thread."""
        docs = decode_docs(body, ep.input_type)
        results, out = normalise_result(call_endpoint(ep, docs, parameters), docs, ep.name)
        return encode_reply(results, out)

    async def call(self, frame: bytes, context) -> bytes:
        t0 = time.perf_counter()
        endpoint = '?'
        ok = False
        try:
            header, body = protocol.unpack(frame)
            protocol.check_request_header(header)
            endpoint = header.get('endpoint', '/')
            # Jina's Executor-specific parameters ('name__key', parameters[name]) for this Executor
            parameters = executor_parameters(header.get('parameters') or {}, self.runtime_args.name)
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
                    reply_header, reply_body = await self.pool.run(self.run_endpoint, ep, parameters, body)
                ok = reply_header is _OK or bool(reply_header.get('ok'))
            finally:
                seconds = time.perf_counter() - t0
                self.stats.finished(endpoint, seconds)
                if self.metrics is not None:
                    self.metrics.for_endpoint(endpoint).observe(seconds, ok)
            if reply_header == _OK:
                return self._ok_head + reply_body
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
        if self.metrics_server is not None:
            info['metrics_port'] = self.metrics_server.port
        return info

    # -- serving ----------------------------------------------------------------
    async def serve(self, host: str, port: int, stop: asyncio.Event, on_ready=None) -> None:
        from runtime.secrets import load_secret
        self.secret = self.secret or load_secret()   # RAFT (its password, calls to peers) uses the same one
        server, self.port = await start_node_server(host, port, self.call, self.info, self.control, self.secret)
        try:
            if self.consensus is None and self.spec.stateful:
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
            if self.metrics_server is not None:
                self.metrics_server.close()


_OK = {'ok': True}


def encode_reply(results: Optional[Dict[str, Any]], docs: Any) -> Tuple[Dict[str, Any], bytes]:
    """A normalised result (:func:`~runtime.executor.normalise_result`) -> ``(reply header, body)``.

    >>> encode_reply({'n': 1}, docs)   # doctest: +SKIP
    ({'ok': True, 'results': {'n': 1}}, b'...')
    """
    header: Dict[str, Any] = {'ok': True}
    if results is not None:
        header['results'] = results
    return header, encode_docs(docs)


def run_worker(child: Dict[str, Any], status, stopping: threading.Event) -> None:
    """Child-process entry for role 'worker': ``child['config']`` is a :class:`ReplicaSpec`'s ``to_dict()``."""
    spec = replica_spec_on_arrival(child['config'])
    _pin_blas_threads(spec.blas_threads, spec.replicas * spec.shards)

    async def main():
        stop = stop_event_from(stopping)
        server = ReplicaServer(spec)
        server.report = status.send
        await server.serve(spec.host, spec.port, stop,
                           on_ready=lambda s: status.send(event='ready', port=s.port, pid=os.getpid(),
                                                          endpoints=s.endpoints.names))
    asyncio.run(main())


def replica_spec_on_arrival(data: Any) -> ReplicaSpec:
    """The spec a replica was given, checked; a malformed one raises naming what is wrong."""
    try:
        return ReplicaSpec.from_dict(data)
    except SpecError as e:
        raise SpecError(f'this replica was given a malformed spec: {e}') from None


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
