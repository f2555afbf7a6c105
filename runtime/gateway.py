"""The public port: routes each request through the graph of deployments.

A Deployment is a graph of one node; a Flow chains nodes (``needs``). Each node
is a list of shards, each shard a :class:`~runtime.routing.ReplicaSet`.

- One node, one shard, or ANY polling: the request frame is forwarded as is
  (the gateway never decodes documents on this path).
- ALL polling, or a node that joins branches: shard/branch results are decoded
  and merged by :func:`~runtime.routing.reduce_docs` (or concatenated with
  ``no_reduce``).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import grpc

from runtime import protocol
from runtime.routing import (NoReplicaAvailable, PollingPolicy, ReplicaSet, concat_docs, pick_shard,
                             reduce_docs)
from runtime.server import STOP_GRACE_S, start_node_server, stop_event_from
from runtime.telemetry import RequestStats

log = logging.getLogger('orchestra.gateway')

GATEWAY = 'gateway'


def _codec():
    """``(decode_docs, encode_docs)``; the gateway decodes only to reduce or join."""
    from runtime.codec import decode_docs, encode_docs
    return decode_docs, encode_docs


class NodeError(RuntimeError):
    """A node's call failed; carries the error header to pass back to the client."""

    def __init__(self, header: Dict[str, Any]):
        super().__init__(header.get('error', {}).get('message', 'failed'))
        self.header = header


class Node:
    """One Executor of the graph (a Deployment): its shards, polling and joins."""

    def __init__(self, spec: Dict[str, Any], max_in_flight: int, replica_wait_s: float = 5.0):
        self.name: str = spec['name']
        self.needs: List[str] = list(spec.get('needs') or [GATEWAY])
        self.polling = PollingPolicy(spec.get('polling'))
        self.no_reduce: bool = bool(spec.get('no_reduce'))
        self.allow_partial: bool = bool(spec.get('allow_partial'))
        self.shards: List[ReplicaSet] = [
            ReplicaSet(addrs, name=self._shard_name(i, len(spec['shards'])),
                       max_in_flight=int(spec.get('max_in_flight') or max_in_flight),
                       wait_for_replica=replica_wait_s, timeout_send=spec.get('timeout_send'),
                       health_timeout=float(spec.get('health_timeout') or 2.0),
                       stateful=bool(spec.get('stateful')))
            for i, addrs in enumerate(spec['shards'])]
        self._rr = itertools.count()

    def _shard_name(self, i: int, n: int) -> str:
        return f'{self.name}/shard-{i}' if n > 1 else self.name

    @property
    def is_join(self) -> bool:
        """A node without processes (``Flow.needs_all()`` without ``uses``): it only joins its inputs."""
        return not self.shards

    async def call(self, header: Dict[str, Any], frame: bytes) -> Tuple[Dict[str, Any], bytes, bytes]:
        """-> (reply header, reply body, reply frame). Raises :class:`NodeError` on failure."""
        endpoint = header.get('endpoint', '/')
        if self.is_join:
            _, body = protocol.unpack(frame)
            out = {'ok': True, 'replica': self.name}
            return out, body, protocol.pack(out, body)
        if len(self.shards) == 1 or self.polling.mode(endpoint) == 'ANY':
            shard = self.shards[0] if len(self.shards) == 1 else pick_shard(self.shards, self._rr)
            reply = await self._send(shard, frame, endpoint)
            h, body = protocol.unpack(reply)
            if not h.get('ok'):
                raise NodeError(h)
            return h, body, reply
        return await self._call_all(header, frame)

    async def _send(self, shard: ReplicaSet, frame: bytes, endpoint: str) -> bytes:
        """One request to one shard; any transport failure becomes a NodeError naming the shard."""
        try:
            return await shard.send(frame, endpoint)
        except NoReplicaAvailable as e:
            raise NodeError(protocol.error_header(e, shard.name)) from None
        except grpc.aio.AioRpcError as e:
            err = ConnectionError(f'{shard.name}: {e.code().name}: {e.details()}')
            raise NodeError(protocol.error_header(err, shard.name)) from None

    async def _call_all(self, header: Dict[str, Any], frame: bytes) -> Tuple[Dict[str, Any], bytes, bytes]:
        """ALL polling: every shard gets the request; the replies are reduced (or concatenated)."""
        decode_docs, encode_docs = _codec()
        endpoint = header.get('endpoint', '/')
        replies = await asyncio.gather(*(self._send(s, frame, endpoint) for s in self.shards),
                                       return_exceptions=True)
        partial_ok = self.allow_partial or bool(header.get('allow_partial'))
        parts, merged_results, missing = [], {}, []
        for shard, reply in zip(self.shards, replies):
            if isinstance(reply, NodeError) and reply.header.get('error', {}).get('type') == 'NoReplicaAvailable':
                if partial_ok:
                    missing.append(shard.name)
                    continue
                err = reply.header['error']
                err['message'] = (f'shard {shard.name} is down while polling ALL: {err["message"]} '
                                  '(pass allow_partial=True to accept results from the other shards)')
                raise reply
            if isinstance(reply, BaseException):
                raise reply
            h, body = protocol.unpack(reply)
            if not h.get('ok'):
                raise NodeError(h)
            merged_results.update(h.get('results') or {})
            parts.append(decode_docs(bytes(body)))
        if not parts:
            raise NodeError(protocol.error_header(
                NoReplicaAvailable(f'every shard of {self.name} is down ({", ".join(missing)})'), self.name))
        if self.no_reduce or header.get('no_reduce'):
            docs = concat_docs(parts)
        else:
            docs = reduce_docs(parts)
        out: Dict[str, Any] = {'ok': True, 'replica': self.name}
        if merged_results:
            out['results'] = merged_results
        if missing:
            out['missing_shards'] = missing
        body = encode_docs(docs)
        return out, body, protocol.pack(out, body)

    def describe(self) -> Dict[str, Any]:
        return {'needs': self.needs, 'polling': self.polling.to_config(), 'join_only': self.is_join,
                'no_reduce': self.no_reduce, 'allow_partial': self.allow_partial,
                'shards': [s.describe() for s in self.shards]}

    async def close(self):
        for s in self.shards:
            await s.close()


class Gateway:
    """Routes requests through the graph; serves ``orchestra.Node`` on the public port."""

    def __init__(self, config: Dict[str, Any]):
        self.name = config.get('name', GATEWAY)
        max_in_flight = int(config.get('max_in_flight_per_replica') or 4)
        # how long a request waits for a shard whose replicas are all down (the supervisor
        # restarts crashed replicas) before it fails naming the shard
        wait = float(config.get('replica_wait_s') or os.environ.get('ORCHESTRA_REPLICA_WAIT_S') or 5.0)
        self.nodes: Dict[str, Node] = {}
        for spec in config['nodes']:
            self.nodes[spec['name']] = Node(spec, max_in_flight, wait)
        self.order = _topological(self.nodes)
        self.leaves = [n for n in self.order if not any(n in m.needs for m in self.nodes.values())]
        self.chain = self._as_chain()
        self.stats = RequestStats()
        self.port: Optional[int] = None
        self.ports: Dict[str, int] = {}   # protocol -> port of each door

    async def route_request(self, frame: bytes) -> bytes:
        """One client request through the graph -> the reply frame."""
        header, body = protocol.unpack(frame)
        protocol.check_request_header(header)
        if len(self.nodes) == 1:  # the Deployment fast path: no decoding
            (node,) = self.nodes.values()
            _, _, reply = await node.call(header, frame)
            return reply
        if self.chain is not None:
            return await self._route_chain(header, frame, body)
        outputs: Dict[str, asyncio.Future] = {}
        loop = asyncio.get_running_loop()
        gateway_out = loop.create_future()
        gateway_out.set_result(({'ok': True}, body))
        outputs[GATEWAY] = gateway_out
        skipped: List[Tuple[str, NodeError]] = []
        for name in self.order:
            outputs[name] = asyncio.ensure_future(self._run_node(self.nodes[name], header, outputs, skipped))
        try:
            results = [await outputs[n] for n in self.leaves]
        finally:
            for f in outputs.values():
                if not f.done():
                    f.cancel()
                elif not f.cancelled():
                    f.exception()  # retrieved: no 'exception was never retrieved' noise
        served = [n for n, node in self.nodes.items() if not node.is_join]
        if served and len(skipped) == len(served):
            raise self._nobody_serves(header.get('endpoint', '/'), skipped)
        return protocol.pack(*self._join(results))

    def _as_chain(self) -> Optional[List[Node]]:
        """The nodes in order when the graph is one straight line (gateway -> a -> b -> ...), else None."""
        chain, prev = [], GATEWAY
        for name in self.order:
            node = self.nodes[name]
            if node.needs != [prev]:
                return None
            chain.append(node)
            prev = name
        return chain

    async def _route_chain(self, header: Dict[str, Any], frame: bytes, body) -> bytes:
        """A straight line of nodes: one coroutine, no tasks, no copies of the docs."""
        head = protocol.pack(header)  # the request header, packed once; a frame is head + body
        results: Dict[str, Any] = {}
        skipped: List[Tuple[str, NodeError]] = []
        reply: Optional[bytes] = None
        h: Dict[str, Any] = {'ok': True}
        for node in self.chain:
            try:
                h, body, reply = await node.call(header, frame if reply is None and not skipped else head + body)
            except NodeError as e:
                if e.header.get('error', {}).get('type') != 'UnknownEndpointError':
                    raise
                skipped.append((node.name, e))
                continue
            if h.get('results'):
                results.update(h['results'])
        served = [n for n in self.chain if not n.is_join]
        if served and len(skipped) == len(served):
            raise self._nobody_serves(header.get('endpoint', '/'), skipped)
        if reply is not None and (not results or results == h.get('results')):
            return reply   # the last node's reply frame, as is
        out = dict(h, ok=True)
        if results:
            out['results'] = results
        return protocol.pack(out, bytes(body))

    async def _run_node(self, node: Node, header, outputs, skipped) -> Tuple[Dict[str, Any], bytes]:
        ins = [await outputs[n] for n in node.needs]
        h_in, body = self._join(ins)
        try:
            h, b, _ = await node.call(header, protocol.pack(header, body))
        except NodeError as e:
            # In a Flow, an Executor that does not serve an endpoint passes the docs on unchanged
            # (as in Jina); if no Executor of the Flow serves it, the request fails (unlike Jina).
            if e.header.get('error', {}).get('type') != 'UnknownEndpointError':
                raise
            skipped.append((node.name, e))
            return h_in, body
        merged = dict(h_in.get('results') or {})
        merged.update(h.get('results') or {})
        if merged:
            h = dict(h, results=merged)
        return h, bytes(b)

    def _nobody_serves(self, endpoint: str, skipped: List[Tuple[str, 'NodeError']]) -> NodeError:
        detail = '; '.join(f'{name}: {e.header["error"].get("message", "")}' for name, e in skipped)
        err = LookupError(f'no Executor of {self.name} serves endpoint {endpoint!r} ({detail})')
        header = protocol.error_header(err, self.name)
        header['error']['type'] = 'UnknownEndpointError'
        return NodeError(header)

    @staticmethod
    def _join(parts: List[Tuple[Dict[str, Any], bytes]]) -> Tuple[Dict[str, Any], bytes]:
        """Several branches' outputs -> one (merged by doc id, in ``needs`` order)."""
        if len(parts) == 1:
            return parts[0]
        decode_docs, encode_docs = _codec()
        header: Dict[str, Any] = {'ok': True}
        results: Dict[str, Any] = {}
        for h, _ in parts:
            results.update(h.get('results') or {})
        if results:
            header['results'] = results
        return header, encode_docs(reduce_docs([decode_docs(bytes(b)) for _, b in parts]))

    # -- gRPC methods -------------------------------------------------------------
    async def call(self, frame: bytes, context) -> bytes:
        t0 = time.perf_counter()
        self.stats.started('*')
        try:
            return await self.route_request(frame)
        except NodeError as e:
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
        return json.dumps({'ready': True, 'role': 'gateway', 'name': self.name, 'pid': os.getpid(),
                           'port': self.port, 'ports': self.ports,
                           'nodes': {n: node.describe() for n, node in self.nodes.items()},
                           **self.stats.snapshot()}).encode()

    async def control(self, frame: bytes, context) -> bytes:
        """``{'op': 'set_replicas', 'node': name, 'shard': i, 'addresses': [...]}`` (scaling, restarts).

        Served on the loopback port only, behind the secret (:func:`runtime.server.authenticated`)."""
        header, _ = protocol.unpack(frame)
        try:
            if header.get('op') != 'set_replicas':
                raise ValueError(f"unknown control op {header.get('op')!r}; allowed: 'set_replicas'")
            node = self.nodes[header['node']]
            node.shards[int(header.get('shard', 0))].update(list(header['addresses']), header.get('names'),
                                                            header.get('logs'), header.get('stopped'))
            return protocol.pack({'ok': True})
        except Exception as e:
            return protocol.pack(protocol.error_header(e, self.name))

    async def close(self):
        for node in self.nodes.values():
            await node.close()


def _topological(nodes: Dict[str, Node]) -> List[str]:
    order, state = [], {}

    def visit(n: str, path: Tuple[str, ...]):
        if n == GATEWAY:
            return
        if n not in nodes:
            raise ValueError(f'{path[-1]!r} needs {n!r}, which is not in the graph; '
                             f'known: {", ".join(nodes)}')
        if state.get(n) == 'done':
            return
        if n in path:
            raise ValueError(f'the graph has a cycle: {" -> ".join(path + (n,))}')
        for m in nodes[n].needs:
            visit(m, path + (n,))
        state[n] = 'done'
        order.append(n)

    for n in nodes:
        visit(n, ())
    return order


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


def run_gateway(spec: Dict[str, Any], status, stopping: threading.Event) -> None:
    """Child-process entry for role 'gateway'.

    The public listeners (:func:`open_listeners`: one per protocol on ``host``, TLS with
    ``tls_cert``/``tls_key``; gRPC serves ``Call`` and ``Info`` only); the loopback port
    (127.0.0.1, reported as ``local_port``) serves the owner: ``Call``/``Info`` and ``Control``,
    which needs the secret.
    """
    from runtime.secrets import load_secret
    config = spec['config']
    secret = config.get('secret') or load_secret()
    credentials = None
    if config.get('tls_cert'):
        from runtime.tls import server_credentials
        credentials = server_credentials(config['tls_cert'], config['tls_key'])

    protocols = list(config.get('protocols') or ['grpc'])
    door_ports = list(config.get('ports') or [config.get('port') or 0])

    async def main():
        stop = stop_event_from(stopping)
        gw = Gateway(config)
        stops: List[Any] = []
        try:
            stops += await open_listeners(gw, config.get('host', '127.0.0.1'), protocols, door_ports,
                                          credentials=credentials, tls_cert=config.get('tls_cert'),
                                          tls_key=config.get('tls_key'))
            local, local_port = await start_node_server('127.0.0.1', int(config.get('local_port') or 0),
                                                        gw.call, gw.info, gw.control, secret)
            stops.append(lambda: local.stop(grace=STOP_GRACE_S))
            status.send(event='ready', port=gw.port, ports=gw.ports, local_port=local_port, pid=os.getpid())
            await stop.wait()
        finally:
            await asyncio.gather(*(s() for s in stops))
            await gw.close()
    asyncio.run(main())
