"""The gRPC server plumbing a replica (:mod:`runtime.worker`) and a gateway
(:mod:`runtime.gateway`) share: the ``orchestra.Node`` service, binding a port, and
the stop signal of a child process.

    server, port = await start_node_server('127.0.0.1', 0, call, info, control)
    try:
        await stop.wait()
    finally:
        await server.stop(grace=STOP_GRACE_S)
"""
from __future__ import annotations

import asyncio
import errno
import threading
from typing import Awaitable, Callable, Optional, Tuple

import grpc

from runtime import protocol
from runtime.hosts import bind_error, grpc_address
from runtime.secrets import matches, presented_secret

#: seconds a stopping server gives the calls in flight
STOP_GRACE_S = 0.5

Method = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class PortInUseError(OSError):
    """The port asked for is already taken."""


def authenticated(control: Method, secret: Optional[str]) -> Method:
    """``control``, answering ``PERMISSION_DENIED`` (without reading the frame) to a call whose
    metadata does not carry ``secret`` (constant-time compare; no secret: every call is denied)."""
    async def checked(frame: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if not matches(presented_secret(context), secret):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                'Control needs the Deployment\'s secret: missing or wrong')
        return await control(frame, context)
    return checked


async def no_control(frame: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """``Control`` on a public port: always ``PERMISSION_DENIED``."""
    await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                        'Control is not served on the public port (control listens on 127.0.0.1 only)')
    return b''


def node_handler(call: Method, info: Method, control: Optional[Method] = None,
                 secret: Optional[str] = None) -> grpc.GenericRpcHandler:
    """The ``orchestra.Node`` service with raw-bytes methods; ``Control`` needs ``secret``
    (without ``control``, every ``Control`` call is denied).

    >>> server.add_generic_rpc_handlers((node_handler(call, info),))   # doctest: +SKIP
    """
    control = authenticated(control, secret) if control is not None else no_control
    methods = {'Call': grpc.unary_unary_rpc_method_handler(call),
               'Info': grpc.unary_unary_rpc_method_handler(info),
               'Control': grpc.unary_unary_rpc_method_handler(control)}
    return grpc.method_handlers_generic_handler(protocol.SERVICE, methods)


def bind(server: grpc.aio.Server, host: str, port: int,
         credentials: Optional[grpc.ServerCredentials] = None) -> int:
    """Bind ``host:port`` (0: the OS picks; TLS with ``credentials``); a busy port raises
    :class:`PortInUseError` naming it, any other failure an ``OSError`` saying what the OS said
    (:func:`runtime.hosts.bind_error`).

    >>> bind(grpc.aio.server(), '127.0.0.1', 0) > 0   # doctest: +SKIP
    True
    """
    try:
        if credentials is not None:
            bound = server.add_secure_port(grpc_address(host, port), credentials)
        else:
            bound = server.add_insecure_port(grpc_address(host, port))
    except RuntimeError:
        bound = 0
    if not bound:   # gRPC does not say why: ask the OS (a bad host is not a busy port)
        code, message = bind_error(host, port)
        raise PortInUseError(message) if code == errno.EADDRINUSE else OSError(message)
    return bound


async def start_node_server(host: str, port: int, call: Method, info: Method,
                            control: Optional[Method] = None, secret: Optional[str] = None,
                            credentials: Optional[grpc.ServerCredentials] = None
                            ) -> Tuple[grpc.aio.Server, int]:
    """A started grpc.aio server serving ``orchestra.Node`` on ``host:port``; returns it and its port.
    See :func:`node_handler` for ``control`` and ``secret``, :func:`bind` for ``credentials``.

    >>> server, port = await start_node_server('127.0.0.1', 0, call, info)   # doctest: +SKIP
    """
    server = grpc.aio.server(options=protocol.GRPC_OPTIONS)
    server.add_generic_rpc_handlers((node_handler(call, info, control, secret),))
    bound = bind(server, host, port, credentials)
    await server.start()
    return server, bound


def stop_event_from(stopping: threading.Event) -> asyncio.Event:
    """An asyncio.Event set when the child's threading.Event is set (lifeline EOF, SIGTERM).

    >>> stop = stop_event_from(stopping); await stop.wait()   # doctest: +SKIP
    """
    loop = asyncio.get_running_loop()
    ev = asyncio.Event()
    threading.Thread(target=lambda: (stopping.wait(), loop.call_soon_threadsafe(ev.set)),
                     daemon=True, name='stop-watch').start()
    return ev
