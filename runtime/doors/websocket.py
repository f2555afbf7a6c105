"""The WebSocket door: streaming requests and replies on one connection (``ws://host:port/``).

Every message is one request; replies come back in the order the requests came, while the
requests behind them are already being routed (up to :data:`MAX_PENDING` per connection), so a
client streams without waiting for each reply:

- a binary message is a request frame of :mod:`runtime.protocol` (what ``Client(protocol=
  'websocket')`` sends); its reply is the reply frame, as gRPC returns it;
- a text message is JSON as the HTTP door takes it, plus ``execEndpoint``: ``{"execEndpoint":
  "/index", "data": [...], "parameters": {...}}``; its reply is the HTTP door's JSON reply, or
  ``{"detail": ..., "status": 4xx/5xx}``.

See docs/http.md.
"""
import asyncio
import json
from typing import Any, Dict

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from runtime.doors import Route
from runtime.doors.messages import (Catalog, DoorError, as_rows, build_docs, input_class, json_bytes, reply_json,
                                    request_frame)

#: requests of one connection being routed or waiting to be answered; the next waits for room
MAX_PENDING = 64

# no `from __future__ import annotations`: FastAPI reads the handler's annotations as classes


def websocket_app(gateway: Any, route: Route) -> FastAPI:
    """The ASGI app of ``gateway``'s WebSocket door (one route, ``/``)."""
    catalog = Catalog(gateway)
    app = FastAPI(title=f'{gateway.name} (WebSocket)', version='1', docs_url=None, redoc_url=None,
                  openapi_url=None)

    async def answer_json(text: str) -> Dict[str, Any]:
        try:
            try:
                body = json.loads(text)
            except ValueError as e:
                raise DoorError(400, f'the message is not valid JSON: {e}') from None
            endpoint = body.get('execEndpoint') or body.get('exec_endpoint') or body.get('endpoint') \
                if isinstance(body, dict) else None
            if not isinstance(endpoint, str) or not endpoint.startswith('/'):
                raise DoorError(422, [{'loc': ['execEndpoint'], 'msg': 'the endpoint to call, a string starting '
                                       'with "/", e.g. "/index"', 'type': 'missing'}])
            endpoints, default, complete = catalog.snapshot()
            if not complete and endpoint not in endpoints and default is None:   # just started
                endpoints, default, complete = await catalog.wait()
            schema = endpoints.get(endpoint) or default
            if schema is None:
                known = ', '.join(sorted(endpoints)) or 'none'
                raise DoorError(404 if complete else 503, f'no Executor serves endpoint {endpoint!r}; '
                                                          f'endpoints: {known}')
            rows = as_rows(body.get('data'))
            docs = build_docs(input_class(schema, rows), rows)
            header = body.get('header') if isinstance(body.get('header'), dict) else None
            frame, request_id = request_frame(endpoint, docs, body.get('parameters'), header)
            return reply_json(await route(frame), body.get('parameters'), endpoint, request_id)
        except DoorError as e:
            return {'detail': e.detail, 'status': e.status}

    async def answer(message: Dict[str, Any]) -> Any:
        if message.get('bytes') is not None:
            return await route(message['bytes'])
        return json_bytes(await answer_json(message.get('text') or '')).decode()

    @app.websocket('/')
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        pending: asyncio.Queue = asyncio.Queue(MAX_PENDING)

        async def reply_in_order() -> None:
            while True:
                task = await pending.get()
                if task is None:
                    return
                reply = await task
                if isinstance(reply, bytes):
                    await ws.send_bytes(reply)
                else:
                    await ws.send_text(reply)

        writer = asyncio.ensure_future(reply_in_order())
        tasks = []
        try:
            while True:
                message = await ws.receive()
                if message['type'] == 'websocket.disconnect':
                    break
                task = asyncio.ensure_future(answer(message))
                tasks.append(task)
                await pending.put(task)
                tasks = [t for t in tasks if not t.done()]
                if writer.done():
                    break
            await pending.put(None)
            await writer
        except (WebSocketDisconnect, RuntimeError):
            pass   # the client went away: what it had asked is dropped
        finally:
            for t in tasks + [writer]:
                if not t.done():
                    t.cancel()

    return app
