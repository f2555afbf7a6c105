"""The gateway's HTTP and WebSocket doors: front doors onto its one routing entry.

The gateway process serves gRPC itself (:mod:`runtime.gateway`); for each other protocol of
``protocol=[...]`` it opens a door here, an ASGI app (FastAPI) served by uvicorn inside the
gateway's own asyncio loop (a task, no thread). A door turns what it receives into a request
frame (:mod:`runtime.protocol`, documents in :mod:`runtime.codec`'s encoding), passes it to
``route(frame) -> reply frame`` -- the same entry gRPC calls reach -- and answers in its own
protocol. See docs/http.md.

Modules: ``serving`` (a door's listener: uvicorn on a bound socket), ``http`` and ``websocket``
(the apps), ``messages`` (JSON requests and replies), ``schemas`` (doc classes from JSON schemas).
"""
from __future__ import annotations

from typing import Awaitable, Callable, Optional

#: ``route(frame) -> reply frame``: the gateway's routing entry; a failure comes back as an error header
Route = Callable[[bytes], Awaitable[bytes]]

#: protocols served by a door of this package (gRPC is the gateway's own)
DOOR_PROTOCOLS = ('http', 'websocket')


def door_address(protocol: str, host: str, port: Optional[int], tls: bool = False) -> str:
    """How a client reaches a door: ``'host:port'`` for gRPC, a URL for HTTP and WebSocket.

    >>> door_address('http', '127.0.0.1', 8080)
    'http://127.0.0.1:8080'
    """
    shown = f'[{host}]' if ':' in host else host
    if protocol == 'grpc':
        return f'{shown}:{port}'
    scheme = {'http': 'http', 'websocket': 'ws'}[protocol] + ('s' if tls else '')
    return f'{scheme}://{shown}:{port}'
