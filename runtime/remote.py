"""A running gateway seen from anywhere: ``status()`` of a Deployment or Flow by its address.

What the Dashboard (``orchestra_nb.dashboard``) reads when it attaches to a gateway that this
process did not start (a Compose gateway on the host, a port-forwarded Kubernetes Service,
a Deployment started by another process):

    >>> gw = RemoteGateway('127.0.0.1:8080', secret=open('search-secret').read().strip())  # doctest: +SKIP
    >>> gw.status()['replicas'][0]['requests']                                           # doctest: +SKIP
    {'/index': 12}

Where the data comes from: the gateway's ``Info`` on its public port. Its own counters and
its view of each replica (in flight, sent, in rotation) need nothing; each replica's own
record (requests per endpoint, RAFT role/term/indexes, CPU/RSS, ``CUDA_VISIBLE_DEVICES``) is
fetched by the gateway from its replicas (which the caller usually cannot reach) when asked
with the Deployment's secret: ``Info`` with the request header ``{'replicas': true}`` and the
secret in the call's metadata, as ``Control`` takes it. A missing or wrong secret gets one
line saying so (:class:`SecretRequired`). The record has the shape of
``Orchestration.status()`` (:class:`runtime.specs.OrchestrationStatus`).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Union

import grpc

from runtime import protocol
from runtime.client import Client
from runtime.loop import run_sync
from runtime.secrets import call_metadata

#: the request header of an Info call that asks for every replica's record (needs the secret)
REPLICAS_HEADER = {'replicas': True}


class SecretRequired(PermissionError):
    """The gateway refused the replicas' records: the secret is missing or wrong (one line)."""


class RemoteGateway:
    """A gateway by address (``'host:port'``, ``'grpcs://host:port'``) or through a :class:`Client`.

    ``secret``: the Deployment's secret (per-replica records need it); ``tls``/``ca`` as for a Client.
    ``running``, ``name``, ``address`` and ``status()`` are what a Deployment offers the Dashboard.
    """

    def __init__(self, target: Union[str, Client], secret: Optional[str] = None, tls: bool = False,
                 ca: Any = None):
        if isinstance(target, Client):
            self.client = target
        elif isinstance(target, str) and ':' in target.rsplit('//', 1)[-1]:
            host, _, port = target.rpartition(':')
            if not port.isdigit():
                raise ValueError(f"address={target!r}: write 'host:port' (the gateway's port is a number)")
            self.client = Client(host=host, port=int(port), tls=tls, ca=ca)
        else:
            raise ValueError(f"target={target!r}: a gateway address 'host:port' or a Client")
        self.secret = secret
        self._name: Optional[str] = None

    @property
    def address(self) -> str:
        return self.client.address

    @property
    def name(self) -> str:
        """The Deployment's (or Flow's) name, from the gateway's ``Info`` (its address until it answers)."""
        if self._name is None:
            try:
                self._name = _deployment_name(self.client.info(timeout=2.0).get('name') or '') or None
            except Exception:
                return self.address
        return self._name or self.address

    @property
    def running(self) -> bool:
        """Does the gateway answer?"""
        return self.client.is_ready(timeout=2.0)

    def status(self, timeout: float = 2.0) -> Dict[str, Any]:
        """The gateway and every replica, as ``Orchestration.status()`` returns them; without the secret,
        raises :class:`SecretRequired` (the gateway's own counters: ``self.client.info()``)."""
        return run_sync(self.astatus(timeout), timeout + 5, what=f'status of the gateway at {self.address}')

    async def astatus(self, timeout: float = 2.0) -> Dict[str, Any]:
        gateway = await self.client.ainfo(timeout)
        self._name = _deployment_name(gateway.get('name') or '') or self._name
        stub = self.client._stub(protocol.INFO)
        try:
            reply = await stub(protocol.pack(REPLICAS_HEADER), timeout=timeout + 2,
                               metadata=call_metadata(self.secret) if self.secret else None)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise SecretRequired(f'the gateway at {self.address} shows its replicas only with the '
                                     f'Deployment\'s secret: {e.details()} (pass secret=...)') from None
            raise
        replicas = json.loads(reply).get('replicas', [])
        gateway['state'] = 'ready'
        return {'name': self._name or self.address, 'address': self.address, 'gateway': gateway,
                'replicas': replicas, 'gpus': _gpus(replicas)}

    def __repr__(self) -> str:
        return f'RemoteGateway({self.address!r})'


def _deployment_name(gateway_name: str) -> str:
    return gateway_name[:-len('/gateway')] if gateway_name.endswith('/gateway') else gateway_name


def _gpus(replicas: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Which replica was given which device; the GPUs' own use is on their machine: the replicas' metrics."""
    return {'available': False, 'gpus': [],
            'note': 'GPU use of a remote deployment: orchestra_gpu_* on the replicas\' /metrics (monitoring=True)',
            'assignment': {r['name']: r.get('cuda_visible_devices') for r in replicas}}
