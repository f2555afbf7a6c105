"""The warning a Deployment or Flow prints when it listens beyond this machine.

Listeners bind 127.0.0.1 unless ``host`` says otherwise. A non-loopback ``host`` exposes the
gateway's public port (requests: ``Call`` and ``Info``) and, for stateful Deployments, their
RAFT ports; this says which, and what protects each (see ``docs/security.md``).
"""
from __future__ import annotations

import ipaddress
import logging
import warnings
from typing import Any, List, Optional

log = logging.getLogger('orchestra.security')


class ExposedWarning(UserWarning):
    """Ports of a Deployment or Flow are reachable from other machines."""


def is_loopback(host: Optional[str]) -> bool:
    """``'127.0.0.1'``, ``'::1'``, ``'localhost'`` -> True; ``'0.0.0.0'``, ``''``, another address -> False."""
    if host is None:
        return True
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False   # a host name: it may resolve to anything


def exposure(orch: Any) -> List[str]:
    """What ``orch`` (started) exposes beyond loopback, one line per plane; empty: nothing."""
    out = []
    if not is_loopback(orch.host):
        tls = 'TLS' if getattr(orch, 'tls_cert', None) else 'plaintext, no TLS (set tls_cert/tls_key)'
        for protocol, port in orch.ports.items():
            what = 'Call and Info' if protocol == 'grpc' else 'every endpoint, /status and /docs'
            out.append(f'gateway port {orch.host}:{port} ({protocol}; request plane: {what}, unauthenticated, '
                       f'{tls}; Control is not served there)')
    for stage in orch.stages:
        rafts = [r.spec.raft for r in stage.replicas if r.spec is not None and r.spec.raft is not None]
        exposed = [raft.bind for raft in rafts if not is_loopback(raft.bind.rsplit(':', 1)[0])]
        if exposed:
            key = 'raft_password' if any(raft.password for raft in rafts) else "the Deployment's secret"
            out.append(f'RAFT ports of {stage.name} {", ".join(exposed)} (consensus plane: pysyncobj, '
                       f'authenticated and encrypted with {key})')
    return out


def warn_if_exposed(orch: Any) -> None:
    """Log and ``warnings.warn`` (:class:`ExposedWarning`) what ``orch`` exposes, if anything."""
    lines = exposure(orch)
    if not lines:
        return
    msg = (f'{type(orch).__name__} {orch.name!r} listens beyond this machine: ' + '; '.join(lines) +
           '. Anyone who can reach these ports can send requests to the gateway; see docs/security.md.')
    log.warning('%s', msg)
    warnings.warn(msg, ExposedWarning, stacklevel=3)
