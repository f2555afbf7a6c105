"""External Executors: replicas that already run somewhere else, given by host and port.

    >>> external_addresses(['localhost', '10.0.0.5'], [12345, 12346])
    ['localhost:12345', '10.0.0.5:12346']
    >>> external_addresses(['localhost:12345', 'h:12346'], None)
    ['localhost:12345', 'h:12346']
    >>> external_addresses('localhost', [12345, 12346])          # one host, several ports
    ['localhost:12345', 'localhost:12346']
    >>> external_addresses(['a', 'b'], 12345)                    # several hosts, one port
    ['a:12345', 'b:12345']

Each address is one replica of the external Executor; what runs there is
``orchestra executor --uses pkg.mod:Class --port P``. A Deployment (or a Flow node)
with ``external=True`` starts no process for them: its gateway routes to these
addresses idle first, marks one down when its connection fails and probes it until
it answers again (see :mod:`runtime.routing`).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

__all__ = ['external_addresses', 'split_host_port']

_SCHEMES = ('grpc://',)
_UNSUPPORTED = ('grpcs://', 'http://', 'https://', 'ws://', 'wss://')


def _port(value: Any, where: str) -> int:
    """A port from 1 to 65535 (an int or a string of digits); else ValueError naming ``where``."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f'{where}={value!r}: an external replica needs a port from 1 to 65535')
    return value


def split_host_port(entry: str) -> Tuple[str, Optional[int]]:
    """``'h:123'`` -> ``('h', 123)``; ``'h'`` -> ``('h', None)``; ``'[::1]:5'`` -> ``('[::1]', 5)``.

    A leading ``grpc://`` is dropped; other schemes raise ``ValueError``.

    >>> split_host_port('grpc://10.0.0.5:12346')
    ('10.0.0.5', 12346)
    """
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f'host={entry!r}: an external host is a non-empty string such as '
                         "'10.0.0.5' or '10.0.0.5:12345'")
    text = entry.strip()
    low = text.lower()
    if low.startswith(_UNSUPPORTED):
        raise ValueError(f'host={entry!r}: only gRPC is supported for external Executors '
                         "(write 'host:port' or 'grpc://host:port')")
    for scheme in _SCHEMES:
        if low.startswith(scheme):
            text = text[len(scheme):]
    text = text.rstrip('/')
    if text.startswith('['):                        # IPv6: [::1] or [::1]:port
        close = text.find(']')
        if close < 0:
            raise ValueError(f'host={entry!r}: unclosed "[" in an IPv6 address')
        host, rest = text[:close + 1], text[close + 1:]
        if not rest:
            return host, None
        if not rest.startswith(':'):
            raise ValueError(f'host={entry!r}: expected "[addr]:port"')
        return host, _port(rest[1:], f'port in host {entry!r}')
    if text.count(':') > 1:
        raise ValueError(f'host={entry!r}: write an IPv6 address in brackets, e.g. "[::1]:12345"')
    host, sep, port = text.partition(':')
    if not host:
        raise ValueError(f'host={entry!r}: the host part is empty')
    if not sep:
        return host, None
    return host, _port(port, f'port in host {entry!r}')


def _as_list(value: Any) -> Optional[List[Any]]:
    """None -> None; a list/tuple -> list; '' -> []; a comma-separated string -> its items; else [value]."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and not value.strip():
        return []
    if isinstance(value, str) and ',' in value:
        return [v.strip() for v in value.split(',')]
    return [value]


def external_addresses(host: Union[str, Sequence[str]], port: Union[int, str, Sequence[Any], None] = None,
                       replicas: Optional[int] = None) -> List[str]:
    """The ``host:port`` address of every external replica, in order.

    Accepted forms (a string with commas counts as a list):

    - ``host=[h1, h2], port=[p1, p2]``: paired in order;
    - ``host=['h1:p1', 'h2:p2']`` (``port`` omitted): each entry carries its port;
    - ``host='h', port=[p1, p2]``: one host, several ports;
    - ``host=[h1, h2], port=p``: several hosts, one port;
    - ``host='h', port=p`` or ``host='h:p'``: one replica.

    ``replicas``, when given, must equal the number of addresses. Raises ``ValueError``
    naming the bad value: counts that do not match (quoting both lists), a missing or
    invalid port (1..65535), a port given twice with different values, a duplicate address.
    """
    hosts = _as_list(host)
    if not hosts:
        raise ValueError(f'host={host!r}: external=True needs the host (or host:port) of every '
                         "replica, e.g. host=['10.0.0.5:12345', '10.0.0.6:12345']")
    ports = _as_list(port)
    if ports is not None and not ports:
        raise ValueError(f'port={port!r}: an empty list; give one port per host, or one for all')
    parsed = [split_host_port(h) for h in hosts]

    if ports is None:
        pairs = parsed
    elif len(ports) == len(parsed):
        pairs = list(zip([h for h, _ in parsed], ports, [p for _, p in parsed]))
    elif len(parsed) == 1:                          # one host, several ports
        pairs = [(parsed[0][0], p, parsed[0][1]) for p in ports]
    elif len(ports) == 1:                           # several hosts, one port
        pairs = [(h, ports[0], inline) for h, inline in parsed]
    else:
        raise ValueError(f'external replicas: {len(hosts)} hosts {list(hosts)!r} but {len(ports)} '
                         f'ports {list(ports)!r}; give one port per host, one port for all hosts, '
                         'or one host with several ports')

    addresses = []
    for item in pairs:
        if ports is None:
            h, p = item
            if p is None:
                raise ValueError(f'host={h!r} has no port: write {h + ":12345"!r}, or pass '
                                 'port=... (one per host, or one for all)')
        else:
            h, given, inline = item
            p = _port(given, 'port')
            if inline is not None and inline != p:
                raise ValueError(f'host {h}:{inline} and port={given!r} disagree: give the port '
                                 'once, in host or in port')
        addresses.append(f'{h}:{p}')

    seen = set()
    for a in addresses:
        if a in seen:
            raise ValueError(f'external replica address {a!r} is listed twice ({addresses!r}); '
                             'each address is one replica')
        seen.add(a)
    if replicas is not None and replicas != len(addresses):
        raise ValueError(f'replicas={replicas!r} but {len(addresses)} external addresses were given '
                         f'({addresses!r}); for external Executors the replicas are the addresses')
    return addresses
