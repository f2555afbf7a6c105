"""A door's listener: a uvicorn server on a socket bound here, run as a task of the gateway's loop.

    door = await open_door('http', gateway, route, '127.0.0.1', 0)
    ...
    await door.close()
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from typing import Any, Optional

from runtime.doors import DOOR_PROTOCOLS, Route

log = logging.getLogger('orchestra.doors')


def _bound_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (no SO_REUSEPORT: a busy port is an error naming it)."""
    from runtime.hosts import bind_error
    from runtime.server import PortInUseError
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as e:
        sock.close()
        code, message = bind_error(host, port)
        raise (PortInUseError(message) if (code or e.errno) == errno.EADDRINUSE else OSError(message)) from None
    sock.setblocking(False)
    return sock


class Door:
    """One protocol's listener: a uvicorn server running as a task of the gateway's loop."""

    def __init__(self, protocol: str, app: Any, sock: socket.socket, tls_cert: Optional[str],
                 tls_key: Optional[str]):
        import uvicorn

        class _Server(uvicorn.Server):
            def capture_signals(self):   # the gateway process handles its own signals (runtime.child)
                return contextlib.nullcontext()

        self.protocol = protocol
        self.port: int = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level='warning', access_log=False, lifespan='off',
                                ssl_certfile=tls_cert, ssl_keyfile=tls_key, ws='websockets',
                                timeout_graceful_shutdown=1)
        self._server = _Server(config)
        self._sock = sock
        self._task: Optional[asyncio.Task] = None

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.ensure_future(self._server.serve(sockets=[self._sock]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._server.started:
            if self._task.done():
                self._task.result()   # raises why it stopped
                raise RuntimeError(f'the {self.protocol} door stopped before it started')
            if loop.time() > deadline:
                raise TimeoutError(f'the {self.protocol} door did not start within {timeout:g} s')
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 3)
            except (asyncio.TimeoutError, Exception) as e:   # never let a door block the gateway's exit
                log.warning('the %s door did not stop cleanly: %s', self.protocol, e)
        self._sock.close()


async def open_door(protocol: str, gateway: Any, route: Route, host: str, port: int,
                    tls_cert: Optional[str] = None, tls_key: Optional[str] = None) -> Door:
    """Start the ``protocol`` door ('http' or 'websocket') of ``gateway`` on ``host:port`` (0: the OS picks).

    ``gateway`` gives the doors what they show besides routing: ``name``, ``stages``/``order``
    (the endpoints' schemas) and ``info`` (``/status``).
    """
    if protocol == 'http':
        from runtime.doors.http import http_app
        app = http_app(gateway, route)
    elif protocol == 'websocket':
        from runtime.doors.websocket import websocket_app
        app = websocket_app(gateway, route)
    else:
        raise ValueError(f'protocol={protocol!r}: a door serves one of {", ".join(DOOR_PROTOCOLS)}')
    door = Door(protocol, app, _bound_socket(host, port), tls_cert, tls_key)
    await door.start()
    return door
