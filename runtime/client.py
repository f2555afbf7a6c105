"""Client.post: batching, an in-flight window, results in input order.

    >>> c = Client(port=5555)
    >>> docs = c.post(on='/index', inputs=DocList[TextDoc](...), request_size=100)

The sync ``post`` runs on the toolkit's own loop (:mod:`runtime.loop`), so it
works inside a notebook's running loop; ``await c.apost(...)`` is the async twin.
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional

import grpc

from runtime import protocol
from runtime.loop import RequestCancelled, background_loop, run_async, run_sync


log = logging.getLogger('orchestra.client')


class Response:
    """One request's answer, as Jina's callbacks (``on_done``/``on_error``/``on_always``) receive it.

    ``docs`` (also ``data.docs``, Jina's spelling): the docs sent back (for a failed request: the
    docs sent); ``parameters``: the Executors' results dict (Jina's ``parameters['__results__']``).
    """

    def __init__(self, docs: Any, results: Optional[Dict[str, Any]] = None,
                 header: Optional[Dict[str, Any]] = None):
        self.docs = docs
        self.results = dict(results or {})
        self.header = dict(header or {})

    @property
    def data(self) -> 'Response':
        return self

    @property
    def parameters(self) -> Dict[str, Any]:
        return {'__results__': self.results}

    def __repr__(self) -> str:
        return f'<Response {len(self.docs) if self.docs is not None else 0} docs>'


def parameters_dict(parameters: Any) -> Dict[str, Any]:
    """``parameters`` as sent: a dict as it is, a pydantic model as its JSON dict (Jina takes both).

    >>> parameters_dict({'k': 3})
    {'k': 3}
    """
    if parameters is None:
        return {}
    if isinstance(parameters, dict):
        return parameters
    dump = getattr(parameters, 'model_dump', None)
    if callable(dump) and not isinstance(parameters, type):
        return dump(mode='json')
    raise ValueError(f'parameters={parameters!r}: must be a dict or a pydantic model instance')


def _post_options(given: Dict[str, Any]) -> Dict[str, Any]:
    """post's keywords -> checked options (defaults filled); unknown or refused keywords raise."""
    from runtime.args import POST_ARGS, check_post_kwargs, check_values, defaults
    check_post_kwargs(given.get('kwargs') or {})
    values = {k: v for k, v in given.items() if k not in ('self', 'kwargs')}
    unknown = {k: v for k, v in values.items() if k not in ('on', 'inputs') and k not in defaults(POST_ARGS)}
    check_post_kwargs(unknown)
    options = dict(defaults(POST_ARGS), **values)
    return check_values(POST_ARGS, options)


def _call_back(fn: Optional[Callable], response: 'Response', error: Optional[BaseException] = None) -> None:
    """Call a Jina callback; ``on_error`` takes (response, exception), or only the response."""
    if fn is None:
        return
    if error is None:
        fn(response)
        return
    try:
        takes_two = len(inspect.signature(fn).parameters) >= 2
    except (TypeError, ValueError):
        takes_two = True
    fn(response, error) if takes_two else fn(response)


def _progress(show: bool, on: str) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm
    return tqdm(desc=f'post {on}', unit='request')


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


def iter_batches(inputs: Any, request_size: Optional[int]) -> Iterator[List[Any]]:
    """One doc, a list, a DocList or a generator -> lists of at most ``request_size`` docs (None: all)."""
    from docarray import BaseDoc
    if inputs is None:
        yield []
        return
    if isinstance(inputs, BaseDoc):
        yield [inputs]
        return
    if hasattr(inputs, '__aiter__'):
        raise TypeError('inputs is an async iterator; pass a list, a DocList or a plain generator')
    try:
        it = iter(inputs)
    except TypeError:
        raise TypeError(f'inputs must be docs: a DocList, a doc, a list or a generator, got '
                        f'{type(inputs).__name__}') from None
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


class CrudShortcuts:
    """Jina's PostMixin shortcuts, for anything with a ``post(on, inputs, **kwargs)`` (Client,
    Deployment, Flow): ``index``, ``search``, ``update``, ``delete`` -- only these CRUD endpoints,
    as in Jina.

        >>> dep.search(TextDoc(text='q'), parameters={'limit': 3})   # doctest: +SKIP
    """

    def post(self, on: str, inputs: Any = None, **kwargs):
        raise NotImplementedError

    def index(self, inputs: Any = None, **kwargs):
        """``post('/index', inputs, **kwargs)``."""
        return self.post('/index', inputs, **kwargs)

    def search(self, inputs: Any = None, **kwargs):
        """``post('/search', inputs, **kwargs)``."""
        return self.post('/search', inputs, **kwargs)

    def update(self, inputs: Any = None, **kwargs):
        """``post('/update', inputs, **kwargs)``."""
        return self.post('/update', inputs, **kwargs)

    def delete(self, inputs: Any = None, **kwargs):
        """``post('/delete', inputs, **kwargs)``."""
        return self.post('/delete', inputs, **kwargs)


class Client(CrudShortcuts):
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
        from runtime.args import check_client_kwargs, check_protocol
        check_client_kwargs(kwargs)   # Jina's keywords it does not take say why; unknown ones name the closest
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
    # The keywords are spelled out for editors; runtime/args.py (POST_ARGS) declares each one's default,
    # check and help, and tests/test_client.py checks that this signature lists exactly those.
    def post(self, on: str, inputs: Any = None, on_done: Optional[Callable] = None,
             on_error: Optional[Callable] = None, on_always: Optional[Callable] = None,
             parameters: Any = None, target_executor: Optional[str] = None, request_size: int = 100,
             show_progress: bool = False, continue_on_error: bool = False, max_attempts: int = 1,
             initial_backoff: float = 0.5, max_backoff: float = 2.0, backoff_multiplier: float = 1.5,
             results_in_order: bool = False, stream: bool = True, prefetch: Optional[int] = None,
             return_type: Optional[type] = None, timeout: Optional[float] = None,
             compression: Optional[str] = None, consistency: Optional[str] = None,
             allow_partial: Optional[bool] = None, no_reduce: Optional[bool] = None, **kwargs):
        """Send ``inputs`` to endpoint ``on`` in requests of ``request_size`` docs; return a DocList.

        Jina's keywords (``jina.Client.post``) mean what they mean in Jina; those not supported are
        refused with the reason (``return_responses``, ``metadata``, ...), and an unknown keyword
        is refused naming the closest valid one. ``on_done``/``on_always`` given: each Response goes
        to them and post returns None. ``return_type=X`` (a doc class, not a DocList): a single doc
        back is returned alone. ``max_attempts=N``: a request the gateway could not be reached for
        (``UNAVAILABLE``, e.g. while it is restarted) is sent again, up to N times in all.

        >>> c.post('/search', docs, target_executor='indexer', parameters={'limit': 3})  # doctest: +SKIP
        """
        options = _post_options(locals())
        try:
            return run_sync(self._post(options), None, what=f'post to {on!r} at {self.address}')
        except KeyboardInterrupt:  # run_sync cancelled the request; no traceback through the loop
            raise RequestCancelled(f'post to {on!r} cancelled; {self.address} is still serving') from None

    async def apost(self, on: str, inputs: Any = None, **kwargs):
        """Async twin of :meth:`post` (top-level ``await`` in a notebook); same keywords."""
        options = _post_options(dict(kwargs, on=on, inputs=inputs))
        return await run_async(self._post(options))

    async def _post(self, o: Dict[str, Any]):
        from docarray import BaseDoc, DocList
        from docarray.documents import TextDoc
        from runtime.codec import decode_docs, encode_docs
        on = o['on']
        if not isinstance(on, str) or not on.startswith('/'):
            raise ValueError(f'on={on!r}: an endpoint is a string starting with "/", e.g. "/index"')
        header: Dict[str, Any] = {'endpoint': on, 'parameters': parameters_dict(o['parameters'])}
        for key in ('consistency', 'allow_partial', 'no_reduce', 'target_executor'):
            if o.get(key) is not None:
                header[key] = o[key]
        inputs = o['inputs']
        if callable(inputs) and not isinstance(inputs, (BaseDoc, DocList, type)):
            inputs = inputs()   # Jina: a function returning the inputs
        in_type = inputs.doc_type if isinstance(inputs, DocList) else None
        return_type, single = o['return_type'], False
        if return_type is not None:
            if isinstance(return_type, type) and issubclass(return_type, BaseDoc):
                single = True     # Jina: return_type=X (a doc class) returns one doc alone
            elif getattr(return_type, 'doc_type', None) is not None:
                return_type = return_type.doc_type   # DocList[X] -> X
            else:
                raise ValueError(f'return_type={return_type!r}: must be DocList[X] or a doc class X')
        request_size = o['request_size'] if o['request_size'] > 0 else None   # <= 0: one request
        window = max(1, o['prefetch'] or self.prefetch)
        call = self._door.call if self._door is not None else self._stub(protocol.CALL)
        timeout = o['timeout'] if o['timeout'] is not None else self.timeout
        compression = getattr(grpc.Compression, o['compression']) if o['compression'] else None
        results: Dict[int, Any] = {}
        out_type = return_type
        frames = protocol.RequestFrames(header)
        # request ids: a retried request (the gateway retries when a replica vanishes) is recognised
        # by stateful replicas and applied once. 24 random hex digits per post + 8 of a counter.
        post_id = uuid.uuid4().hex[:24]
        failures: List[BaseException] = []
        callbacks = o['on_done'] is not None or o['on_always'] is not None
        progress = _progress(o['show_progress'], on)
        attempts, first_wait, max_wait, growth = (o['max_attempts'], o['initial_backoff'], o['max_backoff'],
                                                  o['backoff_multiplier'])

        async def call_with_retries(frame: bytes) -> bytes:
            for attempt in range(attempts):
                try:
                    if self._door is not None:   # HTTP/WebSocket: no gRPC compression on that path
                        return await call(frame, timeout=timeout)
                    return await call(frame, timeout=timeout, compression=compression)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                        raise
                    await asyncio.sleep(min(max_wait, first_wait * growth ** attempt))
            raise AssertionError('unreachable')

        async def send(i: int, batch: Any) -> None:
            response: Optional[Response] = None
            try:
                try:
                    reply = await call_with_retries(frames.pack(f'{post_id}{i & 0xffffffff:08x}',
                                                                encode_docs(batch)))
                except grpc.aio.AioRpcError as e:
                    raise ConnectionError(f'request to {on!r} at {self.address} failed: '
                                          f'{e.code().name}: {e.details()}') from None
                except asyncio.TimeoutError:   # the HTTP/WebSocket doors' wait
                    raise TimeoutError(f'request to {on!r} at {self.address}: no reply within {timeout} s') from None
                h, body = protocol.unpack(reply)
                if not h.get('ok'):
                    raise RemoteError(h.get('error') or {})
                if h.get('results'):
                    self.last_results.update(h['results'])
                results[i] = docs = decode_docs(body, out_type)
                if callbacks:   # a Response only for Jina's callbacks: none on the plain path
                    response = Response(docs, h.get('results') or {}, h)
                    _call_back(o['on_done'], response)
            except Exception as e:
                response = Response(DocList[in_type](batch))   # a failed request's: the docs sent
                if o['on_error'] is not None:
                    _call_back(o['on_error'], response, e)
                elif o['continue_on_error']:
                    log.warning('post to %r: request %d failed (continue_on_error): %s', on, i, e)
                else:
                    failures.append(e)
                    raise
            finally:
                if o['on_always'] is not None:
                    _call_back(o['on_always'], response or Response(DocList[in_type](batch)))
                if progress is not None:
                    progress.update()

        batches = enumerate(iter_batches(inputs, request_size))

        async def sender() -> None:
            """One of ``window`` senders: each takes the next batch (in input order) when its
            previous request is answered, so at most ``window`` requests are in flight."""
            nonlocal in_type, out_type
            for i, batch in batches:
                if failures:
                    return
                if in_type is None:
                    in_type = type(batch[0]) if batch else (return_type or TextDoc)
                if out_type is None:
                    out_type = in_type
                if not all(type(d) is in_type for d in batch):   # else a list of in_type docs will do
                    batch = DocList[in_type](batch)
                await send(i, batch)

        senders = [asyncio.ensure_future(sender()) for _ in range(window)]
        try:
            await asyncio.gather(*senders)
        finally:
            for t in senders:
                if not t.done():
                    t.cancel()
            if progress is not None:
                progress.close()
        if callbacks:
            return None   # Jina: with these callbacks, the responses went to them
        out_type = out_type or TextDoc
        merged = [d for i in sorted(results) for d in results[i]]
        if single and len(merged) == 1:
            return merged[0]
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

    def is_flow_ready(self, timeout: float = 2.0) -> bool:
        """Jina's name for :meth:`is_ready`: whether the gateway answers ready."""
        return self.is_ready(timeout)

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
