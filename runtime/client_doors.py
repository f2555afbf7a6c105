"""How ``Client(protocol='http'|'websocket')`` talks to a gateway's HTTP or WebSocket door.

Each transport offers what the gRPC path of :class:`runtime.client.Client` uses: ``call(frame,
timeout) -> reply frame`` (frames of :mod:`runtime.protocol`) and ``info(timeout) -> dict``, so
batching, the in-flight window and ordering stay in one place.

- WebSocket: frames travel as they are (binary messages); replies come in request order on one
  connection, so requests stream without waiting for each reply.
- HTTP: a frame becomes Jina's JSON body (``POST /<endpoint>``) and the JSON reply a frame again.

    >>> t = HttpTransport('http://127.0.0.1:8080'); reply = await t.call(frame, 10)   # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import collections
import json
import ssl
from typing import Any, Deque, Dict, Optional

from runtime import protocol


def _ssl_context(ca: Any) -> ssl.SSLContext:
    """Trust ``ca`` (a PEM path or bytes; None: the system's roots)."""
    ctx = ssl.create_default_context()
    if isinstance(ca, (bytes, bytearray)):
        ctx.load_verify_locations(cadata=bytes(ca).decode())
    elif ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
    return ctx


class HttpTransport:
    """Frames over the HTTP door's JSON routes (one ``httpx.AsyncClient`` with keep-alive)."""

    def __init__(self, base_url: str, tls: bool = False, ca: Any = None):
        self.base_url = base_url.rstrip('/')
        self._verify: Any = _ssl_context(ca) if tls else True
        self._client: Any = None

    def _http(self) -> Any:
        if self._client is None:
            import httpx
            self._client = httpx.AsyncClient(base_url=self.base_url, verify=self._verify, timeout=None,
                                             limits=httpx.Limits(max_keepalive_connections=64))
        return self._client

    async def call(self, frame: bytes, timeout: Optional[float] = None) -> bytes:
        import httpx
        from runtime.codec import decode_rows, encode_docs
        from runtime.doors.messages import json_bytes
        from runtime.doors.schemas import inferred_doc_class
        header, body = protocol.unpack(frame)
        endpoint = header.get('endpoint', '/')
        payload = {'data': decode_rows(bytes(body)), 'parameters': header.get('parameters') or {},
                   'header': {'requestId': header.get('request_id')}}
        try:
            r = await self._http().post('/' + endpoint.strip('/'), content=json_bytes(payload), timeout=timeout,
                                        headers={'content-type': 'application/json'})
        except httpx.TransportError as e:
            raise ConnectionError(f'{self.base_url}: {type(e).__name__}: {e}') from None
        try:
            reply = r.json()
        except ValueError:
            reply = {'detail': r.text[:500]}
        if r.status_code != 200:
            return protocol.pack({'ok': False, 'error': {'type': f'HTTP {r.status_code}',
                                                         'message': json.dumps(reply.get('detail', reply)),
                                                         'where': f'{self.base_url}{endpoint}'}})
        rows = reply.get('data') or []
        docs = [inferred_doc_class(rows).model_validate(row) for row in rows]
        out: Dict[str, Any] = {'ok': True}
        results = (reply.get('parameters') or {}).get('__results__')
        if results:
            out['results'] = results
        from docarray import DocList
        cls = type(docs[0]) if docs else inferred_doc_class([])
        return protocol.pack(out, encode_docs(DocList[cls](docs)))

    async def info(self, timeout: float) -> Dict[str, Any]:
        r = await self._http().get('/status', timeout=timeout)
        r.raise_for_status()
        return r.json()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


class WebSocketTransport:
    """Frames over one WebSocket connection; replies are matched to requests by their order."""

    def __init__(self, url: str, tls: bool = False, ca: Any = None):
        self.url = url.rstrip('/') + '/'
        self._ssl = _ssl_context(ca) if tls else None
        self._ws: Any = None
        self._waiting: Deque[asyncio.Future] = collections.deque()
        self._reader: Optional[asyncio.Task] = None
        self._lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()

    async def _connect(self) -> Any:
        async with self._lock:
            if self._ws is None:
                import websockets
                try:
                    self._ws = await websockets.connect(self.url, ssl=self._ssl, max_size=protocol.MAX_MESSAGE_BYTES,
                                                        open_timeout=10)
                except (OSError, websockets.exceptions.WebSocketException) as e:
                    raise ConnectionError(f'{self.url}: {type(e).__name__}: {e}') from None
                self._reader = asyncio.ensure_future(self._read(self._ws))
        return self._ws

    async def _read(self, ws: Any) -> None:
        try:
            async for message in ws:
                if self._waiting:
                    fut = self._waiting.popleft()
                    if not fut.done():
                        fut.set_result(message)
        except Exception:
            pass
        finally:   # the connection is gone: what still waits fails, the next call reconnects
            self._ws = None
            while self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_exception(ConnectionError(f'{self.url}: the WebSocket connection closed'))

    async def call(self, frame: bytes, timeout: Optional[float] = None) -> bytes:
        ws = await self._connect()
        fut = asyncio.get_running_loop().create_future()
        async with self._send_lock:   # the order of the futures is the order of the frames on the wire
            self._waiting.append(fut)
            await ws.send(frame)
        # a reply that times out is still counted when it comes (order), so the future is not dropped
        return await asyncio.wait_for(asyncio.shield(fut), timeout)

    async def info(self, timeout: float) -> Dict[str, Any]:
        await asyncio.wait_for(self._connect(), timeout)
        return {'ready': True, 'protocol': 'websocket', 'url': self.url}

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            self._reader.cancel()
