"""Client.post: batching, an in-flight window, results in input order.

    >>> c = Client(port=5555)
    >>> docs = c.post(on='/index', inputs=DocList[TextDoc](...), request_size=100)

The sync ``post`` runs on the toolkit's own loop (:mod:`runtime.loop`), so it
works inside a notebook's running loop; ``await c.apost(...)`` is the async twin.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any, Dict, Iterator, List, Optional

import grpc

from runtime import protocol
from runtime.loop import RequestCancelled, background_loop, run_async, run_sync


class RemoteError(RuntimeError):
    """An Executor (or the gateway) failed on a request; carries the remote traceback."""

    def __init__(self, error: Dict[str, Any]):
        self.type = error.get('type', 'Error')
        self.remote_message = error.get('message', '')
        self.remote_traceback = error.get('traceback', '')
        self.where = error.get('where', '?')
        text = f'{self.where}: {self.type}: {self.remote_message}'
        if self.remote_traceback:
            text += f'\n\nremote traceback ({self.where}):\n{self.remote_traceback.rstrip()}'
        super().__init__(text)


def iter_batches(inputs: Any, request_size: int) -> Iterator[List[Any]]:
    """One doc, a list, a DocList or a generator -> lists of at most ``request_size`` docs."""
    from docarray import BaseDoc
    if inputs is None:
        yield []
        return
    if isinstance(inputs, BaseDoc):
        yield [inputs]
        return
    it = iter(inputs)
    while True:
        batch = list(itertools.islice(it, request_size))
        if not batch:
            return
        for d in batch:
            if not isinstance(d, BaseDoc):
                raise TypeError(f'inputs must be docarray documents, got {type(d).__name__}: {d!r:.80}')
        yield batch


#: URL schemes a ``host`` may start with (Jina's spelling) -> (protocol, TLS)
_SCHEMES = {'grpc': ('grpc', False), 'grpcs': ('grpc', True), 'http': ('http', False), 'https': ('http', True),
            'ws': ('websocket', False), 'wss': ('websocket', True), 'websocket': ('websocket', False)}


class Client:
    """Talks to a gateway (or a single replica) on ``host:port``.

    ``protocol``: ``'grpc'`` (default), ``'http'`` or ``'websocket'``, the gateway door to use
    (``Deployment(protocol=[...])``); a ``host`` like ``'http://h:8080'`` says it too (Jina's form).
    ``tls=True`` for a gateway started with ``tls_cert``/``tls_key``; ``ca``: the PEM file (or
    bytes) of the certificate authority to trust -- for a self-signed certificate, the
    certificate itself; omitted: the system's trusted roots. ``'grpcs://host'`` means ``tls=True``.
    """

    def __init__(self, host: str = '127.0.0.1', port: Optional[int] = None, prefetch: int = 16,
                 timeout: Optional[float] = None, tls: bool = False, ca: Any = None, protocol: Optional[str] = None,
                 **kwargs):
        from runtime.args import check_protocol
        if not isinstance(tls, bool):
            raise ValueError(f'tls={tls!r}: must be True or False')
        scheme, sep, rest = host.partition('://')
        if sep:
            if scheme.lower() not in _SCHEMES:
                raise ValueError(f'host={host!r}: unknown scheme {scheme!r}; allowed: {", ".join(_SCHEMES)}')
            by_scheme, scheme_tls = _SCHEMES[scheme.lower()]
            if protocol is not None and check_protocol(protocol, 'protocol') != by_scheme:
                raise ValueError(f'host={host!r} says {by_scheme!r} but protocol={protocol!r}')
            protocol, tls = by_scheme, tls or scheme_tls
            host = rest.rstrip('/')
            if port is None and host.rsplit(':', 1)[-1].isdigit() and ']' not in host.rsplit(':', 1)[-1]:
                host, port = host.rsplit(':', 1)[0], int(host.rsplit(':', 1)[1])
        self.protocol = check_protocol(protocol or 'grpc', 'protocol')
        if not isinstance(self.protocol, str):
            raise ValueError(f'protocol={protocol!r}: a Client speaks one protocol')
        if port is None:
            raise ValueError('Client needs port=..., the port of a Deployment, Flow or executor')
        self.host = host
        self.port = int(port)
        self.tls = tls or ca is not None
        self._credentials = None
        self._door: Any = None   # the HTTP or WebSocket transport (runtime.client_doors)
        if self.protocol != 'grpc':
            from runtime.client_doors import HttpTransport, WebSocketTransport
            from runtime.doors import door_address
            url = door_address(self.protocol, self.host, self.port, self.tls)
            kind = HttpTransport if self.protocol == 'http' else WebSocketTransport
            self._door = kind(url, self.tls, ca)   # a bad ca fails here, naming it
        elif self.tls:
            from runtime.tls import channel_credentials
            self._credentials = channel_credentials(ca)   # a bad ca fails here, naming it
        self.prefetch = prefetch
        self.timeout = timeout
        self.last_results: Dict[str, Any] = {}
        self._channel: Optional[grpc.aio.Channel] = None

    @property
    def address(self) -> str:
        """``host:port`` (gRPC) or the door's URL (HTTP, WebSocket)."""
        if self._door is not None:
            from runtime.doors import door_address
            return door_address(self.protocol, self.host, self.port, self.tls)
        return f'{self.host}:{self.port}'

    def _stub(self, method: str):
        if self._channel is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self.address, self._credentials,
                                                        options=protocol.CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.insecure_channel(self.address, options=protocol.CHANNEL_OPTIONS)
        return self._channel.unary_unary(method)

    # -- posting ----------------------------------------------------------------
    def post(self, on: str, inputs: Any = None, request_size: int = 100, parameters: Optional[dict] = None,
             return_type: Optional[type] = None, prefetch: Optional[int] = None,
             timeout: Optional[float] = None, **kwargs):
        """Send ``inputs`` to endpoint ``on`` in requests of ``request_size`` docs; return a DocList.

        ``max_attempts=N`` (default 1, Jina's name): a request the gateway could not be reached
        for (``UNAVAILABLE``, e.g. while it is restarted) is sent again, up to N times in all,
        waiting ``initial_backoff`` (0.5 s) times 1.5 per attempt, at most ``max_backoff`` (2 s).
        """
        try:
            return run_sync(self._post(on, inputs, request_size, parameters, return_type, prefetch, timeout,
                                       kwargs), None, what=f'post to {on!r} at {self.address}')
        except KeyboardInterrupt:  # run_sync cancelled the request; no traceback through the loop
            raise RequestCancelled(f'post to {on!r} cancelled; {self.address} is still serving') from None

    async def apost(self, on: str, inputs: Any = None, request_size: int = 100,
                    parameters: Optional[dict] = None, return_type: Optional[type] = None,
                    prefetch: Optional[int] = None, timeout: Optional[float] = None, **kwargs):
        """Async twin of :meth:`post` (top-level ``await`` in a notebook)."""
        return await run_async(self._post(on, inputs, request_size, parameters, return_type,
                                          prefetch, timeout, kwargs))

    async def _post(self, on, inputs, request_size, parameters, return_type, prefetch, timeout, extra):
        from docarray import DocList
        from docarray.documents import TextDoc
        from runtime.codec import decode_docs, encode_docs
        if not isinstance(on, str) or not on.startswith('/'):
            raise ValueError(f'on={on!r}: an endpoint is a string starting with "/", e.g. "/index"')
        if not isinstance(request_size, int) or isinstance(request_size, bool) or request_size < 1:
            raise ValueError(f'request_size={request_size!r}: must be an integer >= 1')
        if parameters is not None and not isinstance(parameters, dict):
            raise ValueError(f'parameters={parameters!r}: must be a dict')
        header = {'endpoint': on, 'parameters': parameters or {}}
        for key in ('consistency', 'allow_partial', 'no_reduce'):
            if extra.get(key) is not None:
                header[key] = extra[key]
        if inputs is not None and isinstance(inputs, DocList):
            in_type = inputs.doc_type
        else:
            in_type = None
        return_type = getattr(return_type, 'doc_type', None) or return_type   # DocList[X] -> X
        window = max(1, prefetch or self.prefetch)
        call = self._door.call if self._door is not None else self._stub(protocol.CALL)
        timeout = timeout if timeout is not None else self.timeout
        results: Dict[int, Any] = {}
        out_type = return_type
        room = asyncio.Semaphore(window)
        tasks: List[asyncio.Task] = []
        failures: List[BaseException] = []

        attempts = int(extra.get('max_attempts') or 1)
        if attempts < 1:
            raise ValueError(f'max_attempts={attempts!r}: must be an integer >= 1')
        first_wait, max_wait = float(extra.get('initial_backoff') or 0.5), float(extra.get('max_backoff') or 2.0)

        async def call_with_retries(frame: bytes) -> bytes:
            for attempt in range(attempts):
                try:
                    return await call(frame, timeout=timeout)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                        raise
                    await asyncio.sleep(min(max_wait, first_wait * 1.5 ** attempt))
            raise AssertionError('unreachable')

        async def send(i: int, frame: bytes):
            try:
                reply = await call_with_retries(frame)
                h, body = protocol.unpack(reply)
                if not h.get('ok'):
                    raise RemoteError(h.get('error') or {})
                if h.get('results'):
                    self.last_results.update(h['results'])
                results[i] = decode_docs(bytes(body), out_type)
            except BaseException as e:
                failures.append(e)
                raise
            finally:
                room.release()

        try:
            for i, batch in enumerate(iter_batches(inputs, request_size)):
                if in_type is None:
                    in_type = type(batch[0]) if batch else (return_type or TextDoc)
                if out_type is None:
                    out_type = in_type
                docs = batch if isinstance(batch, DocList) else DocList[in_type](batch)
                # request_id: a retried request (the gateway retries when a replica vanishes) is
                # recognised by stateful replicas and applied once
                frame = protocol.pack(dict(header, request_id=uuid.uuid4().hex), encode_docs(docs))
                await room.acquire()          # at most `window` requests in flight
                if failures:
                    break
                tasks.append(asyncio.ensure_future(send(i, frame)))
            if failures:   # stopped early: raise the first failure, as gather would
                raise failures[0]
            await asyncio.gather(*tasks)
        except grpc.aio.AioRpcError as e:
            raise ConnectionError(f'request to {on!r} at {self.address} failed: '
                                  f'{e.code().name}: {e.details()}') from None
        except asyncio.TimeoutError:
            raise TimeoutError(f'request to {on!r} at {self.address}: no reply within {timeout} s') from None
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
        out_type = out_type or TextDoc
        merged = [d for i in sorted(results) for d in results[i]]
        return DocList[out_type].construct(merged)   # decoded by the codec: already of out_type

    # -- health -----------------------------------------------------------------
    def info(self, timeout: float = 5.0) -> Dict[str, Any]:
        """The server's Info record (readiness and counters)."""
        return run_sync(self.ainfo(timeout), timeout + 1, what=f'info from {self.address}')

    async def ainfo(self, timeout: float = 5.0) -> Dict[str, Any]:
        async def go():
            if self._door is not None:
                return await self._door.info(timeout)
            return json.loads(await self._stub(protocol.INFO)(b'', timeout=timeout))
        return await run_async(go())

    def is_ready(self, timeout: float = 2.0) -> bool:
        try:
            return bool(self.info(timeout).get('ready'))
        except (grpc.aio.AioRpcError, TimeoutError, ValueError, ConnectionError, OSError):
            return False

    def close(self) -> None:
        if self._door is not None:
            try:
                run_sync(self._door.close(), 5, what=f'closing the connection to {self.address}')
            except Exception:
                pass
        if self._channel is not None:
            ch, self._channel = self._channel, None
            try:
                run_sync(ch.close(), 5, what='closing a client channel')
            except Exception:
                pass

    def __del__(self):
        for conn in (getattr(self, '_channel', None), getattr(self, '_door', None)):   # None: __init__ refused
            if conn is not None:
                try:
                    asyncio.run_coroutine_threadsafe(conn.close(), background_loop())
                except Exception:
                    pass
