"""Hosts to listen on: checked up front, and a failed bind reported as what it is.

``check_host('999.1.1.1')`` says the address is not valid (gRPC would only say it could not
bind, which used to be reported as "port already in use"); :func:`bind_error` turns a failed
bind into the error the OS gives for it (``EADDRINUSE``: the port is taken;
``EADDRNOTAVAIL``: the address is not one of this machine's; ...).

    >>> check_host('127.0.0.1', 'host')
    '127.0.0.1'
"""
from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from typing import Any, Optional, Tuple

_NUMERIC = re.compile(r'^[0-9.]+$')
_ALLOWED = "an IP address of this machine (e.g. '127.0.0.1', or '0.0.0.0' for every interface) or a host name"


def check_host(host: Any, what: str = 'host') -> str:
    """A host to listen on: an IPv4/IPv6 address or a name that resolves; else ``ValueError``."""
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f'{what}={host!r}: must be {_ALLOWED}')
    bare = host.strip()
    if bare.startswith('[') and bare.endswith(']'):
        bare = bare[1:-1]
    try:
        ipaddress.ip_address(bare)
        return host
    except ValueError:
        pass
    if _NUMERIC.match(bare):
        raise ValueError(f'{what}={host!r} is not a valid IPv4 address (four numbers from 0 to 255, '
                         f'e.g. 127.0.0.1); must be {_ALLOWED}')
    if ':' in bare:
        raise ValueError(f'{what}={host!r} is not a valid IPv6 address; must be {_ALLOWED}')
    try:
        socket.getaddrinfo(bare, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        why = getattr(e, 'strerror', None) or str(e)
        raise ValueError(f'{what}={host!r}: the name cannot be resolved ({why}); must be {_ALLOWED}') from None
    return host


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC writes it (IPv6 addresses in brackets)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f'[{host}]:{port}'
    except ValueError:
        pass
    return f'{host}:{port}'


def bind_error(host: str, port: int) -> Tuple[Optional[int], str]:
    """Why ``host:port`` cannot be bound, as the OS says it (bound once with a plain socket):
    (the OS's errno -- ``EADDRINUSE`` for a busy port -- or None, a message naming the address)."""
    try:
        infos = socket.getaddrinfo(host.strip('[]'), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        return errno.EADDRNOTAVAIL, f'cannot listen on {host}:{port}: the host cannot be resolved ({e})'
    last: Tuple[Optional[int], str] = (None, f'cannot listen on {host}:{port}')
    for family, kind, proto, _, addr in infos:
        s = socket.socket(family, kind, proto)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as gRPC binds: TIME_WAIT is fine
            s.bind(addr)
            return None, (f'cannot listen on {host}:{port}: gRPC refused the address, though the port '
                          'can be bound (check the host)')
        except OSError as e:
            what = {errno.EADDRINUSE: 'the port is already in use (choose another port, or omit port to '
                                      'let the OS pick one)',
                    errno.EADDRNOTAVAIL: 'the address is not one of this machine\'s (listen on 127.0.0.1, '
                                         '0.0.0.0 for every interface, or an address of this machine)',
                    errno.EACCES: 'permission denied (ports below 1024 need privileges)'}.get(
                        e.errno, os.strerror(e.errno) if e.errno else str(e))
            last = e.errno, f'cannot listen on {host}:{port}: {what}'
        finally:
            s.close()
    return last
