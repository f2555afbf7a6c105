"""Optional TLS on the gateway's public port: ``tls_cert=`` / ``tls_key=`` and ``Client(tls=True, ca=...)``.

TLS covers the public port only (client <-> gateway). The gateway's loopback port (the
owner's ``post`` and ``Control``), replica ports and replica-to-replica calls stay
plaintext on 127.0.0.1; RAFT traffic is encrypted by pysyncobj (see ``docs/security.md``).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple, Union

import grpc

Pem = Union[str, bytes, os.PathLike, None]


def check_tls(cert: Any, key: Any) -> Tuple[Optional[str], Optional[str]]:
    """Both paths or neither; each a readable PEM file. -> (cert, key) as absolute paths (or Nones)."""
    if cert is None and key is None:
        return None, None
    if cert is None or key is None:
        given, missing = ('tls_cert', 'tls_key') if key is None else ('tls_key', 'tls_cert')
        raise ValueError(f'{given} is set but {missing} is not: TLS needs both the certificate '
                         '(tls_cert, PEM) and its private key (tls_key, PEM)')
    out = []
    for what, path, marker in (('tls_cert', cert, b'CERTIFICATE'), ('tls_key', key, b'PRIVATE KEY')):
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f'{what}={path!r}: must be the path of a PEM file')
        path = os.path.abspath(os.fspath(path))
        data = _read(path, what)
        if b'-----BEGIN' not in data or marker not in data:
            raise ValueError(f'{what}={path}: not a PEM file holding a {marker.decode().lower()} '
                             f'(expected a "-----BEGIN ...{marker.decode()}-----" block)')
        out.append(path)
    return out[0], out[1]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as e:
        raise ValueError(f'{what}={path}: cannot read it ({e.strerror or e})') from None


def server_credentials(cert: str, key: str) -> grpc.ServerCredentials:
    """gRPC server credentials from a PEM certificate (chain) and its key."""
    return grpc.ssl_server_credentials([(_read(key, 'tls_key'), _read(cert, 'tls_cert'))])


def channel_credentials(ca: Pem = None) -> grpc.ChannelCredentials:
    """Client credentials trusting ``ca`` (a PEM file path or PEM bytes; None: the system's roots)."""
    if ca is None:
        return grpc.ssl_channel_credentials()
    if isinstance(ca, bytes):
        data = ca
    elif isinstance(ca, (str, os.PathLike)):
        data = _read(os.fspath(ca), 'ca')
    else:
        raise ValueError(f'ca={ca!r}: must be the path of a PEM file or PEM bytes')
    if b'-----BEGIN CERTIFICATE-----' not in data:
        raise ValueError(f'ca={ca!r}: holds no PEM certificate')
    return grpc.ssl_channel_credentials(root_certificates=data)
