"""The public port: routes each request through the graph of deployments, on one path.

A Deployment is a graph of one stage; a Flow chains stages (``needs``). Each stage is a list
of shards, each shard a :class:`~runtime.routing.ReplicaSet` (idle-first balancing, health,
retries). :meth:`Gateway.route_request` is the one entry every front door calls.

Every request takes the same path: the stages run in topological order, each on its inputs'
output. What makes a graph fast is computed once, when it is built (:class:`Graph`):

- a stage that nothing can run beside (every other stage is its ancestor or its descendant:
  every stage of a straight chain) runs inline, in the request's own coroutine; only the
  branches of a fork run as tasks;
- a stage fed by the gateway alone gets the client's frame as is, and a reply whose results
  need no merging goes back as is: one stage (a Deployment) forwards both without decoding
  documents; along a chain, only the request header is packed again (once) in front of each
  reply body;
- documents are decoded only to merge (ALL polling, joins): :mod:`runtime.merging`.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import grpc

from runtime import protocol
from runtime.merging import merge_bodies, merge_results
from runtime.routing import NoReplicaAvailable, PollingPolicy, ReplicaSet, choose_shards
from runtime.server import STOP_GRACE_S, start_node_server, stop_event_from
from runtime.specs import GATEWAY, REPLICA_WAIT_S, GatewaySpec, SpecError, StageSpec
from runtime.targeting import runs, unmatched
from runtime.telemetry import RequestStats

log = logging.getLogger('orchestra.gateway')


class StageError(RuntimeError):
    """A node's call failed; carries the error header to pass back to the client."""

    def __init__(self, header: Dict[str, Any]):
        super().__init__(header.get('error', {}).get('message', 'failed'))
        self.header = header

    @property
    def unknown_endpoint(self) -> bool:
        return self.header.get('error', {}).get('type') == 'UnknownEndpointError'


class Output(NamedTuple):
    """What a stage (or the gateway, for the request) hands on: a reply header and body, and the
    reply ``frame`` when it can go back to the client as is (else ``None``)."""
    header: Dict[str, Any]
    body: Any
    frame: Optional[bytes]


class Stage:
    """One Executor of the graph (a Deployment): its shards, polling and joins."""

    def __init__(self, stage: StageSpec, max_in_flight: int, replica_wait_s: float = REPLICA_WAIT_S):
        self.name: str = stage.name
        self.needs: List[str] = list(stage.needs or [GATEWAY])
        self.polling = PollingPolicy(stage.polling)
        self.no_reduce: bool = stage.no_reduce
        self.allow_partial: bool = stage.allow_partial
        self.shards: List[ReplicaSet] = [
            ReplicaSet(list(addrs), name=self._shard_name(i, len(stage.shards)),
                       max_in_flight=stage.max_in_flight or max_in_flight,
                       wait_for_replica=replica_wait_s, timeout_send=stage.timeout_send,
                       health_timeout=stage.health_timeout, stateful=stage.stateful)
            for i, addrs in enumerate(stage.shards)]
        self._turns = itertools.count()

    def _shard_name(self, i: int, n: int) -> str:
        return f'{self.name}/shard-{i}' if n > 1 else self.name

    @property
    def is_join(self) -> bool:
        """A stage without processes (``Flow.needs_all()`` without ``uses``): it only joins its inputs."""
        return not self.shards

    async def call(self, header: Dict[str, Any], frame: bytes) -> Output:
        """Send the request ``frame`` to the shards polling picks; raises :class:`StageError` on failure."""
        endpoint = header.get('endpoint', '/')
        picked = choose_shards(self.polling.mode(endpoint), [s.in_flight for s in self.shards], self._turns)
        if len(picked) == 1:
            reply = await self._send(self.shards[picked[0]], frame, endpoint)
            reply_header, body = protocol.unpack(reply)
            if not reply_header.get('ok'):
                raise StageError(reply_header)
            return Output(reply_header, body, reply)
        return await self._call_all([self.shards[i] for i in picked], header, frame, endpoint)

    async def _send(self, shard: ReplicaSet, frame: bytes, endpoint: str) -> bytes:
        """One request to one shard; any transport failure becomes a StageError naming the shard."""
        try:
            return await shard.send(frame, endpoint)
        except NoReplicaAvailable as e:
            raise StageError(protocol.error_header(e, shard.name)) from None
        except grpc.aio.AioRpcError as e:
            lost = ConnectionError(f'{shard.name}: {e.code().name}: {e.details()}')
            raise StageError(protocol.error_header(lost, shard.name)) from None

    async def _call_all(self, shards: List[ReplicaSet], header: Dict[str, Any], frame: bytes,
                        endpoint: str) -> Output:
        """ALL polling: every shard gets the request; the replies are reduced (or concatenated)."""
        replies = await asyncio.gather(*(self._send(s, frame, endpoint) for s in shards),
                                       return_exceptions=True)
        partial_ok = self.allow_partial or bool(header.get('allow_partial'))
        headers, bodies, missing = [], [], []
        for shard, reply in zip(shards, replies):
            if isinstance(reply, StageError) and reply.header.get('error', {}).get('type') == 'NoReplicaAvailable':
                if partial_ok:
                    missing.append(shard.name)
                    continue
                error = reply.header['error']
                error['message'] = (f'shard {shard.name} is down while polling ALL: {error["message"]} '
                                    '(pass allow_partial=True to accept results from the other shards)')
                raise reply
            if isinstance(reply, BaseException):
                raise reply
            reply_header, body = protocol.unpack(reply)
            if not reply_header.get('ok'):
                raise StageError(reply_header)
            headers.append(reply_header)
            bodies.append(body)
        if not bodies:
            raise StageError(protocol.error_header(
                NoReplicaAvailable(f'every shard of {self.name} is down ({", ".join(missing)})'), self.name))
        out: Dict[str, Any] = {'ok': True, 'replica': self.name}
        results = merge_results(headers)
        if results:
            out['results'] = results
        if missing:
            out['missing_shards'] = missing
        body = merge_bodies(bodies, reduce=not (self.no_reduce or header.get('no_reduce')))
        return Output(out, body, None)

    def describe(self) -> Dict[str, Any]:
        return {'needs': self.needs, 'polling': self.polling.to_config(), 'join_only': self.is_join,
                'no_reduce': self.no_reduce, 'allow_partial': self.allow_partial,
                'shards': [s.describe() for s in self.shards]}

    async def close(self):
        for s in self.shards:
            await s.close()


class Graph:
    """The stages and what routing needs to know of their shape, computed once.

    ``order``: topological; ``leaves``: stages nothing needs (their outputs, joined, are the
    answer), floating ones left out; ``floating``: stages (``Flow.add(floating=True)``) that run
    every request while the answer does not wait for them; ``inline``: the stages that nothing can
    run beside (every other stage is an ancestor or a descendant; never a floating one), which run
    in the request's coroutine instead of a task; ``skips_unknown``:
    in a Flow (more than one stage), a stage that does not serve an endpoint passes its input on.
    """

    def __init__(self, stages: Dict[str, Stage], floating: Optional[set] = None):
        self.stages = stages
        self.order = _topological(stages)
        self.floating = set(floating or ())
        self.leaves = [n for n in self.order if n not in self.floating
                       and not any(n in m.needs for m in stages.values())]
        ancestors: Dict[str, set] = {}
        for n in self.order:
            ancestors[n] = set().union(*({m} | ancestors.get(m, set()) for m in stages[n].needs))
            ancestors[n].discard(GATEWAY)
        self.inline = {n: n not in self.floating
                       and all(m == n or m in ancestors[n] or n in ancestors[m] for m in self.order)
                       for n in self.order}
        self.skips_unknown = len(stages) > 1
        self.served = sum(1 for stage in stages.values() if not stage.is_join)


class Gateway:
    """Routes requests through the graph; serves ``orchestra.Node`` on the public port."""

    def __init__(self, spec: GatewaySpec):
        self.name = spec.name
        # how long a request waits for a shard whose replicas are all down (the supervisor
        # restarts crashed replicas) before it fails naming the shard
        wait = float(spec.replica_wait_s or os.environ.get('ORCHESTRA_REPLICA_WAIT_S') or REPLICA_WAIT_S)
        self.stages: Dict[str, Stage] = {}
        for stage in spec.stages:
            self.stages[stage.name] = Stage(stage, spec.max_in_flight_per_replica, wait)
        self.graph = Graph(self.stages, {stage.name for stage in spec.stages if stage.floating})
        self._background: set = set()   # floating nodes' tasks still running after their request
        self.stats = RequestStats()
        self.port: Optional[int] = None
        self.ports: Dict[str, int] = {}   # protocol -> port of each door
        self.metrics: Optional[Any] = None          # runtime.metrics.Metrics with monitoring=True
        self.metrics_port: Optional[int] = None
        #: the Deployment's secret: Control, and the replicas' records in Info (runtime.remote)
        self.secret: Optional[str] = spec.secret

    def start_metrics(self, host: str, port: int) -> Any:
        """Prometheus ``/metrics`` of this gateway on ``host:port`` (runtime.metrics); -> its server."""
        from runtime import metrics as m
        labels = {'gateway': self.name}
        self.metrics = m.Metrics('gateway', labels)
        self.metrics.add_collector(m.ScrapeCollector([
            m.in_flight_reader(labels, lambda: self.stats.in_flight, 'gateway'),
            m.routing_reader(labels, lambda: self.stages),
            m.process_reader(labels)]))
        server = m.serve_metrics(self.metrics, host, port)
        self.metrics_port = server.port
        return server

    async def route_request(self, frame: bytes) -> bytes:
        """One client request frame through the graph -> the reply frame (an error reply raises
        :class:`StageError`, whose ``header`` is the reply). The one entry of every front door."""
        header, body = protocol.unpack(frame)
        protocol.check_request_header(header)
        if self.metrics is None:
            return await self._route(header, body, frame)
        t0 = time.perf_counter()
        ok = False
        try:
            reply = await self._route(header, body, frame)
            ok = True
            return reply
        finally:
            self.metrics.for_endpoint(str(header.get('endpoint', '/'))).observe(time.perf_counter() - t0, ok)

    async def _route(self, header: Dict[str, Any], body: Any, frame: bytes) -> bytes:
        not_targeted = unmatched(header.get('target_executor'), self.stages)
        if not_targeted:
            raise StageError(protocol.error_header(LookupError(not_targeted), self.name))
        graph = self.graph
        request = Output({'ok': True}, body, None)
        route = _Route(self, header, frame, request)
        outputs: Dict[str, Any] = {GATEWAY: request}   # name -> Output, or the Task computing it
        try:
            for name in graph.order:
                if graph.inline[name]:
                    outputs[name] = await route.run(self.stages[name], outputs)
                else:
                    outputs[name] = asyncio.ensure_future(route.run(self.stages[name], outputs))
            answers = [await _output(outputs[n]) for n in graph.leaves] or [request]
        finally:
            for name, f in outputs.items():
                if isinstance(f, asyncio.Future):
                    if name in graph.floating and not f.done():
                        self._background.add(f)   # finishes on its own; its output is dropped
                        f.add_done_callback(self._floating_done)
                    elif not f.done():
                        f.cancel()
                    elif not f.cancelled():
                        f.exception()  # retrieved: no 'exception was never retrieved' noise
        if graph.skips_unknown and graph.served and len(route.skipped) == graph.served:
            raise self._nobody_serves(header.get('endpoint', '/'), route.skipped)
        answer = answers[0] if len(answers) == 1 else _join(answers)
        if answer.frame is not None:
            return answer.frame
        return protocol.pack(answer.header, bytes(answer.body))

    def _floating_done(self, f: 'asyncio.Future') -> None:
        self._background.discard(f)
        if not f.cancelled() and f.exception() is not None:
            log.warning('a floating Executor failed: %s', f.exception())

    def _nobody_serves(self, endpoint: str, skipped: List[Tuple[str, StageError]]) -> StageError:
        detail = '; '.join(f'{name}: {e.header["error"].get("message", "")}' for name, e in skipped)
        unserved = LookupError(f'no Executor of {self.name} serves endpoint {endpoint!r} ({detail})')
        header = protocol.error_header(unserved, self.name)
        header['error']['type'] = 'UnknownEndpointError'
        return StageError(header)

    # -- gRPC methods -------------------------------------------------------------
    async def call(self, frame: bytes, context) -> bytes:
        t0 = time.perf_counter()
        self.stats.started('*')
        try:
            return await self.route_request(frame)
        except StageError as e:
            self.stats.failed('*')
            return protocol.pack(e.header)
        except Exception as e:
            self.stats.failed('*')
            await protocol.refuse_invalid(context, e)   # ProtocolError -> INVALID_ARGUMENT
            log.exception('gateway failed to route a request')
            return protocol.pack(protocol.error_header(e, self.name))
        finally:
            self.stats.finished('*', time.perf_counter() - t0)

    async def info(self, frame: bytes, context) -> bytes:
        """The gateway's record; asked with ``{'replicas': true}`` and the secret (``runtime.remote``),
        every replica's record as the gateway reaches them."""
        if frame:
            header, _ = protocol.unpack(frame)
            if header.get('replicas'):
                from runtime.secrets import matches, presented_secret
                if not matches(presented_secret(context), self.secret):
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "the replicas' records need the "
                                        "Deployment's secret: missing or wrong")
                return json.dumps({'replicas': await self.replicas_info()}).encode()
        return json.dumps({'ready': True, 'role': 'gateway', 'name': self.name, 'pid': os.getpid(),
                           'port': self.port, 'ports': self.ports,
                           # 'nodes' (and 'node' in set_replicas): wire names, kept for exported gateways
                           # of older versions and the readers of Info (docs/architecture.md, names)
                           'nodes': {name: stage.describe() for name, stage in self.stages.items()},
                           'metrics_port': self.metrics_port, **self.stats.snapshot()}).encode()

    async def replicas_info(self, timeout: float = 2.0) -> List[Dict[str, Any]]:
        """Every replica's Info record (``state: 'unreachable'`` where it does not answer), with its
        place in the graph and whether it is in rotation here."""
        entries = [(name, s, i, r) for name, stage in self.stages.items() for s, shard in enumerate(stage.shards)
                   for i, r in enumerate(shard.replicas)]

        async def one(r: Any) -> Optional[Dict[str, Any]]:
            try:
                return json.loads(await r.info(b'', timeout=timeout))
            except (grpc.aio.AioRpcError, ValueError):
                return None

        infos = await asyncio.gather(*(one(r) for *_, r in entries))
        out = []
        for (node, s, i, r), info in zip(entries, infos):
            rec: Dict[str, Any] = {'name': r.name, 'node': node, 'shard': s, 'replica': i, 'address': r.address,
                                   'external': False, 'requests': {}, 'in_rotation': r.healthy,
                                   'state': 'ready' if info else 'unreachable'}
            if info:
                rec.update({k: v for k, v in info.items() if k not in ('name', 'shard', 'replica', 'ready')})
            out.append(rec)
        return out

    async def control(self, frame: bytes, context) -> bytes:
        """``{'op': 'set_replicas', 'node': name, 'shard': i, 'addresses': [...]}`` (scaling, restarts).

        Served on the loopback port only, behind the secret (:func:`runtime.server.authenticated`)."""
        header, _ = protocol.unpack(frame)
        try:
            if header.get('op') != 'set_replicas':
                raise ValueError(f"unknown control op {header.get('op')!r}; allowed: 'set_replicas'")
            stage = self.stages[header['node']]
            stage.shards[int(header.get('shard', 0))].update(list(header['addresses']), header.get('names'),
                                                            header.get('logs'), header.get('stopped'))
            return protocol.pack({'ok': True})
        except Exception as e:
            return protocol.pack(protocol.error_header(e, self.name))

    async def close(self):
        for stage in self.stages.values():
            await stage.close()


class _Route:
    """One request's way through the graph: the request, its header packed once, skipped stages."""

    def __init__(self, gateway: Gateway, header: Dict[str, Any], frame: bytes, request: Output):
        self.skips_unknown = gateway.graph.skips_unknown
        self.header = header
        self.frame = frame
        self.request = request
        self.head: Optional[bytes] = None
        self.skipped: List[Tuple[str, StageError]] = []

    async def run(self, stage: Stage, outputs: Dict[str, Any]) -> Output:
        """``stage`` on its inputs' output (joined): its reply, results merged with its inputs'."""
        if len(stage.needs) == 1:
            given = await _output(outputs[stage.needs[0]])
        else:
            given = _join([await _output(outputs[n]) for n in stage.needs])
        if stage.is_join or not runs(self.header, stage.name):   # post(target_executor=...): pass docs on
            return given
        if given is self.request:
            frame = self.frame            # the client's frame, as is
        else:
            if self.head is None:
                self.head = protocol.pack(self.header)   # a request frame is head + body
            frame = self.head + given.body
        try:
            out = await stage.call(self.header, frame)
        except StageError as e:
            # In a Flow, an Executor that does not serve an endpoint passes the docs on unchanged
            # (as in Jina); if no Executor of the Flow serves it, the request fails (unlike Jina).
            if not (self.skips_unknown and e.unknown_endpoint):
                raise
            self.skipped.append((stage.name, e))
            return given
        if given.header.get('results'):
            merged = merge_results([given.header, out.header])
            return Output(dict(out.header, results=merged), out.body, None)
        return out


async def _output(value: Any) -> Output:
    """An Output, or the Task computing it (a stage on a branch of a fork)."""
    return value if isinstance(value, Output) else await value


def _join(parts: List[Output]) -> Output:
    """Several branches' outputs -> one, merged by doc id in ``needs`` order."""
    header: Dict[str, Any] = {'ok': True}
    results = merge_results([p.header for p in parts])
    if results:
        header['results'] = results
    return Output(header, merge_bodies([p.body for p in parts]), None)


def _topological(stages: Dict[str, Stage]) -> List[str]:
    order, state = [], {}

    def visit(n: str, path: Tuple[str, ...]):
        if n == GATEWAY:
            return
        if n not in stages:
            raise ValueError(f'{path[-1]!r} needs {n!r}, which is not in the graph; '
                             f'known: {", ".join(stages)}')
        if state.get(n) == 'done':
            return
        if n in path:
            raise ValueError(f'the graph has a cycle: {" -> ".join(path + (n,))}')
        for m in stages[n].needs:
            visit(m, path + (n,))
        state[n] = 'done'
        order.append(n)

    for n in stages:
        visit(n, ())
    return order


def gateway_spec_on_arrival(data: Any) -> GatewaySpec:
    """The spec a gateway was given, checked; a malformed one raises naming what is wrong."""
    try:
        return GatewaySpec.from_dict(data)
    except SpecError as e:
        raise SpecError(f'this gateway was given a malformed spec: {e}') from None


async def open_listeners(gw: Gateway, host: str, protocols: List[str], ports: List[int],
                         credentials: Optional[grpc.ServerCredentials] = None, tls_cert: Optional[str] = None,
                         tls_key: Optional[str] = None, control: Any = None) -> List[Any]:
    """Open one public listener per protocol on ``host`` (``ports[i]`` for ``protocols[i]``; 0: the OS
    picks): gRPC here, HTTP and WebSocket as doors (:mod:`runtime.doors`) onto the same routing.
    Sets ``gw.ports`` (protocol -> port) and ``gw.port`` (the first's); returns the coroutine
    functions that stop them. On a failure, what was opened is closed again.

    >>> stops = await open_listeners(gw, '127.0.0.1', ['grpc', 'http'], [0, 0])   # doctest: +SKIP
    """
    stops: List[Any] = []
    try:
        for protocol_name, port in zip(protocols, ports):
            if protocol_name == 'grpc':
                server, gw.ports['grpc'] = await start_node_server(host, int(port or 0), gw.call, gw.info, control,
                                                                   credentials=credentials)
                stops.append(lambda server=server: server.stop(grace=STOP_GRACE_S))
            else:
                from runtime.doors.serving import open_door
                door = await open_door(protocol_name, gw, lambda frame: gw.call(frame, None), host, int(port or 0),
                                       tls_cert, tls_key)
                stops.append(door.close)
                gw.ports[protocol_name] = door.port
    except BaseException:
        await asyncio.gather(*(s() for s in stops))
        raise
    gw.port = gw.ports[protocols[0]]
    return stops


def run_gateway(child: Dict[str, Any], status, stopping: threading.Event) -> None:
    """Child-process entry for role 'gateway': ``child['config']`` is a :class:`GatewaySpec`'s ``to_dict()``.

    The public listeners (:func:`open_listeners`: one per protocol on ``host``, TLS with
    ``tls_cert``/``tls_key``; gRPC serves ``Call`` and ``Info`` only); the loopback port
    (127.0.0.1, reported as ``local_port``) serves the owner: ``Call``/``Info`` and ``Control``,
    which needs the secret.
    """
    from runtime.secrets import load_secret
    spec = gateway_spec_on_arrival(child['config'])
    secret = spec.secret or load_secret()
    credentials = None
    if spec.tls_cert:
        from runtime.tls import server_credentials
        credentials = server_credentials(spec.tls_cert, spec.tls_key)

    async def main():
        stop = stop_event_from(stopping)
        gw = Gateway(spec)
        gw.secret = secret
        stops: List[Any] = []
        try:
            stops += await open_listeners(gw, spec.host, list(spec.protocols), list(spec.ports),
                                          credentials=credentials, tls_cert=spec.tls_cert, tls_key=spec.tls_key)
            local, local_port = await start_node_server('127.0.0.1', spec.local_port,
                                                        gw.call, gw.info, gw.control, secret)
            stops.append(lambda: local.stop(grace=STOP_GRACE_S))
            if spec.monitoring:
                metrics = gw.start_metrics(spec.host, spec.port_monitoring)
                stops.append(lambda: asyncio.to_thread(metrics.close))
            status.send(event='ready', port=gw.port, ports=gw.ports, local_port=local_port, pid=os.getpid())
            await stop.wait()
        finally:
            await asyncio.gather(*(s() for s in stops))
            await gw.close()
    asyncio.run(main())
